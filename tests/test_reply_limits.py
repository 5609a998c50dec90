"""Issue 18: the LLM stage keeps the spoken rule whatever the model does. A reply ends after
S2S_LLM_MAX_SENTENCES sentences and at the first repeated sentence, nothing past the cut is
generated or spoken, and every layer says why the reply ended."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest

from gateway.turn import Emit, TurnState
from proto import AsrFinal, ChatMessage, LlmDone, LlmRequest, LlmSentence, TtsAudio, TtsDone, decode, encode
from services.llm.chunker import iter_chunks
from services.llm.limits import (REPETITION, SENTENCE_LIMIT, ReplyRules, is_near_copy, repeated_sentences,
                                 split_sentences)
from services.llm.stage import LlmStage
from tools.loadtest.client import TurnResult
from tools.loadtest.report import summarize
from tools.loadtest.runner import RunResult
from services.runtime.settings import StageSettings
from services.runtime.stage import InProcessStopCheck
from tests.fakes.openai_server import Answer, FakeOpenAI, stream_of

# The registry model's reply of issue 18, in the word pieces a streamer hands out.
LOOP = ("The largest animal that has ever lived is the Blue Whale. They can grow to 30 meters long. "
        + "They're found in every ocean. " * 30).split(" ")
LOOP_PIECES = [w + " " for w in LOOP if w]
KEPT = ["The largest animal that has ever lived is the Blue Whale.", "They can grow to 30 meters long.",
        "They're found in every ocean."]
REQUEST = LlmRequest(session="s", turn=1, persona="wildlife_expert", history=[ChatMessage("user", "Whales?")])


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    """Poll for a state another thread reaches, with a generous bound (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def spoken(chunks) -> list[str]:
    return split_sentences(" ".join(chunks))


# --- the rules on a token stream ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "sentences"])
def test_the_chunker_with_the_rules_ends_a_looping_stream_at_the_first_repeat(mode):
    pulled = []

    def pieces():
        for piece in LOOP_PIECES:
            pulled.append(piece)
            yield piece

    rules = ReplyRules(max_sentences=4)
    chunks = list(iter_chunks(rules.filter(pieces()), mode))
    assert spoken(chunks) == KEPT and rules.end_reason == REPETITION
    # reading stopped at the piece that completed the first repeat ("ocean. " of the 2nd copy)
    assert "".join(pulled).split() == " ".join(KEPT + ["They're found in every ocean."]).split()


def test_a_near_copy_ends_the_reply_and_different_sentences_do_not():
    text = ("Blue whales live in every ocean of the world. They eat tiny krill every day. "
            "Blue whales live in every ocean of the planet. They sing.")
    rules = ReplyRules(max_sentences=10)
    kept = "".join(rules.filter([text[i:i + 3] for i in range(0, len(text), 3)]))
    assert split_sentences(kept) == ["Blue whales live in every ocean of the world.", "They eat tiny krill every day."]
    assert rules.end_reason == REPETITION
    assert not is_near_copy("they eat krill".split(), "they eat fish".split())  # short: one word is a lot
    assert repeated_sentences("1. Whales are big.\n2. Whales are big.\n3. Seals are small.") == 1


def test_the_sentence_limit_cuts_after_the_last_allowed_sentence():
    text = ("Dr. Chen measured 3.14 meters. It is big! Is it the biggest? Yes, it is. "
            "This fifth sentence is never spoken. Nor this one.")
    rules = ReplyRules(max_sentences=4)
    kept = "".join(rules.filter(text.split(" ")[i] + " " for i in range(len(text.split(" ")))))
    assert split_sentences(kept) == ["Dr. Chen measured 3.14 meters.", "It is big!", "Is it the biggest?",
                                     "Yes, it is."]
    assert rules.end_reason == SENTENCE_LIMIT


def test_an_unterminated_last_sentence_that_repeats_is_dropped_and_a_new_one_kept():
    rules = ReplyRules()
    assert "".join(rules.filter(["Whales sing songs. ", "Whales sing songs"])) == "Whales sing songs. "
    assert rules.end_reason == REPETITION
    rules = ReplyRules()
    assert "".join(rules.filter(["Whales sing songs. ", "Seals bark"])) == "Whales sing songs. Seals bark"
    assert rules.end_reason is None


# --- the stage, on a scripted backend -------------------------------------------------------


class ScriptedBackend:
    """Yields its pieces and counts them; `until` is honoured as the real backends do."""

    name = "scripted"
    device = "cpu"

    def __init__(self, pieces, finish="eos"):
        self.pieces, self.finish, self.produced, self.closed = pieces, finish, 0, False

    def stream(self, messages, max_new_tokens=220, should_stop=lambda: False, until=lambda piece: False):
        try:
            for piece in self.pieces:
                if should_stop():
                    return "stopped"
                self.produced += 1
                last = until(piece)
                yield piece
                if last:
                    return "stopped"
            return self.finish
        finally:
            self.closed = True


def scripted_stage(backend, **settings) -> LlmStage:
    stage = LlmStage(StageSettings("llm", {f"S2S_LLM_{k}": v for k, v in settings.items()}))
    stage.backend = backend
    return stage


def test_the_stage_ends_a_looping_reply_at_the_first_repeat_and_says_why(caplog):
    backend = ScriptedBackend(LOOP_PIECES)
    with caplog.at_level("INFO", logger="s2s.llm"):
        out = [m for m, _ in scripted_stage(backend).handle(REQUEST, [], InProcessStopCheck())]
    sentences = [m.text for m in out if isinstance(m, LlmSentence)]
    assert spoken(sentences) == KEPT
    done = out[-1]
    assert isinstance(done, LlmDone) and done.end_reason == REPETITION
    # the stream was asked for nothing after the piece that completed the repeat
    assert backend.produced == len(" ".join(KEPT + ["They're found in every ocean."]).split()) and backend.closed
    assert any(getattr(r, "end_reason", None) == REPETITION for r in caplog.records)


@pytest.mark.parametrize("finish, reason", [("eos", "end_of_text"), ("length", "token_cap")])
def test_the_stage_reports_end_of_text_and_the_token_cap(finish, reason):
    out = [m for m, _ in scripted_stage(ScriptedBackend(["Hello ", "there, ", "friend. "], finish))
           .handle(REQUEST, [], InProcessStopCheck())]
    assert out[-1].end_reason == reason


def test_a_cancelled_reply_says_cancel():
    stop = []
    backend = ScriptedBackend(["One ", "two ", "three, ", "four ", "five."])
    outputs = scripted_stage(backend).handle(REQUEST, [], InProcessStopCheck(lambda: bool(stop)))
    for message, _ in outputs:
        if isinstance(message, LlmSentence):
            stop.append(1)
        if isinstance(message, LlmDone):
            assert message.end_reason == "cancel"
    assert backend.produced == 3


def test_max_sentences_must_be_at_least_one():
    from services.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="S2S_LLM_MAX_SENTENCES"):
        LlmStage(StageSettings("llm", {"S2S_LLM_MAX_SENTENCES": "0"}))


# --- the sentence limit cancels generation: no token after the cut (the real batcher) ---------


def test_the_sentence_limit_stops_the_decode_batch_at_the_cut(tiny_qwen2, monkeypatch):
    """By construction: the tokens the tiny model computes under the limit are exactly the tokens
    of the unlimited reply up to the one that reveals the cut, and no decode step runs after it."""
    import torch

    from services.llm.batching import PieceStreamer

    made: list[int] = []  # every token the decode batch hands to a reply
    put = PieceStreamer.put
    monkeypatch.setattr(PieceStreamer, "put", lambda self, value: (made.append(int(value[0])), put(self, value)))
    # The reader lags as far as it can: it reads nothing until the decode batch has ended the
    # reply. So the cut cannot come from the reader closing the stream; only from the rules
    # themselves, applied where the tokens are made.
    end, after_end = PieceStreamer.end, PieceStreamer.__next__
    monkeypatch.setattr(PieceStreamer, "end", lambda self: (end(self), setattr(self, "ended", True)))
    monkeypatch.setattr(PieceStreamer, "__next__", lambda self: (
        wait_for(lambda: getattr(self, "ended", False)), after_end(self))[1])
    # the tiny model loops without a full stop under plain greedy decoding; with no 2-gram twice it
    # writes sentences (the setting reaches the decode batch through the model's plan)
    stage = LlmStage(StageSettings("llm", {"S2S_LLM_MODEL": str(tiny_qwen2), "S2S_LLM_DEVICE": "cpu",
                                           "S2S_LLM_MAX_SENTENCES": "2", "S2S_LLM_NO_REPEAT_NGRAM_SIZE": "2"}))
    stage.load()
    messages = stage.prompt(REQUEST)
    made.clear()
    reference = "".join(stage.backend.stream(messages, max_new_tokens=220))  # no rules: the whole reply
    full = list(made)
    assert len(full) == 220 and len(split_sentences(reference)) > 3, reference  # more to cut than kept

    # where the cut is: fed token by token, the streamer's pieces end the reply with token `needed`
    guard, cut = ReplyRules(max_sentences=2), threading.Event()
    offline = PieceStreamer(stage.backend.tokenizer, until=guard.ends_with, cut=cut)
    needed = 0
    while not cut.is_set():
        put(offline, torch.tensor([full[needed]]))
        needed += 1

    batcher = stage.backend._batcher()
    steps = batcher.steps
    made.clear()
    out = [m for m, _ in stage.handle(REQUEST, [], InProcessStopCheck())]
    assert out[-1].end_reason == SENTENCE_LIMIT
    assert made == full[:needed]  # the same greedy tokens, up to the cut and not one more
    assert batcher.steps - steps == needed - 1  # the prefill made the first; one step for each other
    assert wait_for(lambda: batcher.unfinished() == 0) and not batcher._active  # the row left the batch
    assert spoken(m.text for m in out if isinstance(m, LlmSentence)) == split_sentences(reference)[:2]


# --- openai-compatible: the stream is closed at the cut ---------------------------------------


def test_the_openai_compatible_stage_hangs_up_at_the_first_repeat():
    fake = FakeOpenAI()
    try:
        fake.answers["/v1/chat/completions"] = Answer(events=stream_of(LOOP_PIECES), delay_s=0.002)
        stage = LlmStage(StageSettings("llm", {"S2S_LLM_BACKEND": "openai-compatible",
                                               "S2S_LLM_BASE_URL": fake.url, "S2S_LLM_MODEL": "fake-model"}))
        stage.load()
        out = [m for m, _ in stage.handle(REQUEST, [], InProcessStopCheck())]
        assert spoken(m.text for m in out if isinstance(m, LlmSentence)) == KEPT
        assert out[-1].end_reason == REPETITION
        assert wait_for(lambda: fake.hangups)
        (written, _), = fake.hangups
        assert written < len(LOOP_PIECES)  # the server saw the client leave mid-stream
    finally:
        fake.close()


# --- the wire, the gateway's done event, the load tester --------------------------------------


def test_llm_done_carries_the_end_reason_and_an_older_stage_still_decodes():
    done = LlmDone(full_text="Hi.", sentences=1, tokens=2, compute_s=0.1, first_sentence_s=0.1,
                   end_reason=SENTENCE_LIMIT, session="s", turn=1)
    assert decode(encode(done))[0] == done
    raw = msgspec.msgpack.decode(encode(done)[0])
    assert raw["end_reason"] == SENTENCE_LIMIT
    del raw["end_reason"]  # what a stage before this field sends
    assert decode([msgspec.msgpack.encode(raw)])[0].end_reason == ""


def test_the_done_event_passes_the_end_reason_on():
    turn = TurnState("s", 1, "wildlife_expert", "af_heart", [], clock=time.monotonic)
    turn.start(b"\x00\x00")
    turn.on_message(AsrFinal(session="s", turn=1, text="Whales?", compute_s=0.1, audio_s=1.0), [])
    turn.on_message(LlmSentence(session="s", turn=1, index=0, text="Whales sing.", elapsed_s=0.1), [])
    turn.on_message(TtsAudio(session="s", turn=1, index=0, part=0, text="Whales sing.", sample_rate=24000,
                             compute_s=0.1), [b"\x00\x00"])
    turn.on_message(TtsDone(session="s", turn=1, index=0, parts=1, compute_s=0.1, audio_s=0.1), [])
    actions = turn.on_message(LlmDone(session="s", turn=1, full_text="Whales sing.", sentences=1, tokens=3,
                                      compute_s=0.2, first_sentence_s=0.1, end_reason=REPETITION), [])
    done = next(a for a in actions if isinstance(a, Emit) and a.event == "done")
    assert done.data["end_reason"] == REPETITION


def test_the_load_tester_counts_end_reasons_and_repeats():
    def turn(reply, reason):
        return TurnResult(ok=True, reply=reply, end_reason=reason, sentences=len(split_sentences(reply)),
                          repeated_sentences=repeated_sentences(reply))

    turns = [turn("A b c. D e f.", "end_of_text"), turn("A b c. A b c.", ""),
             turn("One. Two. Three. Four.", SENTENCE_LIMIT), TurnResult(ok=False, error_kind="timeout")]
    summary = summarize(RunResult("concurrency", 1, turns, 10.0, 4))
    assert summary["end_reasons"] == {"end_of_text": 1, "unknown": 1, SENTENCE_LIMIT: 1}
    assert summary["replies_with_a_repeat"] == 1 and summary["repeat_share"] == round(1 / 3, 6)
    assert summary["sentences"]["p50"] == 2


# --- decoding that resists loops, per model ---------------------------------------------------


def test_the_registry_smollm2_plan_carries_its_decoding_and_other_models_keep_their_own(tmp_path, monkeypatch):
    from services.models import resolve

    monkeypatch.setattr(resolve.Resolver, "registry", lambda self, artifact: tmp_path / artifact)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = resolve.plan_llm(StageSettings("llm", {"S2S_LLM_MODEL": "nobody/not-cached"}))
    assert registry.source == "registry"
    assert {k: registry.options[k] for k in resolve.SMOLLM2_DECODING} == resolve.SMOLLM2_DECODING
    local = resolve.plan_llm(StageSettings("llm", {"S2S_LLM_MODEL": str(tmp_path)}))  # e.g. Qwen2.5 on disk
    assert local.source == "local" and not {"repetition_penalty", "no_repeat_ngram_size"} & set(local.options)
    chosen = resolve.plan_llm(StageSettings("llm", {"S2S_LLM_MODEL": "nobody/not-cached",
                                                    "S2S_LLM_REPETITION_PENALTY": "1.0",
                                                    "S2S_LLM_NO_REPEAT_NGRAM_SIZE": "0"}))
    assert (chosen.options["repetition_penalty"], chosen.options["no_repeat_ngram_size"]) == (1.0, 0)
    from services.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="S2S_LLM_NO_REPEAT_NGRAM_SIZE"):
        resolve.plan_llm(StageSettings("llm", {"S2S_LLM_MODEL": str(tmp_path), "S2S_LLM_NO_REPEAT_NGRAM_SIZE": "-1"}))


def test_no_repeat_ngram_bans_the_token_that_would_repeat_an_ngram():
    from services.llm.batching import DecodeBatcher

    batcher = DecodeBatcher(model=None, eos_token_ids=set(), no_repeat_ngram_size=3)
    assert batcher._banned([5, 6, 7, 5, 6]) == [7]  # "5 6 7" was said: after "5 6", 7 may not follow
    assert batcher._banned([5, 6, 7, 8]) == []
    assert DecodeBatcher(model=None, eos_token_ids=set())._banned([5, 6, 5, 6]) == []  # off by default


# --- the registry model, on the question of issue 18 ------------------------------------------

LOOPING_QUESTION = "What is the largest animal that has ever lived?"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_registry_model_no_longer_loops_on_the_question_of_the_issue(registry_model, monkeypatch):
    """SmolLM2-135M-Instruct (registry weights), greedy as before this change, says one sentence
    again and again to this question; through the stage, on its plan, no sentence comes twice."""
    from services.llm.backends import TransformersBackend
    from services.models.resolve import SMOLLM2_GGUF

    path = registry_model("smollm2-135m-instruct")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    request = LlmRequest(session="s", turn=1, persona="wildlife_expert", history=[ChatMessage("user", LOOPING_QUESTION)])
    stage = LlmStage(StageSettings("llm", {"S2S_LLM_SOURCE": "registry", "S2S_LLM_DEVICE": "cpu"}))
    stage.load()

    before = TransformersBackend(model=str(path), gguf_file=SMOLLM2_GGUF, device="cpu", repetition_penalty=1.0,
                                 no_repeat_ngram_size=0)  # the decoding before this change: plain greedy
    before.load()
    looped = "".join(before.stream(stage.prompt(request), max_new_tokens=220))
    assert repeated_sentences(looped) >= 3, looped  # it loops today

    out = [m for m, _ in stage.handle(request, [], InProcessStopCheck())]
    reply = " ".join(m.text for m in out if isinstance(m, LlmSentence))
    assert "whale" in reply.lower(), reply
    assert repeated_sentences(reply) == 0 and len(split_sentences(reply)) <= 4, reply
    assert out[-1].end_reason in ("end_of_text", SENTENCE_LIMIT), out[-1]
