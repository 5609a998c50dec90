"""The gateway's turn state machine: events in, actions out, no sockets."""

import base64
import io
import wave

from gateway.turn import Emit, Finish, Send, TurnState
from proto import (AsrFinal, AsrRequest, ChatMessage, LlmDone, LlmRequest, LlmSentence, StageError, TtsAudio,
                   TtsDone, TtsRequest)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def new_turn(history=()):
    return TurnState("conv", 2, "astronaut", "am_adam", list(history), Clock())


def ids(message, turn=2, session="conv"):
    message.session, message.turn = session, turn
    return message


def events(actions):
    return [a.event for a in actions if isinstance(a, Emit)]


def audio(index, part=0, pcm=b"\x01\x00" * 10):
    return ids(TtsAudio(index=index, part=part, text="", sample_rate=24000, compute_s=0.1)), [pcm]


def test_happy_path_in_order():
    turn = new_turn(history=[ChatMessage("user", "hi"), ChatMessage("assistant", "hello")])
    [start] = turn.start(b"\x00\x00")
    assert isinstance(start, Send) and start.stage == "asr" and isinstance(start.message, AsrRequest)
    assert (start.message.session, start.message.turn) == ("conv", 2)

    actions = turn.on_message(ids(AsrFinal(text=" What is up? ", compute_s=0.3, audio_s=1.0)), [])
    assert events(actions) == ["transcript"]
    assert actions[0].data == {"text": "What is up?", "asr_time": 0.3}
    llm = actions[1]
    assert isinstance(llm.message, LlmRequest) and llm.stage == "llm"
    assert [m.content for m in llm.message.history] == ["hi", "hello", "What is up?"]

    [tts0] = turn.on_message(ids(LlmSentence(index=0, text="First one.", elapsed_s=0.1)), [])
    assert isinstance(tts0.message, TtsRequest) and tts0.message.voice == "am_adam" and tts0.message.index == 0
    [tts1] = turn.on_message(ids(LlmSentence(index=1, text="Second one.", elapsed_s=0.2)), [])
    assert tts1.message.index == 1

    chunk = turn.on_message(*audio(0))
    assert events(chunk) == ["chunk"] and chunk[0].data["index"] == 0 and chunk[0].data["text"] == "First one."
    with wave.open(io.BytesIO(base64.b64decode(chunk[0].data["b64"]))) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getsampwidth() == 2
    assert turn.on_message(ids(TtsDone(index=0, parts=1, compute_s=0.1, audio_s=0.5)), []) == []
    done_llm = ids(LlmDone(full_text="First one. Second one.", sentences=2, tokens=9, compute_s=1.0,
                           first_sentence_s=0.1))
    assert turn.on_message(done_llm, []) == []  # sentence 1 not spoken yet
    assert events(turn.on_message(*audio(1))) == ["chunk"]
    final = turn.on_message(ids(TtsDone(index=1, parts=1, compute_s=0.1, audio_s=0.5)), [])
    assert events(final) == ["done"]
    assert final[0].data["full_text"] == "First one. Second one."
    assert (final[0].data["persona"], final[0].data["voice"]) == ("astronaut", "am_adam")  # as TTS was asked
    assert set(final[0].data["timing"]) >= {"asr", "llm", "llm_first_sentence", "tts", "first_audio", "total"}
    assert final[1] == Finish(ok=True, user_text="What is up?", reply_text="First one. Second one.")


def started_turn():
    turn = new_turn()
    turn.start(b"")
    turn.on_message(ids(AsrFinal(text="hi", compute_s=0.1, audio_s=1.0)), [])
    for i in range(3):
        turn.on_message(ids(LlmSentence(index=i, text=f"S{i}.", elapsed_s=0.1)), [])
    return turn


def test_chunks_are_released_in_sentence_order():
    turn = started_turn()
    assert turn.on_message(*audio(2)) == []
    assert turn.on_message(*audio(1)) == []
    assert turn.on_message(ids(TtsDone(index=1, parts=1, compute_s=0, audio_s=0)), []) == []
    released = turn.on_message(*audio(0))
    assert [a.data["index"] for a in released if isinstance(a, Emit)] == [0]
    released = turn.on_message(ids(TtsDone(index=0, parts=1, compute_s=0, audio_s=0)), [])
    assert [a.data["text"] for a in released if isinstance(a, Emit)] == ["S1.", "S2."]
    assert [a.data["index"] for a in released] == [1, 2]


def test_multi_part_sentence_and_duplicates():
    turn = started_turn()
    first = turn.on_message(*audio(0, part=0))
    assert turn.on_message(*audio(0, part=0)) == []  # duplicate part: never a duplicate chunk
    second = turn.on_message(*audio(0, part=1))
    assert [first[0].data["index"], second[0].data["index"]] == [0, 1]
    assert second[0].data["text"] == ""
    assert turn.on_message(ids(LlmSentence(index=1, text="again", elapsed_s=0)), []) == []  # duplicate sentence


def test_empty_sentence_audio_still_completes():
    turn = started_turn()
    for i in range(3):
        turn.on_message(ids(TtsDone(index=i, parts=0, compute_s=0, audio_s=0)), [])
    done = turn.on_message(ids(LlmDone(full_text="x", sentences=3, tokens=3, compute_s=1, first_sentence_s=0.1)), [])
    assert events(done) == ["done"] and done[0].data["chunks"] == 0


def test_empty_transcript_ends_with_error():
    turn = new_turn()
    actions = turn.on_message(ids(AsrFinal(text="  ", compute_s=0.1, audio_s=1.0)), [])
    assert events(actions) == ["transcript", "error"]
    assert actions[-1] == Finish(ok=False)


def test_stage_error_ends_once_and_later_results_are_ignored():
    turn = started_turn()
    actions = turn.on_message(ids(StageError(stage="tts", kind="failed", message="boom")), [])
    assert events(actions) == ["error"]
    assert actions[0].data["stage"] == "tts" and "boom" in actions[0].data["message"]
    assert turn.on_message(*audio(0)) == []
    assert turn.on_timeout() == []


def test_results_of_another_turn_are_dropped():
    turn = started_turn()
    late = TtsAudio(index=0, part=0, text="", sample_rate=24000, compute_s=0.1, session="conv", turn=1)
    assert turn.on_message(late, [b"\x00\x00"]) == []
    other = TtsAudio(index=0, part=0, text="", sample_rate=24000, compute_s=0.1, session="other", turn=2)
    assert turn.on_message(other, [b"\x00\x00"]) == []


def test_timeout_names_the_stage_waited_on():
    turn = new_turn()
    turn.start(b"")
    [error, finish] = turn.on_timeout()
    assert error.data["stage"] == "asr" and finish == Finish(ok=False)
    turn = started_turn()
    assert turn.on_timeout()[0].data["stage"] == "llm"


def test_stage_down():
    turn = started_turn()
    [error, _] = turn.on_stage_down("llm", "down")
    assert "LLM" in error.data["message"]


def test_first_audio_timing_uses_the_clock():
    turn = new_turn()
    turn.start(b"")
    turn.clock.now = 101.5
    turn.on_message(ids(AsrFinal(text="hi", compute_s=0.1, audio_s=1.0)), [])
    turn.on_message(ids(LlmSentence(index=0, text="Yes.", elapsed_s=0.1)), [])
    turn.on_message(*audio(0))
    assert turn.timing["first_audio"] == 1.5
