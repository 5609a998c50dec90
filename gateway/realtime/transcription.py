"""One user utterance streamed to the ASR stage while it is spoken (asr.stream.* in proto/README.md),
and its transcript back: partial ones as they come, then the final one."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.dispatch import NoWorker
from proto import AsrFinal, AsrPartial, AsrStreamAudio, AsrStreamEnd, AsrStreamStart, StageError

log = logging.getLogger("s2s.gateway.realtime")

FRAME_BYTES = 6400  # 0.2 s of 16 kHz PCM16 per asr.stream.audio: few messages, little delay
RATE_ASR = 16000
TICK_S = 0.25  # how often a wait for the transcript looks at the worker that holds the utterance


class Utterance:
    """Frames go out as they fill; `finish()` waits for the final transcript.

    The ASR work is a turn of its own on the bus (the socket's session, a fresh turn number),
    registered with the gateway so that results and cancels find it. Its first message goes to
    the ready ASR worker with the shortest queue, and every later one to that same worker
    (addressed dispatch, gateway/dispatch.py): a worker keeps the growing utterance.

    The frames sent are kept (up to keep_bytes, the socket's cap on buffered audio), so that if
    the worker holding the utterance goes away (killed, crashed) or hangs while another is ready,
    the whole stream so far (start, every frame, the end if it was sent) goes again, once, to
    another ready worker, as a turn's recovery re-sends what a lost worker held (gateway/recovery.py)."""

    def __init__(self, gateway, turn, on_partial, keep_bytes: int, paced: bool = True):
        self.gateway, self.turn = gateway, turn  # turn: a LiveTurn registered in gateway.live
        self.paced = paced  # ASR decodes it as it grows (False: only at pauses and the end)
        self.on_partial = on_partial  # called with each partial transcript's text
        self.pending = bytearray()
        self.frames = 0
        self.failed: tuple[str, str] | None = None  # (kind, message) once a send failed
        self.started = False
        self.worker: str | None = None  # the ASR worker that holds the utterance
        self.keep_bytes = keep_bytes
        self.sent: list[bytes] | None = []  # the frames sent, for a re-send; None: over keep_bytes
        self.sent_bytes = 0
        self.end: AsrStreamEnd | None = None  # sent once the utterance is over
        self.lost_since: float | None = None  # when its worker was found lost, until it is re-sent
        self.lost_from: set[str] = set()  # the workers that held it and were lost
        self.resent = False

    def _envelope(self, message):
        message.session, message.turn, message.sent = self.turn.conversation.id, self.turn.number, time.monotonic()
        return message

    def _send(self, message, *payload: bytes) -> None:
        if self.failed or self.lost_since is not None:  # lost: what it holds goes with the re-send
            return
        try:
            self.worker = self.gateway.dispatch.send("asr", self._envelope(message), *payload, to=self.worker)
        except NoWorker as exc:
            if self.worker is None:
                self.failed = ("unavailable", f"The ASR stage is not available: {exc}")
            else:  # the worker that holds the utterance cannot take more of it
                self._lose()

    async def begin(self) -> None:
        """Waits, like a turn's first request, for an ASR stage that is loading or restarting."""
        deadline = time.monotonic() + self.gateway.settings.stage_wait_s
        while (not self.gateway.board.is_ready("asr") and time.monotonic() < deadline
               and self.gateway._will_be_ready("asr") and not self.turn.cancelled.is_set()):
            await asyncio.sleep(0.1)
        if not self.gateway.board.is_ready("asr"):
            self.failed = ("unavailable", f"The ASR stage is not available: {self.gateway.board.state('asr')}")
        self.started = True
        self._send(self._start())

    def _start(self) -> AsrStreamStart:
        """The utterance's first message, as first sent and as re-sent."""
        return AsrStreamStart(sample_rate=RATE_ASR, paced=self.paced)

    @property
    def audio_s(self) -> float:
        return (self.frames * FRAME_BYTES + len(self.pending)) / (2 * RATE_ASR)

    def feed(self, pcm16k: bytes, flush: bool = False) -> None:
        self.pending += pcm16k
        while len(self.pending) >= FRAME_BYTES or (flush and self.pending):
            frame = bytes(self.pending[:FRAME_BYTES])
            del self.pending[:FRAME_BYTES]
            self._keep(frame)
            self._send(AsrStreamAudio(index=self.frames), frame)
            self.frames += 1
        self.check_worker()

    def _keep(self, frame: bytes) -> None:
        if self.sent is None:
            return
        self.sent_bytes += len(frame)
        if self.sent_bytes > self.keep_bytes:  # longer than the socket may buffer: not re-sendable
            self.sent = None
        else:
            self.sent.append(frame)

    # --- a lost worker ------------------------------------------------------------------------------

    def _holder_lost(self) -> bool:
        """The worker holding the utterance will not answer: gone, or hung (down, stuck) while
        another ASR worker takes requests (the rule of gateway/recovery.py)."""
        board, worker = self.gateway.board, self.worker
        if worker is None or self.failed or self.lost_since is not None:
            return False
        if board.is_gone(worker):
            return True
        return (board.worker_state("asr", worker) in ("down", "stuck")
                and bool(board.ready_instances("asr") - {worker}))

    def _lose(self) -> None:
        log.info("ASR worker %s lost utterance %s/%s (%d frames sent)", self.worker,
                 self.turn.conversation.id, self.turn.number, self.frames)
        self.lost_from.add(self.worker)
        self.lost_since = time.monotonic()

    def check_worker(self) -> None:
        """Re-send the utterance if the worker holding it was lost and another is ready; fail it
        when it cannot be (lost twice, too long to keep, no worker back within stage_wait_s)."""
        if self._holder_lost():
            self._lose()
        if self.lost_since is None or self.failed:
            return
        if self.resent:
            self.failed = ("unavailable", "The ASR workers holding this utterance went away twice.")
        elif self.sent is None:
            self.failed = ("unavailable", "The ASR worker holding this utterance went away, and it was too "
                                          "long to keep for a re-send.")
        elif self.gateway.board.ready_instances("asr") - self.lost_from:
            self._resend()
        elif time.monotonic() - self.lost_since > self.gateway.settings.stage_wait_s:
            self.failed = ("unavailable", "The ASR worker holding this utterance went away, and no other "
                                          f"was ready within {self.gateway.settings.stage_wait_s:.0f} s.")

    def _resend(self) -> None:
        """Exactly what the lost worker held, to the ready worker with the shortest queue."""
        self.resent, self.lost_since, self.worker = True, None, None
        self.gateway.resent_requests += 1
        self._send(self._start())
        for index, frame in enumerate(self.sent):
            self._send(AsrStreamAudio(index=index), frame)
        if self.end is not None:
            self._send(self.end)
        log.info("utterance %s/%s re-sent to ASR worker %s", self.turn.conversation.id, self.turn.number,
                 self.worker)

    # --- the transcript -----------------------------------------------------------------------------

    async def finish(self, speech_end_s: float = -1.0) -> tuple[str, tuple[str, str, str] | None]:
        """(transcript, None), or ("", (kind, stage, message)) when it could not be had."""
        self.feed(b"", flush=True)
        self.end = AsrStreamEnd(frames=self.frames, speech_end_s=speech_end_s)
        self._send(self.end)
        deadline = time.monotonic() + self.gateway.settings.stage_timeout_s
        while time.monotonic() < deadline:
            self.check_worker()
            if self.failed:
                return "", (*self.failed[:1], "asr", self.failed[1])
            if self.lost_since is not None:  # waiting for a worker to take it over
                deadline = time.monotonic() + self.gateway.settings.stage_timeout_s
            try:
                item = await asyncio.wait_for(self.turn.inbox.get(), TICK_S)
            except asyncio.TimeoutError:
                continue
            if self.turn.cancelled.is_set():
                return "", ("cancelled", "asr", self.turn.cancel_reason)
            if item is None:  # a worker left: check_worker looks whether it held this utterance
                continue
            message, _payload = item
            if isinstance(message, AsrPartial):
                self.on_partial(message.text)
            elif isinstance(message, AsrFinal):
                return message.text.strip(), None
            elif isinstance(message, StageError):
                if message.instance in self.lost_from:  # late word from a worker it was taken from
                    continue
                if message.kind == "shutdown" and message.instance == self.worker:  # an operator's restart
                    self._lose()
                    continue
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
