"""Addressed dispatch: every request goes to one worker's inbox, and the gateway records which
worker holds it.

    worker = dispatch.send("tts", request)               # the ready worker with the shortest queue
    dispatch.send("asr", frame, pcm, to=worker)          # that worker, or NoWorker if it is gone
    dispatch.holder("tts", request)                      # who holds it: an instance id, or None
    dispatch.finished("tts", result)                     # its final result came: nobody holds it now
    dispatch.cancel(session, turn, "stream closed")      # a turn.cancel to each worker that holds a part
    dispatch.end_turn(session, turn)                     # forget the turn's holders

A turn's recovery (gateway/recovery.py) reads the holders to re-send exactly what a lost worker
held; docs/SCALING.md describes the policy.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Protocol

from gateway.bus import WorkerUnavailable
from gateway.stages import StageBoard
from proto import AsrFinal, Envelope, LlmDone, TtsDone, TurnCancel

RequestKey = tuple[str, int]  # (stage, sentence index for tts, else -1)
FINAL_RESULTS = (AsrFinal, LlmDone, TtsDone)  # the last message a worker sends for a request it completed


def request_key(stage: str, message: Envelope) -> RequestKey:
    """Which of a turn's requests a request or a result is about: a turn has one ASR and one LLM
    request, and one TTS request per sentence (which several TTS workers may share out)."""
    return stage, (message.index if stage == "tts" else -1)


class NoWorker(Exception):
    """Nothing was sent: no worker of the stage is ready, or the one named is gone or full."""


class Sender(Protocol):
    """The bus as dispatch uses it (gateway/bus.py; a fake in unit tests): raises
    WorkerUnavailable when the worker cannot take the message."""

    def send(self, instance: str, message: Envelope, *payload: bytes) -> None: ...


class Dispatch:
    def __init__(self, board: StageBoard, bus: Sender | None):
        self.board = board
        self.bus = bus
        # (session, turn) -> unfinished request -> the worker holding it
        self._holders: dict[tuple[str, int], dict[RequestKey, str]] = {}

    def send(self, stage: str, message: Envelope, *payload: bytes, to: str | None = None) -> str:
        """Send a message to one worker of the stage and return that worker's instance id.

        to=None: the ready worker with the shortest queue (StageBoard.pick). to=<instance>: that
        worker, whatever its queue (all the frames of one utterance go to the worker that holds
        it); NoWorker if it is no longer a worker of the stage. A request (anything with a session
        but a cancel) is recorded as held by that worker until end_turn. Raises NoWorker, without
        sending, when no worker is ready or the chosen one cannot take it (connection gone, queue
        full)."""
        worker = to or self.board.pick(stage)
        if worker is None:
            raise NoWorker(f"no {stage} worker is ready")
        if worker not in self.board.stages[stage].workers:
            raise NoWorker(f"{worker} is not a worker of the {stage} stage (any more)")
        try:
            self.bus.send(worker, message, *payload)
        except WorkerUnavailable as exc:
            raise NoWorker(str(exc)) from None
        self.board.sent_to(stage, worker)
        if message.session and not isinstance(message, TurnCancel):
            self._holders.setdefault((message.session, message.turn), {})[request_key(stage, message)] = worker
        return worker

    def holder(self, stage: str, message: Envelope) -> str | None:
        """The worker holding a request (given it, or a result about it): the one it was last sent
        to; None when it was never sent, or its final result came."""
        return self._holders.get((message.session, message.turn), {}).get(request_key(stage, message))

    def finished(self, stage: str, message: Envelope) -> None:
        """A result from a worker: its final one for a request (asr.final, llm.done, tts.done)
        means that worker holds it no more. A late one from a worker that lost it changes nothing."""
        if not isinstance(message, FINAL_RESULTS):  # a stage.error names no sentence: the turn ends anyway
            return
        held = self._holders.get((message.session, message.turn))
        key = request_key(stage, message)
        if held and held.get(key) == message.instance:
            del held[key]

    def holders(self, session: str, turn: int) -> set[str]:
        """The workers holding an unfinished request of the turn."""
        return set(self._holders.get((session, turn), {}).values())

    def holding(self) -> Counter[str]:
        """How many unfinished requests each worker holds, over every live turn."""
        return Counter(worker for held in self._holders.values() for worker in held.values())

    def cancel(self, session: str, turn: int, reason: str) -> set[str]:
        """A turn.cancel to each worker holding a request of the turn (only those: the others
        never saw it); returns the workers it reached. A worker gone meanwhile holds nothing."""
        reached = set()
        for worker in self.holders(session, turn):
            try:
                self.bus.send(worker, TurnCancel(session=session, turn=turn, reason=reason, sent=time.monotonic()))
            except WorkerUnavailable:
                continue
            reached.add(worker)
        return reached

    def end_turn(self, session: str, turn: int) -> None:
        """The turn is over: forget its holders."""
        self._holders.pop((session, turn), None)
