"""The Realtime session's `turn_detection` object: checked, defaults filled in, as the protocol
names it, plus the numbers the detector runs on.

    {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
     "create_response": true, "interrupt_response": true, "idle_timeout_ms": null}
    {"type": "semantic_vad", "eagerness": "auto", "create_response": true, "interrupt_response": true}

A field given as null takes its default. `idle_timeout_ms` is accepted but not honoured: it is
always null in the object that took effect. `create_response` and `interrupt_response` are the
gateway's to act on; they are only checked here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SERVER_VAD = "server_vad"
SEMANTIC_VAD = "semantic_vad"

SERVER_VAD_DEFAULTS = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
MAX_MS = 10_000  # the largest prefix padding or silence duration taken (longer is a mistake)

# semantic_vad: how long a pause must be before Smart Turn is asked whether the turn is complete
PAUSE_MS = 200
# ... and, when it says "not yet", how much silence ends the turn anyway (OpenAI's documented
# maximum waits for the three levels; "auto" is "medium")
EAGERNESS_WAIT_MS = {"high": 2000, "medium": 4000, "auto": 4000, "low": 8000}
SEMANTIC_THRESHOLD = 0.5  # speech probability the VAD under semantic_vad runs with
SEMANTIC_PREFIX_PADDING_MS = 300
TURN_COMPLETE_PROBABILITY = 0.5  # Smart Turn's output above this: the turn is complete

_COMMON = ("type", "create_response", "interrupt_response")
_KEYS = {
    SERVER_VAD: (*_COMMON, "threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"),
    SEMANTIC_VAD: (*_COMMON, "eagerness"),
}


@dataclass(frozen=True)
class TurnConfig:
    """What the detector runs on, and `effective`: the protocol object that took effect."""

    semantic: bool
    threshold: float  # speech probability a frame needs to count as speech
    prefix_padding_ms: int  # audio kept before the detected start of speech
    silence_duration_ms: int  # server_vad: silence that ends the turn
    turn_wait_ms: int  # semantic_vad: silence that ends a turn Smart Turn thinks unfinished
    effective: dict


def _number(field: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"turn_detection.{field} must be a number from {low:g} to {high:g}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"turn_detection.{field} must be from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _ms(field: str, value, high: int = MAX_MS) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"turn_detection.{field} must be a whole number of milliseconds, got {value!r}")
    if not 0 <= value <= high:
        raise ValueError(f"turn_detection.{field} must be from 0 to {high} ms, got {value}")
    return value


def _flag(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"turn_detection.{field} must be true or false, got {value!r}")
    return value


def parse_turn_detection(turn_detection) -> TurnConfig:
    """Check a `turn_detection` object; ValueError naming the field and the allowed values."""
    if turn_detection is None:
        raise ValueError("turn_detection is null: the client commits the audio itself, no detector runs")
    if not isinstance(turn_detection, dict):
        raise ValueError(f"turn_detection must be an object or null, got {type(turn_detection).__name__}")
    kind = turn_detection.get("type")
    if kind not in _KEYS:
        raise ValueError(f"turn_detection.type must be {SERVER_VAD!r} or {SEMANTIC_VAD!r}, got {kind!r}")
    unknown = sorted(set(turn_detection) - set(_KEYS[kind]))
    if unknown:
        raise ValueError(f"turn_detection ({kind}) has no field {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(_KEYS[kind])}")
    given = {key: value for key, value in turn_detection.items() if value is not None}
    common = {
        "create_response": _flag("create_response", given.get("create_response", True)),
        "interrupt_response": _flag("interrupt_response", given.get("interrupt_response", True)),
    }
    if kind == SEMANTIC_VAD:
        eagerness = given.get("eagerness", "auto")
        if eagerness not in EAGERNESS_WAIT_MS:
            raise ValueError(f"turn_detection.eagerness must be one of {', '.join(EAGERNESS_WAIT_MS)}, "
                             f"got {eagerness!r}")
        return TurnConfig(True, SEMANTIC_THRESHOLD, SEMANTIC_PREFIX_PADDING_MS, 0, EAGERNESS_WAIT_MS[eagerness],
                          {"type": SEMANTIC_VAD, "eagerness": eagerness, **common})
    threshold = _number("threshold", given.get("threshold", SERVER_VAD_DEFAULTS["threshold"]), 0.0, 1.0)
    prefix = _ms("prefix_padding_ms", given.get("prefix_padding_ms", SERVER_VAD_DEFAULTS["prefix_padding_ms"]))
    silence = _ms("silence_duration_ms", given.get("silence_duration_ms", SERVER_VAD_DEFAULTS["silence_duration_ms"]))
    if "idle_timeout_ms" in given:
        _ms("idle_timeout_ms", given["idle_timeout_ms"], 3_600_000)  # checked, but not honoured (null below)
    return TurnConfig(False, threshold, prefix, silence, 0, {
        "type": SERVER_VAD, "threshold": threshold, "prefix_padding_ms": prefix, "silence_duration_ms": silence,
        **common, "idle_timeout_ms": None})
