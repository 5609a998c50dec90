"""The upload flow's Server-Sent Events (GET /stream/<id>), declared once: their names, their data,
the kinds of `error` and the keys of `done.timing`. proto/README.md (Server-Sent Events) is the
spec. The gateway (gateway/turn.py, gateway/app.py), the original flow, the load tester and the
page (gateway/static/js/contract.js, checked by tests/test_contracts.py) all use these.

A turn's stream: transcript, then chunk* (in order), then done; or error at any point, which ends it.
"""

from __future__ import annotations

from typing import Literal, get_args

SseEvent = Literal["transcript", "chunk", "done", "error"]
SSE_EVENTS: tuple[SseEvent, ...] = get_args(SseEvent)
TRANSCRIPT, CHUNK, DONE, ERROR = SSE_EVENTS

# Why a turn ended without `done`, as `error.kind` says it.
# no_speech: the recording held no words; stage_error: a stage answered stage.error; timeout: the
# stage it waited on went silent; unavailable: no worker of that stage could take the request;
# cancelled: the client cancelled the turn (or a newer one replaced it); shutdown: the gateway is
# stopping.
TurnErrorKind = Literal["no_speech", "stage_error", "timeout", "unavailable", "cancelled", "shutdown"]
TURN_ERROR_KINDS: tuple[TurnErrorKind, ...] = get_args(TurnErrorKind)

# done.timing: seconds. Each stage key names the stage it measures and what (the gateway's
# s2s_gateway_stage_latency_seconds labels); first_audio and total are the turn's own.
StageTiming = Literal["asr", "llm", "llm_first_sentence", "tts", "tts_first_chunk"]
STAGE_TIMINGS: dict[StageTiming, tuple[str, str]] = {
    "asr": ("asr", "total"),
    "llm": ("llm", "total"),
    "llm_first_sentence": ("llm", "first_sentence"),
    "tts": ("tts", "total"),
    "tts_first_chunk": ("tts", "first_chunk"),
}
TurnTiming = Literal["first_audio", "total"]
TURN_TIMINGS: tuple[TurnTiming, ...] = get_args(TurnTiming)

Event = tuple[SseEvent, dict]


def transcript(text: str, asr_time: float) -> Event:
    return TRANSCRIPT, {"text": text, "asr_time": asr_time}


def chunk(index: int, text: str, **audio) -> Event:
    """audio: b64 (a WAV file, base64: what the SSE stream sends), or pcm and sample_rate (the
    realtime socket's own chunks, never sent as SSE)."""
    return CHUNK, {"index": index, "text": text, **audio}


def done(full_text: str, chunks: int, timing: dict[str, float], persona: str, voice: str,
         end_reason: str) -> Event:
    return DONE, {"full_text": full_text, "chunks": chunks, "timing": timing, "persona": persona, "voice": voice,
                  "end_reason": end_reason}


def error(message: str, kind: TurnErrorKind, stage: str | None = None) -> Event:
    data: dict = {"message": message, "kind": kind}
    if stage:
        data["stage"] = stage
    return ERROR, data
