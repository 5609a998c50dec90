"""CTranslate2 (faster-whisper) Whisper model -> openai-whisper checkpoint, with numpy and torch only.

`model.bin` layout (CTranslate2 binary versions 4 to 6, all little-endian; see
`ctranslate2/specs/model_spec.py: ModelSpec._serialize` and `src/models/model.cc`):

    u32 binary_version
    str spec_name                  e.g. "WhisperSpec"
    u32 spec_revision              3 for WhisperSpec
    u32 num_variables
      str name                     "encoder/layer_0/self_attention/linear_0/weight"
      u8  rank
      u32 dims[rank]
      u8  dtype_id                 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
      u32 num_bytes                must equal prod(dims) * itemsize
      u8  data[num_bytes]
    u32 num_aliases
      str alias                    a variable name that shares another one's data
      str target
    (end of file)

  where str = u16 length (counting the trailing NUL), UTF-8 bytes, NUL.

Scalar attributes (num_heads, activation, pre_norm, ...) are rank-0 variables. Variables that
are equal to an alphabetically earlier one are written once and aliased: for Whisper,
`decoder/projection/weight` is an alias of `decoder/embeddings/weight` (tied output layer).

Weight mapping onto `whisper.model.Whisper`: CTranslate2 fuses the self-attention q/k/v
projections into one `linear_0` (rows q, k, v) and the cross-attention k/v into `linear_1`.
openai-whisper's key projections have no bias; CTranslate2 stores zeros there (a key bias would
not change attention anyway: it adds the same amount to every logit of a query). Both position
tables are stored by CTranslate2: the encoder's sinusoids (a buffer in openai-whisper, saved
in its checkpoints) and the decoder's learned table.

Weights keep their stored dtype (float16 stays float16, like openai's own checkpoints; whisper
casts on load). bfloat16 is widened to float32 (exact). int8/int16-quantized weights are
dequantized to float32 with their `weight_scale` (lossy by nature of the source).
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SUPPORTED_BINARY_VERSIONS = (4, 5, 6)
MAX_RANK = 8

# dtype id -> numpy dtype as stored ("bfloat16" has no numpy type: read as uint16 and widened)
_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}

# ctranslate2.specs.common_spec.Activation.GELU (erf GELU, what openai-whisper uses)
_ACTIVATION_GELU = 3


@dataclass
class Ct2Model:
    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]  # stored variables only, in file order
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> stored variable name

    def resolved(self) -> dict[str, np.ndarray]:
        """Variables plus aliases (an alias maps to the same array object as its target)."""
        out = dict(self.variables)
        for alias, target in self.aliases.items():
            out[alias] = self.variables[target]
        return out


class _Reader:
    def __init__(self, buf: bytes | memoryview, path: str):
        self.buf = memoryview(buf)
        self.pos = 0
        self.path = path

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path}: not a valid CTranslate2 model.bin: {what} (at byte {self.pos})")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated while reading {what}: need {n} bytes, "
                            f"{len(self.buf) - self.pos} left of {len(self.buf)}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def string(self, what: str) -> str:
        n = self.u16(f"{what} length")
        if n == 0:
            raise self.fail(f"{what} has length 0 (the length counts a trailing NUL)")
        raw = bytes(self.take(n, what))
        if raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated")
        try:
            s = raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8 ({e})") from None
        if "\0" in s:
            raise self.fail(f"{what} {s!r} contains a NUL")
        return s


def read_ct2_file(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 model.bin. Raises ValueError on anything unexpected."""
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    r = _Reader(buf, str(path))
    version = r.u32("binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise r.fail(f"unsupported binary version {version} (this reader handles "
                     f"{', '.join(map(str, SUPPORTED_BINARY_VERSIONS))})")
    spec_name = r.string("spec name")
    spec_revision = r.u32("spec revision")
    num_vars = r.u32("variable count")
    # every variable takes at least 2 + 1 + 1 + 1 + 4 bytes: rejects absurd counts early
    if num_vars * 9 > len(buf) - r.pos:
        raise r.fail(f"variable count {num_vars} cannot fit in {len(buf) - r.pos} remaining bytes")
    variables: dict[str, np.ndarray] = {}
    for i in range(num_vars):
        name = r.string(f"name of variable #{i}")
        if name in variables:
            raise r.fail(f"duplicate variable {name!r}")
        rank = r.u8(f"rank of {name!r}")
        if rank > MAX_RANK:
            raise r.fail(f"variable {name!r} has rank {rank} (> {MAX_RANK})")
        shape = tuple(r.u32(f"dimension {d} of {name!r}") for d in range(rank))
        type_id = r.u8(f"dtype of {name!r}")
        if type_id not in _DTYPES:
            raise r.fail(f"variable {name!r} has unknown dtype id {type_id}")
        type_name, dtype = _DTYPES[type_id]
        num_bytes = r.u32(f"byte size of {name!r}")
        expected = math.prod(shape) * dtype.itemsize
        if num_bytes != expected:
            raise r.fail(f"variable {name!r} ({type_name}{list(shape)}) says {num_bytes} bytes, "
                         f"its shape needs {expected}")
        data = r.take(num_bytes, f"data of {name!r}")
        arr = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        if type_name == "bfloat16":  # exact: bfloat16 is the top half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        variables[name] = arr
    num_aliases = r.u32("alias count")
    aliases: dict[str, str] = {}
    for i in range(num_aliases):
        alias = r.string(f"alias #{i}")
        target = r.string(f"target of alias {alias!r}")
        if alias in variables or alias in aliases:
            raise r.fail(f"alias {alias!r} duplicates a variable or alias")
        if target not in variables:
            raise r.fail(f"alias {alias!r} points at unknown variable {target!r}")
        aliases[alias] = target
    if r.pos != len(buf):
        raise r.fail(f"{len(buf) - r.pos} unexpected trailing bytes after the alias table")
    return Ct2Model(version, spec_name, spec_revision, variables, aliases)


def read_ct2_model(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array for every variable of a CTranslate2 model.bin, aliases included.

    Scalars are 0-d arrays; bfloat16 variables come back as float32 (exact)."""
    return read_ct2_file(path).resolved()


# --- CT2 WhisperSpec -> openai-whisper ---------------------------------------------------------

# Scalars CTranslate2 writes for WhisperSpec: name -> value openai-whisper's architecture
# requires (None: anything is fine / used elsewhere). Unknown scalars are refused.
def _expected_scalars() -> dict[str, float | None]:
    return {
        "encoder/num_heads": None,
        "decoder/num_heads": None,
        "decoder/activation": _ACTIVATION_GELU,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/alibi": 0,
        "decoder/alibi_use_positive_positions": 0,
        "decoder/scale_alibi": 0,
        "decoder/alignment_layer": None,  # used by CT2 for word timestamps only
        "decoder/alignment_heads": None,
        "decoder/layer_norm_epsilon": 1e-5,  # torch.nn.LayerNorm's default, what whisper uses
        "decoder/parallel_residual": 0,
        "decoder/shared_layer_norm": 0,
        "decoder/multi_query_attention": 0,
        "decoder/start_from_zero_embedding": 0,
    }


def _as_float_weight(v: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """`<prefix>/weight`, dequantized if CT2 stored it as int8/int16 with a `weight_scale`."""
    w = v[f"{prefix}/weight"]
    scale = v.get(f"{prefix}/weight_scale")
    if np.issubdtype(w.dtype, np.integer):
        if scale is None:
            raise ValueError(f"{prefix}/weight is {w.dtype} but has no weight_scale")
        scale = np.asarray(scale, dtype=np.float32)
        if scale.ndim == 1:  # int8: one scale per output row
            scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
        return (w.astype(np.float32) / scale).astype(np.float32)
    if scale is not None:
        raise ValueError(f"{prefix}/weight is {w.dtype} but also has a weight_scale")
    return w


def _dims_from(v: dict[str, np.ndarray], enc_layers: int, dec_layers: int):
    from whisper.model import ModelDimensions

    def need(name):
        if name not in v:
            raise ValueError(f"CTranslate2 Whisper model lacks {name!r}")
        return v[name]

    conv1 = need("encoder/conv1/weight")
    emb = need("decoder/embeddings/weight")
    dec_pos = need("decoder/position_encodings/encodings")
    if conv1.ndim != 3 or emb.ndim != 2 or dec_pos.ndim != 2:
        raise ValueError("unexpected ranks for conv1 / embeddings / decoder position encodings: "
                         f"{conv1.shape}, {emb.shape}, {dec_pos.shape}")
    enc_pos = v.get("encoder/position_encodings/encodings")
    n_audio_ctx = int(enc_pos.shape[0]) if enc_pos is not None else 1500
    enc_heads, dec_heads = need("encoder/num_heads"), need("decoder/num_heads")
    if enc_heads.ndim or dec_heads.ndim or min(int(enc_heads), int(dec_heads)) < 1:
        raise ValueError(f"bad head counts: encoder {enc_heads!r}, decoder {dec_heads!r}")
    enc_heads, dec_heads = int(enc_heads), int(dec_heads)
    dims = ModelDimensions(
        n_mels=int(conv1.shape[1]),
        n_audio_ctx=n_audio_ctx,
        n_audio_state=int(conv1.shape[0]),
        n_audio_head=enc_heads,
        n_audio_layer=enc_layers,
        n_vocab=int(emb.shape[0]),
        n_text_ctx=int(dec_pos.shape[0]),
        n_text_state=int(emb.shape[1]),
        n_text_head=dec_heads,
        n_text_layer=dec_layers,
    )
    if dims.n_audio_state % enc_heads or dims.n_text_state % dec_heads:
        raise ValueError(f"state sizes {dims.n_audio_state}/{dims.n_text_state} are not divisible "
                         f"by head counts {enc_heads}/{dec_heads}")
    return dims


def _count_layers(names, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    idx = {int(m.group(1)) for m in map(pattern.match, names) if m}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"{prefix} layers are not numbered 0..N-1: {sorted(idx)}")
    return len(idx)


def _split_rows(w: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if w.shape[0] % parts:
        raise ValueError(f"{name} has {w.shape[0]} rows, not divisible into {parts} projections")
    return np.split(w, parts, axis=0)


def ct2_to_whisper_state(variables: dict[str, np.ndarray]):
    """(ModelDimensions, {whisper parameter name: np.ndarray}) from CT2 WhisperSpec variables."""
    v = variables
    enc_layers = _count_layers(v, "encoder")
    dec_layers = _count_layers(v, "decoder")
    dims = _dims_from(v, enc_layers, dec_layers)

    # architecture checks on the scalars
    expected = _expected_scalars()
    for name, arr in v.items():
        if arr.ndim != 0 or name.endswith("/weight_scale"):  # int16 scales are scalars
            continue
        if name not in expected:
            raise ValueError(f"unexpected CTranslate2 attribute {name!r} = {arr!r}: "
                             "openai-whisper may not be able to represent it")
        want = expected[name]
        if want is not None and not math.isclose(float(arr), want, rel_tol=1e-3):
            raise ValueError(f"{name} = {arr} but openai-whisper needs {want}")

    used: set[str] = set()
    state: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in v:
            raise ValueError(f"CTranslate2 Whisper model lacks {name!r}")
        used.add(name)
        return v[name]

    def weight(prefix: str) -> np.ndarray:
        get(f"{prefix}/weight")
        if f"{prefix}/weight_scale" in v:
            used.add(f"{prefix}/weight_scale")
        return _as_float_weight(v, prefix)

    def put(name: str, arr: np.ndarray):
        state[name] = arr

    def linear(dst: str, src: str):
        put(f"{dst}.weight", weight(src))
        put(f"{dst}.bias", get(f"{src}/bias"))

    def layer_norm(dst: str, src: str):
        put(f"{dst}.weight", get(f"{src}/gamma"))
        put(f"{dst}.bias", get(f"{src}/beta"))

    def self_attention(dst: str, src: str):
        q, k, vv = _split_rows(weight(f"{src}/linear_0"), 3, f"{src}/linear_0/weight")
        qb, _kb, vb = _split_rows(get(f"{src}/linear_0/bias"), 3, f"{src}/linear_0/bias")
        put(f"{dst}.query.weight", q)
        put(f"{dst}.query.bias", qb)
        put(f"{dst}.key.weight", k)
        put(f"{dst}.value.weight", vv)
        put(f"{dst}.value.bias", vb)
        linear(f"{dst}.out", f"{src}/linear_1")

    def cross_attention(dst: str, src: str):
        linear(f"{dst}.query", f"{src}/linear_0")
        k, vv = _split_rows(weight(f"{src}/linear_1"), 2, f"{src}/linear_1/weight")
        _kb, vb = _split_rows(get(f"{src}/linear_1/bias"), 2, f"{src}/linear_1/bias")
        put(f"{dst}.key.weight", k)
        put(f"{dst}.value.weight", vv)
        put(f"{dst}.value.bias", vb)
        linear(f"{dst}.out", f"{src}/linear_2")

    def mlp(dst: str, src: str):
        linear(f"{dst}.0", f"{src}/linear_0")
        linear(f"{dst}.2", f"{src}/linear_1")
        layer_norm(f"{dst}_ln", f"{src}/layer_norm")

    # encoder
    for i in (1, 2):
        put(f"encoder.conv{i}.weight", weight(f"encoder/conv{i}"))
        put(f"encoder.conv{i}.bias", get(f"encoder/conv{i}/bias"))
    if "encoder/position_encodings/encodings" in v:
        put("encoder.positional_embedding", get("encoder/position_encodings/encodings"))
    else:  # CT2 then uses its built-in sinusoids, which are whisper's
        from whisper.model import sinusoids

        put("encoder.positional_embedding", sinusoids(dims.n_audio_ctx, dims.n_audio_state).numpy())
    for i in range(enc_layers):
        s, d = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        self_attention(f"{d}.attn", f"{s}/self_attention")
        layer_norm(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
        mlp(f"{d}.mlp", f"{s}/ffn")
    layer_norm("encoder.ln_post", "encoder/layer_norm")

    # decoder
    put("decoder.token_embedding.weight", weight("decoder/embeddings"))
    put("decoder.positional_embedding", get("decoder/position_encodings/encodings"))
    for i in range(dec_layers):
        s, d = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        self_attention(f"{d}.attn", f"{s}/self_attention")
        layer_norm(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
        cross_attention(f"{d}.cross_attn", f"{s}/attention")
        layer_norm(f"{d}.cross_attn_ln", f"{s}/attention/layer_norm")
        mlp(f"{d}.mlp", f"{s}/ffn")
    layer_norm("decoder.ln", "decoder/layer_norm")

    # output projection: openai-whisper ties it to the token embedding
    if "decoder/projection/weight" in v:
        used.add("decoder/projection/weight")
        tied = v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # an alias
        if not tied:
            tied = np.array_equal(weight("decoder/projection"), state["decoder.token_embedding.weight"])
        if not tied:
            raise ValueError("decoder/projection/weight differs from decoder/embeddings/weight; "
                             "openai-whisper ties them and cannot represent this model")
    if "decoder/projection/bias" in v:
        used.add("decoder/projection/bias")
        if np.any(v["decoder/projection/bias"]):
            raise ValueError("decoder/projection/bias is non-zero; openai-whisper has no output bias")

    leftover = sorted(n for n, a in v.items() if a.ndim > 0 and n not in used)
    if leftover:
        raise ValueError(f"CTranslate2 variables with no openai-whisper counterpart: {leftover[:10]}"
                         + (f" (+{len(leftover) - 10} more)" if len(leftover) > 10 else ""))
    return dims, state


def _alignment_heads_dump(pairs, dims) -> bytes | None:
    """config.json's [[layer, head], ...] in openai-whisper's set_alignment_heads() format."""
    mask = np.zeros((dims.n_text_layer, dims.n_text_head), dtype=bool)
    try:
        for layer, head in pairs:
            mask[int(layer), int(head)] = True
    except (TypeError, ValueError, IndexError):
        return None
    return base64.b85encode(gzip.compress(mask.tobytes(), mtime=0))


def convert(ct2_dir: Path, out_file: Path) -> None:
    """Write an openai-whisper checkpoint (`whisper.load_model(out_file)`) from a CT2 Whisper dir.

    The checkpoint is {"dims", "model_state_dict"} like openai's own, plus "alignment_heads"
    (openai-whisper's base85 format, from config.json) when known: load_model() does not read
    it (only official names get heads), apply with `model.set_alignment_heads(ckpt[...])`.
    """
    import torch
    from whisper.model import AudioEncoder, TextDecoder

    ct2_dir, out_file = Path(ct2_dir), Path(out_file)
    model = read_ct2_file(ct2_dir / "model.bin")
    if model.spec_name != "WhisperSpec":
        raise ValueError(f"{ct2_dir / 'model.bin'} holds a {model.spec_name!r}, not a WhisperSpec model")
    dims, arrays = ct2_to_whisper_state(model.resolved())

    # check against the real modules: every parameter and persistent buffer, same shapes.
    # Built on the meta device (no memory, no init); Whisper itself cannot be (its sparse
    # alignment_heads buffer has no meta kernel), so its two halves are built as it builds them.
    reference = {}
    with torch.device("meta"):
        halves = {"encoder": AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                          dims.n_audio_head, dims.n_audio_layer),
                  "decoder": TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state,
                                         dims.n_text_head, dims.n_text_layer)}
    for prefix, module in halves.items():
        reference.update({f"{prefix}.{k}": t for k, t in module.state_dict().items()})
    missing = [k for k in reference if k not in arrays]
    extra = [k for k in arrays if k not in reference]
    if missing or extra:
        raise ValueError(f"mapping mismatch: missing {missing[:10]}, unexpected {extra[:10]}")
    state = {}
    for name, ref in reference.items():  # whisper's own order: deterministic file layout
        arr = arrays[name]
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"{name}: CTranslate2 gives shape {tuple(arr.shape)}, "
                             f"whisper expects {tuple(ref.shape)}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name}: unexpected dtype {arr.dtype}")
        state[name] = torch.from_numpy(np.ascontiguousarray(arr).copy())

    checkpoint = {"dims": asdict(dims), "model_state_dict": state}
    config_path = ct2_dir / "config.json"
    if config_path.is_file():
        try:
            pairs = json.loads(config_path.read_text()).get("alignment_heads")
        except (OSError, ValueError, AttributeError):
            pairs = None
        dump = _alignment_heads_dump(pairs, dims) if pairs else None
        if dump is not None:
            checkpoint["alignment_heads"] = dump
    # Through a file object, not a path: torch then names the zip's root folder "archive"
    # instead of after out_file, so the bytes do not depend on the (temporary) output name.
    with open(out_file, "wb") as f:
        torch.save(checkpoint, f)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="convert a CTranslate2 Whisper dir to an openai-whisper .pt")
    p.add_argument("ct2_dir", type=Path)
    p.add_argument("out_file", type=Path)
    a = p.parse_args(argv)
    convert(a.ct2_dir, a.out_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
