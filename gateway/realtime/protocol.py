"""The OpenAI Realtime protocol (GA event names), as far as s2s speaks it: client events checked
and read, server events built. Names and fields follow the `openai` SDK's types
(openai/types/realtime/*.py); docs/REALTIME.md says what s2s supports and what it leaves out."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass

SAMPLE_RATE = 24000  # audio/pcm: 24 kHz mono PCM16 little-endian, both ways
PCM_FORMAT = {"type": "audio/pcm", "rate": SAMPLE_RATE}

CLIENT_EVENTS = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "conversation.item.create", "conversation.item.truncate", "conversation.item.delete",
    "conversation.item.retrieve", "response.create", "response.cancel",
})
# Client events of the protocol that s2s does not implement: answered with an error naming them.
NOT_SUPPORTED = frozenset({
    "output_audio_buffer.clear", "transcription_session.update",
})


class ClientError(Exception):
    """A client event s2s cannot act on: becomes one `error` event, the socket stays open."""

    def __init__(self, message: str, code: str = "invalid_request_error", param: str | None = None,
                 event_id: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.code, self.param, self.event_id, self.type = message, code, param, event_id, type_


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def parse_client_event(text: str) -> dict:
    """One client message: a JSON object with a known `type`; raises ClientError otherwise."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise ClientError("The message is not valid JSON.", code="invalid_json") from None
    if not isinstance(event, dict):
        raise ClientError("An event is a JSON object.", code="invalid_event")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    kind = event.get("type")
    if not isinstance(kind, str):
        raise ClientError("The event has no `type`.", code="invalid_event", param="type", event_id=event_id)
    if kind in NOT_SUPPORTED:
        raise ClientError(f"s2s does not support `{kind}` (see docs/REALTIME.md).", code="unsupported_event",
                          param="type", event_id=event_id)
    if kind not in CLIENT_EVENTS:
        raise ClientError(f"Unknown event type `{kind}`.", code="unknown_event", param="type", event_id=event_id)
    return event


def decode_audio(event: dict, max_bytes: int) -> bytes:
    """The PCM16 of an input_audio_buffer.append: strict base64, whole samples, not a file."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise ClientError("`audio` must be a base64 string.", param="audio", event_id=event.get("event_id"))
    if len(audio) > max_bytes * 4 // 3 + 4:
        raise ClientError(f"One append holds at most {max_bytes} bytes of audio.", code="audio_too_large",
                          param="audio", event_id=event.get("event_id"))
    try:
        pcm = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("`audio` is not valid base64.", code="invalid_base64", param="audio",
                          event_id=event.get("event_id")) from None
    if pcm[:4] in (b"RIFF", b"OggS", b"fLaC", b"ID3\x03") or pcm[:4] == b"\x1aE\xdf\xa3":
        raise ClientError("`audio` must be raw audio/pcm (24 kHz mono PCM16), not an audio file.",
                          code="invalid_audio_format", param="audio", event_id=event.get("event_id"))
    if len(pcm) % 2:
        raise ClientError("audio/pcm is 16-bit: an append must hold whole samples (an even number of bytes).",
                          code="invalid_audio_format", param="audio", event_id=event.get("event_id"))
    return pcm


def error_event(exc: ClientError) -> dict:
    return {"type": "error", "error": {"type": exc.type, "code": exc.code, "message": exc.message,
                                       "param": exc.param, "event_id": exc.event_id}}


def audio_ms(pcm_bytes: int, rate: int = SAMPLE_RATE) -> int:
    return int(pcm_bytes * 1000 // (2 * rate))


# --- conversation items ---------------------------------------------------------------------------


@dataclass
class Item:
    """One message of the conversation. The assistant's keeps, per spoken piece, where its audio
    ends (ms into the item's audio) and its text, so a truncation knows what was heard."""

    id: str
    role: str  # user | assistant
    text: str = ""
    audio: bool = False  # spoken (input_audio / output_audio) rather than typed
    status: str = "completed"  # completed | incomplete | in_progress
    pieces: list | None = None  # assistant: [(audio_end_ms, text)]
    transcribed: bool = True  # a user's spoken item: its transcript is known

    def content(self) -> list[dict]:
        if self.role == "user":
            if self.audio:
                return [{"type": "input_audio", "transcript": self.text if self.transcribed else None}]
            return [{"type": "input_text", "text": self.text}]
        return [{"type": "output_audio", "transcript": self.text}]

    def as_dict(self) -> dict:
        return {"id": self.id, "object": "realtime.item", "type": "message", "role": self.role,
                "status": self.status, "content": self.content()}


def user_text_of(item: dict) -> str:
    """The text of a conversation.item.create: a user message of input_text parts."""
    if not isinstance(item, dict) or item.get("type") != "message":
        raise ClientError("s2s takes `message` items only.", code="unsupported_item", param="item.type")
    if item.get("role") != "user":
        raise ClientError("s2s takes user messages only (the assistant's come from its responses).",
                          code="unsupported_item", param="item.role")
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise ClientError("A user message needs `content`.", param="item.content")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "input_text" or not isinstance(part.get("text"), str):
            raise ClientError("s2s takes `input_text` content parts (send audio with input_audio_buffer.append).",
                              code="unsupported_content", param="item.content")
        texts.append(part["text"])
    text = " ".join(t.strip() for t in texts).strip()
    if not text:
        raise ClientError("The message is empty.", param="item.content")
    return text


# --- responses ------------------------------------------------------------------------------------


def response_object(response_id: str, conversation_id: str, status: str, voice: str, output: list[dict],
                    details: dict | None = None) -> dict:
    return {"id": response_id, "object": "realtime.response", "conversation_id": conversation_id,
            "status": status, "status_details": details, "output": output, "output_modalities": ["audio"],
            "audio": {"output": {"format": PCM_FORMAT, "voice": voice}}, "usage": None}


def cancelled(reason: str) -> dict:
    """reason: turn_detected (barge-in) | client_cancelled (response.cancel)."""
    return {"type": "cancelled", "reason": reason}


def failed(kind: str, stage: str | None, message: str) -> dict:
    """The error names the stage that failed (asr, llm, tts) in `code`, or `gateway`."""
    return {"type": "failed", "error": {"type": kind, "code": stage or "gateway", "message": message}}
