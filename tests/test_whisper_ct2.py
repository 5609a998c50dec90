"""CTranslate2 Whisper model.bin -> openai-whisper checkpoint, and the faster-whisper ASR backend.

Fast tests use tiny models written by tests/fixtures/ct2_writer.py (offline, seconds). The slow
test converts the real Whisper base files assembled from the registry packages.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import faster_whisper  # noqa: F401  a hard dependency (pyproject.toml): missing, these tests fail, never skip
import whisper
from whisper.model import ModelDimensions

from services.models.whisper_ct2 import convert, read_ct2_file, read_ct2_model
from services.runtime.errors import ConfigError
from tests.fixtures.ct2_writer import (
    random_whisper_state,
    scripted_whisper_state,
    serialize_model_bin,
    whisper_to_ct2_variables,
    write_ct2_whisper_dir,
)

pytestmark = pytest.mark.timeout(180)

TINY = ModelDimensions(
    n_mels=80, n_audio_ctx=24, n_audio_state=16, n_audio_head=2, n_audio_layer=2,
    n_vocab=100, n_text_ctx=10, n_text_state=16, n_text_head=4, n_text_layer=2,
)
# faster-whisper needs the real vocabulary (its tokenizer) and 448 decoder positions
SCRIPTED = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=1,
    n_vocab=51865, n_text_ctx=448, n_text_state=16, n_text_head=2, n_text_layer=1,
)


def _audio(seconds: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _write(tmp_path: Path, state, dims=TINY, **kw) -> Path:
    return write_ct2_whisper_dir(state, dims, tmp_path / "ct2", tokenizer=False, **kw)


def _load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- conversion ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_every_tensor_round_trips_exactly(tmp_path, dtype):
    state = random_whisper_state(TINY, seed=1)
    ct2_dir = _write(tmp_path, state, dtype=dtype)
    out = tmp_path / "model.pt"
    convert(ct2_dir, out)

    ckpt = _load_ckpt(out)
    assert ckpt["dims"] == TINY.__dict__
    converted = ckpt["model_state_dict"]
    assert list(converted) == list(whisper.model.Whisper(TINY).state_dict())  # whisper's own order
    for name, source in state.items():
        expected = source.to(getattr(torch, dtype))  # what the CT2 file holds
        got = converted[name]
        # float16 stays float16, like openai's checkpoints; bfloat16 is widened to float32 (exact)
        assert got.dtype == (torch.float32 if dtype == "bfloat16" else expected.dtype), name
        assert torch.equal(got, expected.to(got.dtype)), name

    model = whisper.load_model(str(out), device="cpu")  # strict load_state_dict inside
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, converted[name].float()), name


@pytest.mark.parametrize("quantization,tolerance", [("int8", 1 / 127), ("int16", 2**-10)])
def test_quantized_weights_are_dequantized(tmp_path, quantization, tolerance):
    state = random_whisper_state(TINY, seed=2)
    out = tmp_path / "model.pt"
    convert(_write(tmp_path, state, dtype="float32", quantization=quantization), out)
    converted = _load_ckpt(out)["model_state_dict"]
    largest = max(t.abs().max() for t in state.values())
    quantized = 0
    for name, source in state.items():
        got = converted[name].float()
        if quantization == "int8" and source.ndim > 1:  # one scale per output row
            bound = source.abs().reshape(source.shape[0], -1).amax(1).reshape(-1, *([1] * (source.ndim - 1)))
        else:  # int16: one scale per (possibly fused q/k/v) matrix
            bound = largest
        error = (got - source).abs()
        assert torch.all(error <= bound * tolerance * 0.51 + 1e-6), name
        quantized += bool(error.max() > 0)
    assert quantized >= 4 * (TINY.n_audio_layer + TINY.n_text_layer)  # the weights really were quantized
    whisper.load_model(str(out), device="cpu")


def test_reader_returns_scalars_and_resolves_aliases(tmp_path):
    ct2_dir = _write(tmp_path, random_whisper_state(TINY))
    model = read_ct2_file(ct2_dir / "model.bin")
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    v = read_ct2_model(ct2_dir / "model.bin")
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]
    assert v["encoder/num_heads"].shape == () and int(v["encoder/num_heads"]) == TINY.n_audio_head
    assert v["decoder/alignment_layer"].dtype == np.int16 and int(v["decoder/alignment_layer"]) == -1
    assert v["encoder/layer_1/self_attention/linear_0/weight"].shape == (3 * 16, 16)
    assert v["decoder/layer_0/attention/linear_1/weight"].shape == (2 * 16, 16)


def test_conversion_is_deterministic_and_independent_of_the_output_name(tmp_path):
    ct2_dir = _write(tmp_path, random_whisper_state(TINY))
    a, b = tmp_path / "a.pt", tmp_path / "other-name.tmp"
    convert(ct2_dir, a)
    convert(ct2_dir, b)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_alignment_heads_from_config_are_kept(tmp_path):
    ct2_dir = _write(tmp_path, random_whisper_state(TINY))
    (ct2_dir / "config.json").write_text('{"alignment_heads": [[1, 0], [1, 3]]}')
    convert(ct2_dir, tmp_path / "m.pt")
    ckpt = _load_ckpt(tmp_path / "m.pt")
    model = whisper.load_model(str(tmp_path / "m.pt"), device="cpu")
    model.set_alignment_heads(ckpt["alignment_heads"])
    assert model.alignment_heads.to_dense().nonzero().tolist() == [[1, 0], [1, 3]]


# --- corrupt input -------------------------------------------------------------------------


def _variables():
    return whisper_to_ct2_variables(random_whisper_state(TINY), TINY)


def _tamper(blob: bytes, name: str, field: str, value: int) -> bytes:
    """Overwrite the rank/dtype/num_bytes field that follows variable `name` in a model.bin."""
    key = struct.pack("<H", len(name) + 1) + name.encode() + b"\0"
    pos = blob.index(key) + len(key)
    rank = blob[pos]
    offsets = {"rank": (pos, "<B"), "dtype": (pos + 1 + 4 * rank, "<B"), "num_bytes": (pos + 2 + 4 * rank, "<I")}
    at, fmt = offsets[field]
    return blob[:at] + struct.pack(fmt, value) + blob[at + struct.calcsize(fmt):]


def _corruptions():
    variables, aliases = _variables()
    good = serialize_model_bin(variables, aliases)
    emb = "decoder/embeddings/weight"
    alias_table = serialize_model_bin({}, aliases)[4 + 2 + 12 + 4 + 4:]
    assert good.endswith(alias_table)
    return {
        "empty": (b"", "truncated while reading binary version"),
        "bad version": (struct.pack("<I", 99) + good[4:], "unsupported binary version 99"),
        "half header": (good[:9], "truncated"),
        "truncated data": (good[: len(good) // 2], "truncated while reading data"),
        "no alias table": (good[:-len(alias_table)], "truncated while reading alias count"),
        "trailing bytes": (good + b"\0\0\0\0", "trailing bytes"),
        "byte size": (_tamper(good, emb, "num_bytes", 12), "says 12 bytes"),
        "dtype": (_tamper(good, emb, "dtype", 9), "unknown dtype id 9"),
        "rank": (_tamper(good, emb, "rank", 200), "rank 200"),
        "huge count": (good[:4 + 2 + 12 + 4] + struct.pack("<I", 2**31) + good[4 + 2 + 12 + 8:], "variable count"),
        "dangling alias": (serialize_model_bin(variables, {"decoder/projection/weight": "nope"}), "unknown variable 'nope'"),
        "alias shadows": (serialize_model_bin(variables, {emb: "decoder/layer_norm/gamma"}), "duplicates"),
    }


@pytest.mark.parametrize("case", list(_corruptions()))
def test_corrupt_model_bin_raises_a_clear_value_error(tmp_path, case):
    blob, message = _corruptions()[case]
    path = tmp_path / "model.bin"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match="model.bin") as err:
        read_ct2_model(path)
    assert message in str(err.value)


def test_truncation_anywhere_is_a_value_error(tmp_path):
    variables, aliases = _variables()
    good = serialize_model_bin(variables, aliases)
    path = tmp_path / "model.bin"
    cuts = sorted({*range(0, 64), *np.linspace(64, len(good) - 1, 300).astype(int)})
    for cut in cuts:
        path.write_bytes(good[:cut])
        with pytest.raises(ValueError, match="truncated|count"):
            read_ct2_model(path)


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        read_ct2_model(tmp_path / "nothing" / "model.bin")


def _convert_variables(tmp_path, variables, aliases, spec_name="WhisperSpec"):
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    (d / "model.bin").write_bytes(serialize_model_bin(variables, aliases, spec_name=spec_name))
    convert(d, tmp_path / "out.pt")


def test_convert_refuses_what_whisper_cannot_represent(tmp_path):
    variables, aliases = _variables()
    with pytest.raises(ValueError, match="TransformerSpec"):
        _convert_variables(tmp_path, variables, aliases, spec_name="TransformerSpec")

    v = dict(variables)
    del v["decoder/layer_1/ffn/linear_0/bias"]
    with pytest.raises(ValueError, match="lacks 'decoder/layer_1/ffn/linear_0/bias'"):
        _convert_variables(tmp_path, v, aliases)

    v = dict(variables, **{"decoder/projection/weight": variables["decoder/embeddings/weight"] * 2})
    with pytest.raises(ValueError, match="ties them"):
        _convert_variables(tmp_path, v, {})

    v = dict(variables, **{"decoder/scale_embeddings": np.array(1, np.int8)})
    with pytest.raises(ValueError, match="scale_embeddings"):
        _convert_variables(tmp_path, v, aliases)

    v = dict(variables, **{"decoder/rotary_dim": np.array(8, np.int32)})
    with pytest.raises(ValueError, match="unexpected CTranslate2 attribute 'decoder/rotary_dim'"):
        _convert_variables(tmp_path, v, aliases)

    v = dict(variables, **{"decoder/layer_0/extra/weight": np.zeros((2, 2), np.float16)})
    with pytest.raises(ValueError, match="no openai-whisper counterpart"):
        _convert_variables(tmp_path, v, aliases)

    v = dict(variables, **{"decoder/layer_0/ffn/linear_1/weight": np.zeros((16, 7), np.float16)})
    with pytest.raises(ValueError, match="shape"):
        _convert_variables(tmp_path, v, aliases)
    assert not (tmp_path / "out.pt").exists()  # nothing written on failure


# --- faster-whisper backend ----------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted_ct2_dir(tmp_path_factory) -> Path:
    """A CT2 model directory faster-whisper loads offline; it transcribes anything as "hello"."""
    out = tmp_path_factory.mktemp("scripted-ct2")
    return write_ct2_whisper_dir(scripted_whisper_state(SCRIPTED), SCRIPTED, out / "model")


@pytest.mark.parametrize("compute_type", ["auto", "float32"])
def test_faster_whisper_backend_transcribes(scripted_ct2_dir, compute_type):
    from services.asr.backends import FasterWhisperBackend

    backend = FasterWhisperBackend(str(scripted_ct2_dir), device="cpu", compute_type=compute_type)
    assert backend.model_label == str(scripted_ct2_dir)
    backend.load()
    assert backend.device == "cpu"
    assert backend.compute_type == ("int8" if compute_type == "auto" else compute_type)
    text = backend.transcribe(_audio())
    assert isinstance(text, str) and text == "hello"


def test_openai_whisper_agrees_on_the_converted_scripted_model(scripted_ct2_dir, tmp_path):
    out = tmp_path / "scripted.pt"
    convert(scripted_ct2_dir, out)
    model = whisper.load_model(str(out), device="cpu")
    assert model.transcribe(_audio(), language="en", fp16=False)["text"].strip() == "hello"


def test_faster_whisper_backend_errors_are_config_errors(tmp_path, scripted_ct2_dir, monkeypatch):
    from services.asr.backends import FasterWhisperBackend

    with pytest.raises(ConfigError, match="does not exist"):
        FasterWhisperBackend(str(tmp_path / "no-such-model")).load()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="lacks model.bin, tokenizer.json"):
        FasterWhisperBackend(str(empty)).load()
    broken = tmp_path / "broken"
    shutil.copytree(scripted_ct2_dir, broken)
    (broken / "model.bin").write_bytes(b"\x06\0\0\0garbage")
    with pytest.raises(ConfigError, match="cannot load faster-whisper model"):
        FasterWhisperBackend(str(broken)).load()
    with pytest.raises(ConfigError, match="compute_type nonsense"):
        FasterWhisperBackend(str(scripted_ct2_dir), compute_type="nonsense").load()
    with pytest.raises(RuntimeError, match="before load"):
        FasterWhisperBackend(str(scripted_ct2_dir)).transcribe(_audio())

    monkeypatch.setitem(__import__("sys").modules, "faster_whisper", None)
    with pytest.raises(ConfigError, match="pip install faster-whisper"):
        FasterWhisperBackend(str(scripted_ct2_dir)).load()


def test_faster_whisper_is_a_registered_asr_backend():
    from services.asr.stage import AsrStage

    assert AsrStage.BACKENDS["faster-whisper"] == "services.asr.backends:FasterWhisperBackend"


# --- real model (slow, opt-in) -------------------------------------------------------------


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


@pytest.mark.slow
def test_real_ct2_whisper_converts_and_transcribes(tmp_path, registry_model):
    src = registry_model("whisper-base-ct2")
    sentence = "What is the capital of France?"
    wav = tmp_path / "q.wav"
    # 140 words/min: at espeak's default 175, whisper base (both runtimes) hears "capital and friends"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), sentence], check=True)
    audio = whisper.load_audio(str(wav))

    out = tmp_path / "whisper-base.pt"
    convert(Path(src), out)
    model = whisper.load_model(str(out), device="cpu")
    text = model.transcribe(audio, language="en", fp16=False)["text"]
    assert _normalize(text) == _normalize(sentence), text

    from services.asr.backends import FasterWhisperBackend

    backend = FasterWhisperBackend(src, device="cpu")
    backend.load()
    assert _normalize(backend.transcribe(audio)) == _normalize(sentence)
