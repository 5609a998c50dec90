"""The model backends' real loading and inference code, on tiny random-weight models (offline)."""

import threading

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


def unfinished_replies(llm) -> int:
    """Replies still in the backend's decode batch (0 once every stream has returned)."""
    return llm._batcher().unfinished()


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
    first = asr.transcribe(speechlike())  # its speed is no unit test's business (docs/BENCHMARKS.md)
    assert isinstance(first, str) and first and first == first.strip()
    assert asr.transcribe(speechlike()) == first


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
    assert not unfinished_replies(llm)


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
    assert not unfinished_replies(llm)


@pytest.mark.timeout(30)
def test_llm_early_close_stops_and_joins_thread(llm):
    gen = llm.stream(MESSAGES, max_new_tokens=220)
    assert next(gen)
    gen.close()
    assert not unfinished_replies(llm)


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
    assert not unfinished_replies(llm)


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


def prompt_ids(llm, messages: list[dict]) -> list[int]:
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return llm.tokenizer(prompt, add_special_tokens=False)["input_ids"]


@pytest.mark.timeout(60)
def test_llm_reads_a_system_prompt_once_and_a_conversation_only_where_it_grew(llm, monkeypatch):
    prefills = []  # tokens read by each forward pass that reads more than one (decode steps read one)

    def record(module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            prefills.append(kwargs["input_ids"].shape[1])

    # a persona no other test uses: nothing of this conversation is cached yet
    first = [{"role": "system", "content": "You are a patient guide to the night sky."}, MESSAGES[1]]
    system = llm.tokenizer.apply_chat_template(first[:1], tokenize=False)
    system_len = len(llm.tokenizer(system, add_special_tokens=False)["input_ids"])
    second = [*first, {"role": "assistant", "content": "I am well, thank you."},
              {"role": "user", "content": "What can I see tonight?"}]
    first_ids, second_ids = prompt_ids(llm, first), prompt_ids(llm, second)
    assert second_ids[:len(first_ids)] == first_ids  # the next turn's prompt extends the last one

    hook = llm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        hits = llm.prompts.hits if llm.prompts else 0
        "".join(llm.stream(first, max_new_tokens=10))
        assert prefills == [system_len, len(first_ids) - system_len]  # its system prompt, then the rest
        prefills.clear()
        cached = "".join(llm.stream(second, max_new_tokens=40))
        assert prefills == [len(second_ids) - len(first_ids)]  # only the answer and the new question
        assert llm.prompts.hits == hits + 2
        # another conversation of the same persona starts after its system prompt
        prefills.clear()
        "".join(llm.stream([first[0], {"role": "user", "content": "Is that star a planet?"}], max_new_tokens=10))
        assert prefills[0] < len(first_ids) and len(prefills) == 1
    finally:
        hook.remove()
    # greedy decoding: the cache changes the cost, not the answer
    monkeypatch.setattr(llm.prompts, "longest", lambda ids: (0, None))
    assert "".join(llm.stream(second, max_new_tokens=40)) == cached
    assert not unfinished_replies(llm)


@pytest.fixture(scope="module")
def context_llm(tiny_qwen2):
    """The tiny model with its attention weights scaled up. With small random weights a token's
    context hardly changes the next token, so a batch that got positions or padding wrong would
    still match; scaled, every reply depends on its whole prompt and on where each token sits."""
    backend = TransformersBackend(model=str(tiny_qwen2), device="cpu")
    backend.load()
    with torch.no_grad():
        for layer in backend.model.model.layers:
            attention = layer.self_attn
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                proj.weight.mul_(8)
    return backend


OTHER_PROMPTS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "Count from one to ten, then tell me a long story about a lighthouse."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Arr, hello there."}, {"role": "user", "content": "Where is the gold?"}],
]


class DecodeThread:
    """A forward pre-hook on the backend's model that counts the decode thread's forward passes
    (0 is its first), so a test can act at a known point of decoding, by construction rather
    than by timing. `on_pass(n, rows)` runs in that thread before pass n, which has `rows` rows."""

    def __init__(self, llm, on_pass):
        self.passes = 0
        self.rows: list[int] = []  # the rows of each pass
        self._on_pass = on_pass
        self._hook = llm.model.register_forward_pre_hook(self._before, with_kwargs=True)

    def _before(self, module, args, kwargs):
        if threading.current_thread().name != "llm-batch":  # a prefix cache built by a caller
            return
        rows = kwargs["input_ids"].shape[0]
        self._on_pass(self.passes, rows)
        self.rows.append(rows)
        self.passes += 1

    def remove(self):
        self._hook.remove()


def stream_at_once(llm, prompts, max_new_tokens=30, should_stop=None, later=None, on_pass=None):
    """Each prompt streamed on its own thread (as the worker's PARALLEL threads do): the texts, the
    errors and the rows of each forward pass. `later` maps a forward pass of the decode thread to
    the prompts (indices) whose streams start there; that pass waits until they are submitted, so
    they join the running batch at its next step whatever the machine's speed. The others start
    at once. `on_pass(n, rows)` is called before each pass too."""
    later = later or {}
    starts_later = {i for group in later.values() for i in group}
    results: list = [None] * len(prompts)
    errors: list = []
    batcher = llm._batcher()
    submitted = [0]  # replies that reached the batcher
    change = threading.Condition()
    real_submit = batcher.submit

    def submit(reply):
        real_submit(reply)
        with change:
            submitted[0] += 1
            change.notify_all()

    def run(i, messages):
        try:
            stop = should_stop[i] if should_stop else (lambda: False)
            results[i] = "".join(llm.stream(messages, max_new_tokens=max_new_tokens, should_stop=stop))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, m)) for i, m in enumerate(prompts)]

    def before_pass(n, rows):
        if on_pass:
            on_pass(n, rows)
        if n not in later:
            return
        for i in later[n]:
            threads[i].start()
        started = sum(t.ident is not None for t in threads)
        with change:
            assert change.wait_for(lambda: submitted[0] == started, 60), "a reply was never submitted"

    decode = DecodeThread(llm, before_pass)
    batcher.submit = submit  # this instance only: counts what reached the batcher
    try:
        first = [t for i, t in enumerate(threads) if i not in starts_later]
        for t in first:
            t.start()
        for t in first:
            t.join(60)
        # a later reply starts inside a pass that decodes a first one: none may be left unstarted
        assert all(t.ident is not None for t in threads), f"decoding ended after {decode.passes} passes"
        for t in threads:
            t.join(60)
    finally:
        decode.remove()
        del batcher.submit
    assert not any(t.is_alive() for t in threads), "a stream did not end"
    return results, errors, decode.rows


# the first reply alone, then the three others: submitted while its prefill is held (so all four
# join before the first step), or after two of its decode steps (so they join a running batch)
JOIN_POINTS = {"at_once": {0: [1, 2, 3]}, "while_decoding": {3: [1, 2, 3]}}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("join", JOIN_POINTS)
def test_llm_batches_replies_and_each_is_what_it_would_be_alone(context_llm, join):
    """Replies of different lengths join one running batch (at once, or while others decode):
    padding and per-row positions leave every reply exactly as it is when generated alone."""
    llm = context_llm
    assert llm.thread_safe
    prompts = [MESSAGES] + OTHER_PROMPTS
    expected = ["".join(llm.stream(m, max_new_tokens=30)) for m in prompts]
    assert len(set(expected)) == len(expected)  # each reply depends on its prompt
    batcher = llm._batcher()
    batcher.max_rows = 0
    results, errors, rows = stream_at_once(llm, prompts, later=JOIN_POINTS[join])
    assert not errors
    assert results == expected
    assert batcher.max_rows == 4 and 4 in rows  # they really were decoded together
    assert not unfinished_replies(llm)


@pytest.mark.timeout(90)
def test_llm_batch_matches_generate_with_a_repetition_penalty(context_llm, monkeypatch):
    """Greedy decoding as generate(do_sample=False) does it, with the model's repetition penalty
    (Qwen2.5-Instruct ships 1.05)."""
    backend = context_llm
    monkeypatch.setattr(backend.model.generation_config, "repetition_penalty", 1.5)
    monkeypatch.setattr(backend, "_decode_batch", None)  # a batcher that reads the new penalty
    for messages in [MESSAGES] + OTHER_PROMPTS:
        prompt = backend.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = backend.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=25,
                                     do_sample=False, pad_token_id=backend.tokenizer.eos_token_id)
        reference = backend.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert "".join(backend.stream(messages, max_new_tokens=25)) == reference


@pytest.mark.timeout(90)
def test_llm_stopping_one_batched_reply_leaves_the_others_whole(context_llm):
    llm = context_llm
    prompts = [MESSAGES] + OTHER_PROMPTS
    expected = ["".join(llm.stream(m, max_new_tokens=40)) for m in prompts]
    stop = threading.Event()
    stoppers = [lambda: False, stop.is_set, lambda: False, lambda: False]
    full_steps = []

    def stop_after_five_full_steps(n, rows):  # the second reply stops while all four decode
        if rows == 4:
            full_steps.append(n)
            if len(full_steps) == 5:
                stop.set()

    results, errors, rows = stream_at_once(llm, prompts, max_new_tokens=40, should_stop=stoppers,
                                           later={0: [1, 2, 3]}, on_pass=stop_after_five_full_steps)
    assert not errors
    assert stop.is_set() and rows.count(4) == 5  # stopped in the batch, which went on without it
    assert results[0] == expected[0] and results[2:] == expected[2:]
    assert len(results[1]) < len(expected[1]) and expected[1].startswith(results[1])
    assert not unfinished_replies(llm)


@pytest.mark.timeout(90)
def test_llm_a_failing_prefill_ends_only_its_own_reply(context_llm, monkeypatch):
    llm = context_llm
    from services.llm import batching

    real_prefill = batching.DecodeBatcher._prefill
    running_rows = []

    def prefill(self, reply):
        if reply.prompt_ids.shape[0] > 200:  # the long prompt only
            running_rows.append(len(self._active))
            raise RuntimeError("prefill failed")
        return real_prefill(self, reply)

    long_prompt = [{"role": "user", "content": "word " * 300}]
    expected = ["".join(llm.stream(m, max_new_tokens=30)) for m in OTHER_PROMPTS]
    monkeypatch.setattr(batching.DecodeBatcher, "_prefill", prefill)
    # the three short replies join at once (passes 0-2 are their prefills, 3 and 4 batched steps);
    # the long one comes while they decode
    results, errors, rows = stream_at_once(llm, OTHER_PROMPTS + [long_prompt], later={0: [1, 2], 4: [3]})
    assert [str(e) for e in errors] == ["prefill failed"]
    assert running_rows == [3]  # it failed beside a running batch of three
    assert results[:3] == expected
    assert not unfinished_replies(llm)
