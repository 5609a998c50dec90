"""The model backends' real loading and inference code, on tiny random-weight models (offline)."""

import threading
import time

import numpy as np
import pytest
import torch

from services.asr.backends import OpenAIWhisperBackend
from services.llm.backends import TransformersBackend
from services.runtime.devices import resolve_device, resolve_dtype
from services.runtime.errors import ConfigError
from services.tts.backends import KokoroBackend

pytestmark = pytest.mark.timeout(120)

MESSAGES = [
    {"role": "system", "content": "You are a friendly assistant. Answer briefly."},
    {"role": "user", "content": "Hello there, how are you today?"},
]
PERSONA_VOICES = ("af_heart", "af_bella", "am_michael", "am_adam")


def speechlike(seconds: float = 2.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))  # syllable-rate amplitude modulation
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * env * np.sin(2 * np.pi * 180 * t) + 0.01 * noise).astype(np.float32)


def generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llm-generate"]


# --- devices -----------------------------------------------------------------------------


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_device_prefers_cuda_then_mps_then_cpu(no_accelerators, monkeypatch):
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_explicit_devices_are_validated(no_accelerators, monkeypatch):
    assert resolve_device("cpu") == "cpu"
    for bad in ("cuda", "cuda:0", "mps", "tpu", "cuda:x"):
        with pytest.raises(ConfigError, match="device"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="cuda:2"):
        resolve_device("cuda:2")


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    assert resolve_dtype("auto", "mps") == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("float32", "cuda") == torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        resolve_dtype("int8", "cpu")


# --- ASR ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr(tiny_whisper):
    backend = OpenAIWhisperBackend(model=str(tiny_whisper), device="cpu")
    backend.load()
    return backend


def test_asr_loads_on_resolved_device(asr, tiny_whisper):
    assert asr.name == "openai-whisper"
    assert asr.device == "cpu"
    assert asr.model_label == str(tiny_whisper)


@pytest.mark.timeout(30)
def test_asr_transcribes_to_nonempty_deterministic_text(asr):
    start = time.monotonic()
    first = asr.transcribe(speechlike())
    elapsed = time.monotonic() - start
    assert isinstance(first, str) and first and first == first.strip()
    assert asr.transcribe(speechlike()) == first
    assert elapsed < 10, elapsed  # ~1 s here, temperature fallbacks included


def test_asr_bad_model_raises_config_error(tmp_path):
    missing = str(tmp_path / "nope.pt")
    backend = OpenAIWhisperBackend(model=missing)  # constructor does no I/O
    with pytest.raises(ConfigError, match="nope.pt"):
        backend.load()


# --- LLM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(tiny_qwen2):
    backend = TransformersBackend(model=str(tiny_qwen2))  # device "auto", dtype "auto"
    backend.load()
    return backend


def test_llm_loads_on_resolved_device(llm, tiny_qwen2):
    assert llm.name == "transformers"
    assert llm.device == resolve_device("auto")
    assert llm.model.device.type == torch.device(llm.device).type
    assert llm.model.dtype == resolve_dtype("auto", llm.device)
    assert llm.model_label == str(tiny_qwen2)


@pytest.mark.timeout(30)
def test_llm_streams_ascii_words(llm):
    pieces = list(llm.stream(MESSAGES, max_new_tokens=220))
    text = "".join(pieces)
    assert len(pieces) > 10 and all(isinstance(p, str) and p for p in pieces)
    assert text.isascii() and len(text.split()) > 50, text[:200]
    assert not generate_threads()


@pytest.mark.timeout(30)
def test_llm_should_stop_ends_generation_within_one_step(llm):
    forwards = []
    hook = llm.model.register_forward_hook(lambda *_: forwards.append(1))
    stop, at_flip = False, None
    try:
        for piece in llm.stream(MESSAGES, max_new_tokens=220, should_stop=lambda: stop):
            if at_flip is None:
                stop, at_flip = True, len(forwards)
    finally:
        hook.remove()
    assert at_flip is not None
    assert len(forwards) - at_flip <= 1, (at_flip, len(forwards))
    assert len(forwards) < 50  # far from the 220-token budget
    assert not generate_threads()


@pytest.mark.timeout(30)
def test_llm_early_close_stops_and_joins_thread(llm):
    gen = llm.stream(MESSAGES, max_new_tokens=220)
    assert next(gen)
    gen.close()
    assert not generate_threads()


@pytest.mark.timeout(30)
def test_llm_generate_exception_surfaces(llm):
    calls = []

    def boom(*_):
        calls.append(1)
        if len(calls) == 5:  # mid-generation, after some text was streamed
            raise RuntimeError("boom in forward")

    hook = llm.model.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom in forward"):
            for _ in llm.stream(MESSAGES, max_new_tokens=220):
                pass
    finally:
        hook.remove()
    assert not generate_threads()


def test_llm_bad_model_raises_config_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no-such-model.*hub") as err:
        TransformersBackend(model=missing, device="cpu").load()
    assert "unreachable" in str(err.value)


# --- TTS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tts(tiny_kokoro):
    backend = KokoroBackend(
        model_path=tiny_kokoro["model_path"], config_path=tiny_kokoro["config_path"],
        voices_dir=tiny_kokoro["voices_dir"], device="cpu",
    )
    backend.load()
    return backend


def test_tts_loads_on_resolved_device(tts, tiny_kokoro):
    assert tts.name == "kokoro" and tts.sample_rate == 24000
    assert tts.device == "cpu"
    assert tts.model_label == tiny_kokoro["model_path"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("voice", PERSONA_VOICES)
def test_tts_yields_float32_audio_for_each_persona_voice(tts, voice):
    chunks = list(tts.synthesize("Hello there! How are you today?", voice))
    assert chunks
    for audio in chunks:
        assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 2400  # > 0.1 s at 24 kHz
        assert np.isfinite(audio).all()
        assert np.abs(audio).max() > 1e-3  # not silent


def test_tts_unknown_voice_raises_value_error(tts):
    for bad in ("zz_nobody", "../voices/af_heart", ""):
        with pytest.raises(ValueError, match="voice"):
            list(tts.synthesize("Hello.", bad))


def test_tiny_kokoro_vocab_covers_misaki_phonemes(tts, tiny_kokoro):
    import json

    vocab = json.load(open(tiny_kokoro["config_path"], encoding="utf-8"))["vocab"]
    text = ("The quick brown fox jumps over the lazy dog! Isn't it 3:45 p.m.? "
            "Yes, \"Zoë\" paid $12.50 for thirty-two bright yellow judges' jackets; ooh, wow...")
    phonemes, _ = tts._pipeline.g2p(text)
    assert phonemes and set(phonemes) <= set(vocab), set(phonemes) - set(vocab)


def test_tts_bad_model_raises_config_error(tmp_path, tiny_kokoro):
    missing = str(tmp_path / "missing-kokoro.pth")
    backend = KokoroBackend(model_path=missing, config_path=tiny_kokoro["config_path"], device="cpu")
    with pytest.raises(ConfigError, match="missing-kokoro.pth"):
        backend.load()


@pytest.mark.timeout(60)
def test_llm_prefills_the_system_prompt_once_with_identical_output(llm, monkeypatch):
    prefill = []

    def first_forward(module, args, kwargs):
        if not prefill:
            prefill.append(kwargs["input_ids"].shape[1])

    reference = "".join(llm.stream(MESSAGES, max_new_tokens=40))  # builds the system prompt's cache
    hook = llm.model.register_forward_pre_hook(first_forward, with_kwargs=True)
    try:
        hits = llm.prefix_hits
        cached = "".join(llm.stream(MESSAGES, max_new_tokens=40))
    finally:
        hook.remove()
    prompt = llm.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    total = len(llm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    system = llm.tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False)
    prefix = len(llm.tokenizer(system, add_special_tokens=False)["input_ids"])
    assert llm.prefix_hits == hits + 1 and 0 < prefix < total
    assert prefill == [total - prefix]  # only the history and question were prefilled
    assert cached == reference  # greedy decoding: the cache changes the cost, not the answer
    monkeypatch.setattr(llm, "_prefix_cache", lambda *args: None)
    assert "".join(llm.stream(MESSAGES, max_new_tokens=40)) == reference
    assert not generate_threads()


@pytest.mark.timeout(60)
def test_llm_generates_two_replies_at_once_as_it_does_one_at_a_time(llm):
    import threading

    assert llm.thread_safe
    other = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]
    expected = ["".join(llm.stream(m, max_new_tokens=30)) for m in (MESSAGES, other)]
    results: list = [None, None]

    def run(i, messages):
        results[i] = "".join(llm.stream(messages, max_new_tokens=30))

    threads = [threading.Thread(target=run, args=(i, m)) for i, m in enumerate((MESSAGES, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == expected
    assert not generate_threads()
