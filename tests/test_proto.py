import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proto
from proto.messages import (PROTOCOL_VERSION, AsrFinal, AsrPartial, AsrRequest, AsrStreamAudio, AsrStreamEnd,
                            AsrStreamStart, ChatMessage, LlmDone, LlmRequest, LlmSentence,
                            ProtocolError, StageBye, StageError, StageHeartbeat, StageHello, StageReady, TtsAudio,
                            TtsDone, TtsRequest, TurnCancel, decode, encode, tag_of)

# `instance` travels as `producer` (its v1 name on the wire): the golden bytes below hold "producer"
ENVELOPE = dict(session="conv-1", turn=3, seq=7, sent=12.5, deadline=99.0, instance="asr-1-abc")

EXAMPLES = [
    (AsrRequest(sample_rate=16000, **ENVELOPE), (b"\x01\x00\x02\x00",)),
    (AsrFinal(text="hello", compute_s=0.3, audio_s=2.0, **ENVELOPE), ()),
    (AsrStreamStart(sample_rate=16000, **ENVELOPE), ()),
    (AsrStreamAudio(index=0, **ENVELOPE), (b"\x01\x00\x02\x00",)),
    (AsrStreamEnd(frames=1, speech_end_s=0.5, **ENVELOPE), ()),
    (AsrPartial(text="hel", audio_s=1.0, compute_s=0.2, **ENVELOPE), ()),
    (LlmRequest(persona="astronaut", history=[ChatMessage("user", "hi")], max_new_tokens=220, **ENVELOPE), ()),
    (LlmSentence(index=0, text="Hi there.", elapsed_s=0.2, **ENVELOPE), ()),
    (LlmDone(full_text="Hi there.", sentences=1, tokens=4, compute_s=0.5, first_sentence_s=0.2, **ENVELOPE), ()),
    (TtsRequest(index=0, text="Hi there.", voice="af_heart", **ENVELOPE), ()),
    (TtsAudio(index=0, part=0, text="Hi there.", sample_rate=24000, compute_s=0.1, **ENVELOPE), (b"\x00\x00",)),
    (TtsDone(index=0, parts=1, compute_s=0.1, audio_s=1.2, **ENVELOPE), ()),
    (TurnCancel(reason="stop", **ENVELOPE), ()),
    (StageHello(stage="asr", backend="openai-whisper", model="base", device="cpu", pid=42, **ENVELOPE), ()),
    (StageReady(stage="asr", backend="openai-whisper", model="base", device="cpu", load_s=1.5, **ENVELOPE), ()),
    (StageHeartbeat(stage="llm", state="busy", busy_ms=120, queue_depth=1, **ENVELOPE), ()),
    (StageError(stage="tts", kind="failed", message="boom", **ENVELOPE), ()),
    (StageBye(stage="tts", reason="exit", **ENVELOPE), ()),
]


@pytest.mark.parametrize("message, payload", EXAMPLES, ids=lambda x: tag_of(x) if hasattr(x, "v") else "")
def test_round_trip(message, payload):
    decoded, frames = decode(encode(message, *payload))
    assert decoded == message
    assert frames == list(payload)


def test_every_tag_is_covered():
    tags = {tag_of(m) for m, _ in EXAMPLES}
    assert tags == {
        "asr.request", "asr.final", "asr.stream.start", "asr.stream.audio", "asr.stream.end", "asr.partial",
        "llm.request", "llm.sentence", "llm.done", "tts.request", "tts.audio",
        "tts.done", "turn.cancel", "stage.hello", "stage.ready", "stage.heartbeat", "stage.error", "stage.bye",
    }


def test_golden_bytes():
    """An accidental wire change fails here: update proto/README.md and PROTOCOL_VERSION first."""
    header, payload = encode(AsrRequest(**ENVELOPE), b"\x01\x00")
    assert header.hex() == (
        "89a3746167ab6173722e72657175657374ab73616d706c655f72617465cd3e80a17601a773657373696f6e"
        "a6636f6e762d31a47475726e03a373657107a473656e74cb4029000000000000a8646561646c696e65cb"
        "4058c00000000000a870726f6475636572a96173722d312d616263"
    )
    assert payload == b"\x01\x00"
    cancel = encode(TurnCancel(session="s", turn=1, reason="stop"))[0]
    assert msgspec.msgpack.decode(cancel) == {
        "tag": "turn.cancel", "reason": "stop", "v": 1, "session": "s", "turn": 1, "seq": 0, "sent": 0.0,
        "deadline": 0.0, "producer": "",
    }
    # the worker names the inbox it bound, where the gateway sends it requests and cancels
    hello = encode(StageHello(stage="tts", backend="b", model="m", device="cpu", pid=7, inbox="ipc:///r/tts-7.in"))[0]
    assert msgspec.msgpack.decode(hello) == {
        "tag": "stage.hello", "stage": "tts", "backend": "b", "model": "m", "device": "cpu", "pid": 7, "source": "",
        "inbox": "ipc:///r/tts-7.in", "v": 1, "session": "", "turn": 0, "seq": 0, "sent": 0.0, "deadline": 0.0,
        "producer": "",
    }


def test_golden_bytes_of_a_streamed_utterance():
    """The streaming ASR messages on the wire (proto/README.md, "Streaming ASR")."""
    header, payload = encode(AsrStreamAudio(index=2, session="c", turn=4), b"\x01\x00")
    assert header.hex() == (
        "89a3746167b06173722e73747265616d2e617564696fa5696e64657802a17601a773657373696f6ea163a47475726e04"
        "a373657100a473656e74cb0000000000000000a8646561646c696e65cb0000000000000000a870726f6475636572a0"
    )
    assert payload == b"\x01\x00"
    assert msgspec.msgpack.decode(encode(AsrStreamEnd(frames=3, speech_end_s=0.5))[0]) == {
        "tag": "asr.stream.end", "frames": 3, "speech_end_s": 0.5, "v": 1, "session": "", "turn": 0, "seq": 0,
        "sent": 0.0, "deadline": 0.0, "producer": ""}


def test_version_is_always_encoded():
    # Even when equal to its default, the version travels (no omit-defaults).
    assert msgspec.msgpack.decode(encode(StageBye(stage="asr"))[0])["v"] == PROTOCOL_VERSION


def test_version_mismatch_rejected():
    raw = msgspec.msgpack.decode(encode(StageBye(stage="asr"))[0])
    raw["v"] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match="protocol version"):
        decode([msgspec.msgpack.encode(raw)])


def test_unknown_fields_are_ignored_for_forward_compatibility():
    raw = msgspec.msgpack.decode(encode(StageBye(stage="asr"))[0])
    raw["added_later"] = [1, 2]
    message, _ = decode([msgspec.msgpack.encode(raw)])
    assert message == StageBye(stage="asr")


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b""],
        [b"\xc1"],  # never-used msgpack byte
        [msgspec.msgpack.encode({"tag": "nope", "v": 1})],
        [msgspec.msgpack.encode({"tag": "asr.final", "v": 1})],  # required fields missing
        [msgspec.msgpack.encode({"tag": "asr.final", "v": 1, "text": 5, "compute_s": 0, "audio_s": 0})],
        [msgspec.msgpack.encode([1, 2, 3])],
        encode(AsrRequest(), b"\x00\x00")[:1],  # payload frame missing
        encode(StageBye(stage="x")) + [b"extra"],  # unexpected payload
        [msgspec.msgpack.encode({"tag": "stage.bye", "v": 1, "stage": msgspec.Raw(b"\xa1\xff")})],  # not UTF-8
        [msgspec.msgpack.encode({"tag": "stage.bye", "v": 1, "stage": "x",
                                 "later": msgspec.Raw(b"\x91" * 5000 + b"\xc0")})],  # nested too deep
    ],
)
def test_malformed_frames_raise_protocol_error(frames):
    with pytest.raises(ProtocolError):
        decode(frames)


def test_encode_checks_payload_count():
    with pytest.raises(ProtocolError):
        encode(AsrRequest())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=3))
def test_random_frames_never_raise_anything_else(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["tag", "v", "session", "turn", "text", "stage", "index"]),
                       st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=8), st.none(), st.floats()), max_size=7))
def test_random_headers_never_raise_anything_else(header):
    try:
        decode([msgspec.msgpack.encode(header)])
    except ProtocolError:
        pass


def test_package_exports():
    assert proto.decode is decode and proto.PROTOCOL_VERSION == PROTOCOL_VERSION


@pytest.mark.parametrize("field, value", [("state", "sleeping"), ("kind", "oops"), ("end_reason", "bored")])
def test_a_value_outside_its_declared_vocabulary_is_malformed(field, value):
    message = {"state": StageHeartbeat(stage="llm", state="ready", busy_ms=0, queue_depth=0),
               "kind": StageError(stage="tts", kind="failed", message="boom"),
               "end_reason": LlmDone(full_text="", sentences=0, tokens=0, compute_s=0.0, first_sentence_s=-1.0,
                                     end_reason="cancel")}[field]
    header = msgspec.msgpack.decode(encode(message)[0])
    assert decode(encode(message))[0] == message  # every declared value passes
    with pytest.raises(ProtocolError, match=field):
        decode([msgspec.msgpack.encode({**header, field: value})])


def test_stage_of_names_the_stage_a_message_is_from():
    assert proto.stage_of(TtsDone(index=0, parts=1, compute_s=0.0, audio_s=0.0)) == "tts"
    assert proto.stage_of(StageHeartbeat(stage="llm", state="busy", busy_ms=5, queue_depth=0)) == "llm"
