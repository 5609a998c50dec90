"""One user utterance streamed to the ASR stage while it is spoken (asr.stream.* in proto/README.md),
and its transcript back: partial ones as they come, then the final one."""

from __future__ import annotations

import asyncio
import time

from gateway.dispatch import NoWorker
from proto import AsrFinal, AsrPartial, AsrStreamAudio, AsrStreamEnd, AsrStreamStart, StageError

FRAME_BYTES = 6400  # 0.2 s of 16 kHz PCM16 per asr.stream.audio: few messages, little delay
RATE_ASR = 16000


class Utterance:
    """Frames go out as they fill; `finish()` waits for the final transcript.

    The ASR work is a turn of its own on the bus (the socket's session, a fresh turn number),
    registered with the gateway so that results and cancels find it. Its first message goes to
    the ready ASR worker with the shortest queue, and every later one to that same worker
    (addressed dispatch, gateway/dispatch.py): a worker keeps the growing utterance."""

    def __init__(self, gateway, turn, on_partial):
        self.gateway, self.turn = gateway, turn  # turn: a LiveTurn registered in gateway.live
        self.on_partial = on_partial  # called with each partial transcript's text
        self.pending = bytearray()
        self.frames = 0
        self.failed: tuple[str, str] | None = None  # (kind, message) once a send failed
        self.started = False
        self.worker: str | None = None  # the ASR worker that holds the utterance

    def _envelope(self, message):
        message.session, message.turn, message.sent = self.turn.conversation.id, self.turn.number, time.monotonic()
        return message

    def _send(self, message, *payload: bytes) -> None:
        if self.failed:
            return
        try:
            self.worker = self.gateway.dispatch.send("asr", self._envelope(message), *payload, to=self.worker)
        except NoWorker as exc:
            self.failed = ("unavailable", f"The ASR stage is not available: {exc}")

    async def begin(self) -> None:
        """Waits, like a turn's first request, for an ASR stage that is loading or restarting."""
        deadline = time.monotonic() + self.gateway.settings.stage_wait_s
        while (not self.gateway.board.is_ready("asr") and time.monotonic() < deadline
               and self.gateway._will_be_ready("asr") and not self.turn.cancelled.is_set()):
            await asyncio.sleep(0.1)
        if not self.gateway.board.is_ready("asr"):
            self.failed = ("unavailable", f"The ASR stage is not available: {self.gateway.board.state('asr')}")
        self.started = True
        self._send(AsrStreamStart(sample_rate=RATE_ASR))

    @property
    def audio_s(self) -> float:
        return (self.frames * FRAME_BYTES + len(self.pending)) / (2 * RATE_ASR)

    def feed(self, pcm16k: bytes, flush: bool = False) -> None:
        self.pending += pcm16k
        while len(self.pending) >= FRAME_BYTES or (flush and self.pending):
            frame = bytes(self.pending[:FRAME_BYTES])
            del self.pending[:FRAME_BYTES]
            self._send(AsrStreamAudio(index=self.frames), frame)
            self.frames += 1

    async def finish(self, speech_end_s: float = -1.0) -> tuple[str, tuple[str, str, str] | None]:
        """(transcript, None), or ("", (kind, stage, message)) when it could not be had."""
        self.feed(b"", flush=True)
        self._send(AsrStreamEnd(frames=self.frames, speech_end_s=speech_end_s))
        if self.failed:
            return "", (*self.failed[:1], "asr", self.failed[1])
        deadline = time.monotonic() + self.gateway.settings.stage_timeout_s
        while time.monotonic() < deadline:
            try:
                item = await asyncio.wait_for(self.turn.inbox.get(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if self.turn.cancelled.is_set():
                return "", ("cancelled", "asr", self.turn.cancel_reason)
            if item is None:  # a worker left: if it was this utterance's, the utterance is lost
                if self.worker is not None and self.gateway.board.is_gone(self.worker):
                    return "", ("unavailable", "asr", "The ASR worker holding this utterance went away.")
                continue
            message, _payload = item
            if isinstance(message, AsrPartial):
                self.on_partial(message.text)
            elif isinstance(message, AsrFinal):
                return message.text.strip(), None
            elif isinstance(message, StageError):
                return "", ("stage_error", message.stage, f"The {message.stage.upper()} stage failed: {message.message}")
        return "", ("timeout", "asr", "The ASR stage did not answer in time.")

    def drain_partials(self) -> None:
        """Partial transcripts that arrived while the person still speaks, passed on now."""
        while not self.turn.inbox.empty():
            item = self.turn.inbox.get_nowait()
            if item is None:
                continue
            if isinstance(item[0], AsrPartial):
                self.on_partial(item[0].text)
            else:  # the final or an error: keep it for finish()
                self.turn.inbox.put_nowait(item)
                return
