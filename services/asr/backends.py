"""Speech-to-text backends. The ASR worker calls load() once, then transcribe() per utterance."""

from __future__ import annotations

import numpy as np

from services.runtime.devices import resolve_device
from services.runtime.backend import Backend
from services.runtime.errors import ConfigError


class _WhisperBackend(Backend):
    """What both Whisper runtimes share: cheap construction, and the clip handed to the model."""

    name = ""

    def __init__(
        self,
        model: str = "base",
        device: str = "cpu",
        language: str | None = "en",
        download_root: str | None = None,
    ):
        # Cheap on purpose: the worker builds this from config before deciding to load.
        self.model_label = model
        self.requested_device = device
        self.device = device
        self.language = language or None  # "" / None: detect the language per clip
        self.download_root = download_root
        self._model = None

    def _clip(self, audio: np.ndarray) -> np.ndarray:
        """audio as contiguous mono float32 (16 kHz in [-1, 1]); the model must be loaded."""
        if self._model is None:
            raise RuntimeError(f"{type(self).__name__}.transcribe() called before load()")
        return np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)


class OpenAIWhisperBackend(_WhisperBackend):
    """openai-whisper on torch. `model` is an official name ("base", "small.en", ...) or a .pt checkpoint path."""

    name = "openai-whisper"

    def load(self) -> None:
        self.device = resolve_device(self.requested_device)
        try:
            import whisper
        except ImportError as e:
            raise ConfigError(f"openai-whisper is not installed ({e})") from e
        try:
            # Official names download to download_root (~/.cache/whisper) on first use;
            # offline that fails unless the file is already cached there.
            self._model = whisper.load_model(self.model_label, device=self.device, download_root=self.download_root)
        except Exception as e:
            raise ConfigError(
                f"cannot load whisper model {self.model_label!r} on {self.device}: {e} "
                "(is it a valid name or checkpoint path, and is it cached if offline?)"
            ) from e

    def transcribe(self, audio: np.ndarray) -> str:
        """audio: float32 mono 16 kHz in [-1, 1]."""
        clip = self._clip(audio)
        import whisper

        result = whisper.transcribe(
            self._model,
            clip,
            language=self.language,
            fp16=self.device.startswith("cuda"),  # whisper only supports fp16 on CUDA
            verbose=None,  # no progress bar / per-segment printing in a worker
        )
        return str(result.get("text", "")).strip()


class FasterWhisperBackend(_WhisperBackend):
    """faster-whisper (CTranslate2). `model` is a size ("base", "small.en", ...: downloaded from the
    Hugging Face hub into download_root on first use) or a local CTranslate2 model directory
    (model.bin, config.json, vocabulary.txt and tokenizer.json, e.g. models/whisper-base-ct2)."""

    name = "faster-whisper"

    def __init__(
        self,
        model: str = "base",
        device: str = "cpu",
        language: str | None = "en",
        download_root: str | None = None,
        compute_type: str = "auto",
        cpu_threads: int = 0,
    ):
        super().__init__(model, device, language, download_root)
        self.requested_compute_type = compute_type
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads  # 0: the torch thread count (S2S_ASR_THREADS, else cores)

    def _ct2_device(self) -> tuple[str, int]:
        if self.device == "cpu":
            return "cpu", 0
        if self.device.startswith("cuda"):
            _, _, index = self.device.partition(":")
            return "cuda", int(index or 0)
        raise ConfigError(f"faster-whisper runs on cpu or cuda, not {self.device!r} (set S2S_ASR_DEVICE)")

    def load(self) -> None:
        import os

        requested = (self.requested_device or "auto").strip().lower()
        self.device = resolve_device(requested)
        if requested == "auto" and self.device == "mps":
            self.device = "cpu"  # CTranslate2 has no Metal backend
        ct2_device, device_index = self._ct2_device()
        ct = (self.requested_compute_type or "auto").strip().lower()
        # int8 on CPU: CTranslate2's fastest CPU path (weights quantized at load); float16 on CUDA
        self.compute_type = ("float16" if ct2_device == "cuda" else "int8") if ct == "auto" else ct
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ConfigError(f"faster-whisper is not installed ({e}): pip install faster-whisper") from e

        path = os.path.expanduser(self.model_label)
        looks_like_path = os.path.isabs(path) or self.model_label.startswith((".", "~"))
        if os.path.isdir(path):
            missing = [f for f in ("model.bin", "tokenizer.json") if not os.path.isfile(os.path.join(path, f))]
            if missing:
                raise ConfigError(f"faster-whisper model directory {path!r} lacks {', '.join(missing)}"
                                  " (faster-whisper would fetch a missing tokenizer.json from the hub)")
        elif looks_like_path:
            raise ConfigError(f"faster-whisper model directory {path!r} does not exist")
        threads = self.cpu_threads
        if threads <= 0:
            import torch

            threads = torch.get_num_threads()
        try:
            self._model = WhisperModel(
                path if os.path.isdir(path) else self.model_label,
                device=ct2_device,
                device_index=device_index,
                compute_type=self.compute_type,
                cpu_threads=threads,
                download_root=self.download_root,
            )
        except Exception as e:
            raise ConfigError(
                f"cannot load faster-whisper model {self.model_label!r} on {self.device} "
                f"(compute_type {self.compute_type}): {e} "
                "(is it a model size or a CTranslate2 model directory, and is it cached if offline?)"
            ) from e

    def transcribe(self, audio: np.ndarray) -> str:
        """audio: float32 mono 16 kHz in [-1, 1]."""
        clip = self._clip(audio)
        segments, _info = self._model.transcribe(
            clip,
            language=self.language,
            # openai-whisper's transcribe() decodes greedily (beam_size None, best_of None -> one
            # sample when falling back to temperature > 0); faster-whisper defaults to beam 5 /
            # best_of 5, like the whisper CLI. Same decoding as OpenAIWhisperBackend instead.
            beam_size=1,
            best_of=1,
            vad_filter=False,
        )
        # segments is a lazy generator: decoding happens while it is consumed
        return "".join(segment.text for segment in segments).strip()
