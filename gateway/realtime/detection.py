"""Turn detection for realtime sessions: server_vad (Silero VAD) and semantic_vad (Smart Turn),
from gateway/listening. Their models are loaded once per gateway and run on the realtime hub's
threads, never on the event loop."""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("s2s.gateway.realtime")

# A new session listens hands-free, as the protocol's default session does (the detector fills in
# the protocol's defaults: threshold 0.5, prefix padding 300 ms, silence 500 ms)
DEFAULT_TURN_DETECTION = {"type": "server_vad"}


@functools.cache  # thread-safe and read-only once loaded: one copy per process serves every gateway
def load_listening():
    """The VAD and turn models, or None (then sessions are push-to-talk, and say so)."""
    try:
        from gateway.listening import ListeningModels
    except ImportError as exc:
        log.warning("turn detection is not available (%s): realtime sessions are push-to-talk", exc)
        return None
    try:
        return ListeningModels.load(semantic=True)
    except Exception as exc:  # a missing model file: the socket still works, push-to-talk
        log.warning("turn detection models could not be loaded (%s): realtime sessions are push-to-talk", exc)
        return None


def make_detector(models, requested, start_ms: int):
    """(detector, what took effect) for a session's turn_detection ("default": a new session's),
    its positions counted from start_ms (where the session's audio stream is now)."""
    if requested == "default":
        requested = DEFAULT_TURN_DETECTION if models is not None else None
    if requested is None or models is None:
        return None, None
    from gateway.listening import TurnDetector

    try:
        detector = TurnDetector(models, requested, start_ms=start_ms)
    except ValueError as exc:  # checked in session.update; a model this gateway lacks remains
        from gateway.realtime.protocol import ClientError

        raise ClientError(f"{exc}.", param="session.audio.input.turn_detection") from None
    return detector, detector.effective
