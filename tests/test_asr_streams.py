"""The ASR stage's streamed utterances (services/asr/streams.py), with a stand-in transcriber that
takes a set time: partials while the audio grows, decodes paced to stay ahead of the speaker, the
final without a new decode when the last one already covered the speech."""

import time

import pytest

from proto import AsrFinal, AsrPartial, AsrStreamAudio, AsrStreamEnd, AsrStreamStart
from services.asr.streams import Streams
from services.runtime.errors import BadRequest

FRAME = b"\x00\x01" * 3200  # 0.2 s at 16 kHz


class Transcriber:
    def __init__(self, seconds: float = 0.0):
        self.seconds, self.calls = seconds, []

    def __call__(self, audio):
        self.calls.append(len(audio) / 16000)
        time.sleep(self.seconds)
        return f"heard {len(audio) / 16000:.1f} s"


class Turn:
    stop = False
    cancelled: set = set()

    def should_stop(self):
        return self.stop

    def is_live(self, session, number):
        return (session, number) not in self.cancelled


def run(streams, message, payload=(), turn=None, number=1):
    message.session, message.turn = "s", number
    return list(streams.handle(message, list(payload), turn or Turn()))


def stream(streams, frames: int, turn=None):
    run(streams, AsrStreamStart(), turn=turn)
    out = []
    for i in range(frames):
        out += run(streams, AsrStreamAudio(index=i), [FRAME], turn)
    return out


def test_partials_as_the_utterance_grows_and_the_final_reuses_the_last_decode():
    transcribe = Transcriber()
    streams = Streams(transcribe)
    partials = [m for m, _ in stream(streams, 10)]  # 2 s
    assert all(isinstance(m, AsrPartial) for m in partials) and len(partials) >= 2
    assert partials[0].audio_s >= 0.8  # not before there is enough to say something
    calls = len(transcribe.calls)
    # speech ended at 1.2 s, the last decode covered more: no decode at the end
    final, _ = run(streams, AsrStreamEnd(frames=10, speech_end_s=1.2))[0]
    assert isinstance(final, AsrFinal) and final.text == partials[-1].text
    assert len(transcribe.calls) == calls and not streams.open


def test_the_end_decodes_only_when_speech_went_past_the_last_decode():
    transcribe = Transcriber()
    streams = Streams(transcribe)
    stream(streams, 3)  # 0.6 s: no partial yet
    assert transcribe.calls == []
    final, _ = run(streams, AsrStreamEnd(frames=3))[0]
    assert final.text == "heard 0.6 s" and transcribe.calls == [0.6]


def test_decodes_are_paced_by_their_own_cost():
    slow = Transcriber(seconds=0.3)  # 1.5 x 0.3 s = 0.45 s < MIN_STEP: the 0.5 s step holds
    streams = Streams(slow)
    stream(streams, 20)  # 4 s
    steps = [b - a for a, b in zip(slow.calls, slow.calls[1:])]
    assert steps and min(steps) >= 0.5 - 1e-9
    slower = Transcriber(seconds=0.6)  # each decode must wait for 0.9 s of new audio
    streams = Streams(slower)
    stream(streams, 20)
    steps = [b - a for a, b in zip(slower.calls, slower.calls[1:])]
    assert steps and min(steps) >= 0.9 - 1e-9


def test_a_lost_frame_a_missing_start_and_a_cancel():
    streams = Streams(Transcriber())
    run(streams, AsrStreamStart())
    with pytest.raises(BadRequest, match="frame 1"):
        run(streams, AsrStreamAudio(index=1), [FRAME])
    assert not streams.open
    with pytest.raises(BadRequest, match="no open utterance"):
        run(streams, AsrStreamAudio(index=0), [FRAME])
    cancelled = Turn()
    stream(streams, 2, cancelled)
    cancelled.stop = True
    assert run(streams, AsrStreamEnd(frames=2), turn=cancelled) == [] and not streams.open


def test_a_new_utterance_forgets_those_of_cancelled_turns():
    streams = Streams(Transcriber())
    stream(streams, 2)  # turn 1, left open: its socket closed, the gateway cancelled it
    turn = Turn()
    turn.cancelled = {("s", 1)}
    run(streams, AsrStreamStart(), turn=turn, number=2)
    assert list(streams.open) == [("s", 2)]


def test_a_pause_after_speech_gets_the_final_ready_before_the_turn_ends():
    transcribe = Transcriber()
    streams = Streams(transcribe)
    loud, quiet = b"\x00\x20" * 3200, bytes(6400)  # 0.2 s of speech (-18 dBFS) / of silence
    run(streams, AsrStreamStart())
    frames = [loud] * 2 + [quiet] * 2  # 0.4 s of speech: the utterance is too short for a paced decode
    out = [m for i, f in enumerate(frames) for m, _ in run(streams, AsrStreamAudio(index=i), [f])]
    assert transcribe.calls == [0.6]  # at the first 0.2 s of silence after the speech
    assert [type(m) for m in out] == [AsrPartial]
    final, _ = run(streams, AsrStreamEnd(frames=4, speech_end_s=0.4))[0]
    assert final.text == out[0].text and transcribe.calls == [0.6]  # nothing left to decode at the end


def test_an_unpaced_stream_decodes_only_at_pauses_and_the_end():
    """Push-to-talk's (`paced` false): no partial while speech goes on, so no decode is under way
    when the button is let go; a pause still gets one ready."""
    transcribe = Transcriber()
    streams = Streams(transcribe)
    loud, quiet = b"\x00\x20" * 3200, bytes(6400)
    run(streams, AsrStreamStart(paced=False))
    frames = [loud] * 10 + [quiet] + [loud] * 5  # 2 s of speech, a 0.2 s pause, 1 s more
    out = [m for i, f in enumerate(frames) for m, _ in run(streams, AsrStreamAudio(index=i), [f])]
    assert transcribe.calls == [2.2] and [m.audio_s for m in out] == [2.2]  # at the pause only
    final, _ = run(streams, AsrStreamEnd(frames=len(frames)))[0]
    assert transcribe.calls == [2.2, 3.2] and final.text == "heard 3.2 s"
