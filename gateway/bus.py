"""The gateway's side of the bus: it binds every socket; workers connect."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import zmq
import zmq.asyncio

import proto
from proto import Envelope, ProtocolError
from services.runtime.endpoints import STAGES, ensure_run_dir, events_endpoint, run_dir, stage_endpoint

log = logging.getLogger("s2s.gateway.bus")


class StageUnavailable(Exception):
    pass


class Bus:
    def __init__(self, environ: dict[str, str] | None = None):
        self.environ = environ
        self.ctx = zmq.asyncio.Context()
        # Sends are non-blocking, so plain sockets serve the event loop and fail at once
        # (zmq.Again) instead of returning a future whose error could go unnoticed.
        self.send_ctx = zmq.Context()
        self.push: dict[str, zmq.Socket] = {}
        self.pull: zmq.asyncio.Socket | None = None
        self.dropped_frames = 0
        self._reader: asyncio.Task | None = None

    def start(self, on_message: Callable[[Envelope, list[bytes]], None]) -> None:
        ensure_run_dir(run_dir(self.environ))
        for stage in STAGES:
            sock = self.send_ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100)
            sock.bind(stage_endpoint(stage, self.environ))
            self.push[stage] = sock
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(events_endpoint(self.environ))
        self._reader = asyncio.create_task(self._read(on_message), name="bus-reader")

    async def _read(self, on_message) -> None:
        while True:
            frames = await self.pull.recv_multipart()
            try:
                message, payload = proto.decode(frames)
            except ProtocolError as exc:
                self.dropped_frames += 1
                log.warning("dropped malformed frame: %s", exc)
                continue
            try:
                on_message(message, payload)
            except Exception:  # one bad message must not stop the reader
                log.exception("handling %s failed", proto.tag_of(message))

    def send(self, stage: str, message: Envelope, *payload: bytes) -> None:
        """Never blocks: no connected worker or a full queue means the stage is unavailable."""
        try:
            self.push[stage].send_multipart(proto.encode(message, *payload), flags=zmq.NOBLOCK)
        except zmq.Again:
            raise StageUnavailable(f"no {stage} worker is connected or its queue is full") from None

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        for sock in [*self.push.values(), self.pull]:
            if sock is not None:
                sock.close(linger=0)
        self.ctx.term()
        self.send_ctx.term()
