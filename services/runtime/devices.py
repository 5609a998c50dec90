"""Map config strings ("auto", "cuda:1", "float16", ...) to torch devices and dtypes.

Validation happens here, at startup, so a wrong setting fails with ConfigError (exit 78)
instead of a CUDA error deep inside a model call.
"""

import re

import torch

from services.runtime.errors import ConfigError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(requested: str) -> str:
    """"auto" -> best available accelerator, else "cpu"; explicit values are checked."""
    req = (requested or "auto").strip().lower()
    if req == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if req == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", req)
    if m:
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but CUDA is not available")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise ConfigError(
                f"device {requested!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return req
    if req == "mps":
        if not _mps_available():
            raise ConfigError(f"device {requested!r} requested but MPS is not available")
        return "mps"
    raise ConfigError(f"unknown device {requested!r} (use auto, cpu, cuda, cuda:N or mps)")


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    """"auto" -> float16 on accelerators (half the memory, fast), float32 on CPU (fp16 is slow there)."""
    req = (requested or "auto").strip().lower()
    if req == "auto":
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    try:
        return _DTYPES[req]
    except KeyError:
        raise ConfigError(f"unknown dtype {requested!r} (use auto, float16, bfloat16 or float32)") from None
