"""The wire contract: one msgpack header frame, then raw PCM payload frames.

proto/README.md is the spec; tests/test_proto.py pins the bytes.
"""

from __future__ import annotations

import msgspec

from proto.states import EndReason, ErrorKind, WorkerState

PROTOCOL_VERSION = 1
# The longest reply in tokens, unless a request or the LLM stage (S2S_LLM_MAX_NEW_TOKENS) says less.
MAX_NEW_TOKENS = 220

# How many raw payload frames follow the header, per tag. Anything else is malformed.
_PAYLOAD_FRAMES = {"asr.request": 1, "asr.stream.audio": 1, "tts.audio": 1}


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol version."""


class Envelope(msgspec.Struct, kw_only=True, tag_field="tag", forbid_unknown_fields=False):
    """Fields every header carries. Unknown extra fields are ignored (forward compatibility)."""

    v: int = PROTOCOL_VERSION
    session: str = ""  # conversation id; "" for stage-level messages
    turn: int = 0  # turn number within the session, strictly increasing
    seq: int = 0  # per-sender sequence number
    sent: float = 0.0  # sender's time.monotonic() (host-local clock)
    deadline: float = 0.0  # monotonic time after which the work is stale; 0 = none
    # The sending process's instance id (a worker: "asr-1234-9f0c1a"; the gateway: ""). Called
    # `producer` on the wire, its name since protocol v1; `instance` in code, as everywhere else.
    instance: str = msgspec.field(default="", name="producer")


class ChatMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: str


# --- requests and results, in turn order ---------------------------------------------------


class AsrRequest(Envelope, tag="asr.request"):
    """Payload: one frame of 16-bit little-endian mono PCM."""

    sample_rate: int = 16000


class AsrFinal(Envelope, tag="asr.final"):
    text: str
    compute_s: float
    audio_s: float


# --- streaming ASR (the realtime socket): one utterance as it is spoken ------------------------
# asr.stream.start, asr.stream.audio*, asr.stream.end share the session and turn; every one of
# them must reach the same worker. Results: asr.partial* then one asr.final.


class AsrStreamStart(Envelope, tag="asr.stream.start"):
    sample_rate: int = 16000
    # decode at a pace as it grows, for partial transcripts; False: only at pauses and the end
    # (push-to-talk: nothing shows partials before the commit, and a decode under way at the
    # release would delay the final one)
    paced: bool = True


class AsrStreamAudio(Envelope, tag="asr.stream.audio"):
    """Payload: the next frame of 16-bit little-endian mono PCM of the utterance."""

    index: int  # 0, 1, ... within the utterance; a gap means a frame was lost


class AsrStreamEnd(Envelope, tag="asr.stream.end"):
    frames: int  # how many audio frames were sent
    speech_end_s: float = -1.0  # where speech ended in the utterance (the VAD's), -1 = unknown


class AsrPartial(Envelope, tag="asr.partial"):
    text: str  # the transcript of the utterance so far (may still change)
    audio_s: float  # how much of the utterance it covers
    compute_s: float


class LlmRequest(Envelope, tag="llm.request"):
    persona: str
    history: list[ChatMessage]  # bounded history, the new user message last
    max_new_tokens: int = MAX_NEW_TOKENS
    instructions: str = ""  # replaces the persona's prompt when set (the realtime session's)


class LlmSentence(Envelope, tag="llm.sentence"):
    index: int
    text: str
    elapsed_s: float  # since the request started on the worker


class LlmDone(Envelope, tag="llm.done"):
    full_text: str
    sentences: int
    tokens: int
    compute_s: float
    first_sentence_s: float  # -1 when no sentence was produced
    end_reason: EndReason = ""  # why the reply ended ("" from a stage that predates the field)


class TtsRequest(Envelope, tag="tts.request"):
    index: int  # sentence index within the turn
    text: str
    voice: str
    speed: float = 1.0


class TtsAudio(Envelope, tag="tts.audio"):
    """Payload: one frame of 16-bit little-endian mono PCM at sample_rate."""

    index: int
    part: int  # a long sentence may be synthesized in several parts
    text: str
    sample_rate: int
    compute_s: float


class TtsDone(Envelope, tag="tts.done"):
    index: int
    parts: int
    compute_s: float
    audio_s: float


class TurnCancel(Envelope, tag="turn.cancel"):
    reason: str = ""


# --- stage lifecycle --------------------------------------------------------------------------


class StageHello(Envelope, tag="stage.hello"):
    stage: str
    backend: str
    model: str
    device: str
    pid: int
    source: str = ""  # local | hub-cache | hub | registry; "" while not yet resolved
    inbox: str = ""  # the endpoint this worker bound for its requests; the gateway connects to it


class StageReady(Envelope, tag="stage.ready"):
    """What was really loaded (the hello said what was asked for)."""

    stage: str
    backend: str
    model: str
    device: str
    load_s: float
    source: str = ""
    reason: str = ""  # why this model and source were chosen


class StageHeartbeat(Envelope, tag="stage.heartbeat"):
    stage: str
    state: WorkerState
    busy_ms: int  # how long the current item has run, 0 when idle
    queue_depth: int
    dropped_frames: int = 0
    # What the stage runs, so a gateway that (re)started after the hello still knows.
    backend: str = ""
    model: str = ""
    device: str = ""
    source: str = ""
    inbox: str = ""  # as in the hello, so a gateway that (re)started later reaches the worker too


class StageError(Envelope, tag="stage.error"):
    """A failed request (session and turn set) or a stage-level failure (session empty)."""

    stage: str
    kind: ErrorKind
    message: str


class StageBye(Envelope, tag="stage.bye"):
    stage: str
    reason: str = ""


Message = (
    AsrRequest | AsrFinal | AsrStreamStart | AsrStreamAudio | AsrStreamEnd | AsrPartial | LlmRequest | LlmSentence | LlmDone | TtsRequest | TtsAudio | TtsDone
    | TurnCancel | StageHello | StageReady | StageHeartbeat | StageError | StageBye
)

# The stage lifecycle messages: each names its stage.
STAGE_MESSAGES = (StageHello, StageReady, StageHeartbeat, StageError, StageBye)

# What the ASR stage takes: a whole recording, or an utterance streamed as it is spoken.
ASR_REQUESTS = (AsrRequest, AsrStreamStart, AsrStreamAudio, AsrStreamEnd)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Envelope, *payload: bytes) -> list[bytes]:
    """Frames for one message: the header, then the payload frames the tag requires."""
    tag = message.__struct_config__.tag
    if len(payload) != _PAYLOAD_FRAMES.get(tag, 0):
        raise ProtocolError(f"{tag} takes {_PAYLOAD_FRAMES.get(tag, 0)} payload frame(s), got {len(payload)}")
    return [_encoder.encode(message), *payload]


def decode(frames: list[bytes]) -> tuple[Envelope, list[bytes]]:
    """Typed, validating decode. Raises ProtocolError for anything malformed or unknown."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        message = _decoder.decode(frames[0])
    # msgspec reports a string that is not UTF-8 (UnicodeDecodeError) and nesting deeper than the
    # recursion limit (RecursionError) with builtin exceptions, not as a DecodeError.
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"bad header: {exc}") from None
    if message.v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {message.v}, expected {PROTOCOL_VERSION}")
    payload = list(frames[1:])
    tag = message.__struct_config__.tag
    if len(payload) != _PAYLOAD_FRAMES.get(tag, 0):
        raise ProtocolError(f"{tag} with {len(payload)} payload frame(s)")
    return message, payload


def tag_of(message: Envelope) -> str:
    return message.__struct_config__.tag


def stage_of(message: Envelope) -> str:
    """The stage a message is from or for: named in lifecycle messages, else its tag's prefix
    (tts.audio -> tts)."""
    return message.stage if isinstance(message, STAGE_MESSAGES) else tag_of(message).split(".", 1)[0]
