"""The gateway's side of the bus in tests: bind the events socket, connect to each worker's inbox
as its hello or heartbeat names it, send requests, collect messages."""

from __future__ import annotations

import time
from collections import deque

import zmq

import proto
from proto import StageHeartbeat, StageHello
from services.runtime.endpoints import events_endpoint


class BusClient:
    def __init__(self, environ: dict[str, str]):
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(events_endpoint(environ))
        self.inboxes: dict[str, zmq.Socket] = {}  # worker instance -> a PUSH to its inbox
        self.workers: dict[str, list[str]] = {}  # stage -> its workers, in the order they announced their inbox
        self.seen: list[proto.Envelope] = []
        self._unread: deque[proto.Envelope] = deque()  # read while waiting for an inbox, not yet given out

    def _read(self, timeout_ms: int) -> proto.Envelope | None:
        if not self.pull.poll(timeout_ms):
            return None
        message, _ = proto.decode(self.pull.recv_multipart())
        self.seen.append(message)
        if isinstance(message, (StageHello, StageHeartbeat)) and message.inbox and message.instance not in self.inboxes:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            # A worker that stopped reading fails the send (zmq.Again) instead of hanging the test,
            # where a timeout's signal cannot reach a thread blocked inside libzmq.
            sock.setsockopt(zmq.SNDTIMEO, 10_000)
            sock.connect(message.inbox)
            self.inboxes[message.instance] = sock
            self.workers.setdefault(message.stage, []).append(message.instance)
        return message

    def _next(self, timeout_ms: int) -> proto.Envelope | None:
        return self._unread.popleft() if self._unread else self._read(timeout_ms)

    def inbox(self, stage: str, to: str | None = None, timeout: float = 20.0) -> zmq.Socket:
        """The PUSH to worker `to`, or to the stage's latest worker; waits for its announcement."""
        deadline = time.monotonic() + timeout
        while (to or self.workers.get(stage, [None])[-1]) not in self.inboxes:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {stage} worker {to or ''} announced its inbox within {timeout} s")
            if (message := self._read(100)) is not None:
                self._unread.append(message)
        return self.inboxes[to or self.workers[stage][-1]]

    def send(self, stage: str, message, *payload: bytes, to: str | None = None) -> None:
        """To worker `to` (an instance id), or to the stage's latest worker."""
        self.inbox(stage, to).send_multipart(proto.encode(message, *payload))

    def send_raw(self, stage: str, frames: list[bytes], to: str | None = None) -> None:
        self.inbox(stage, to).send_multipart(frames)

    def wait_for(self, predicate, timeout: float = 10.0):
        """The first message (seen since the last call) matching predicate, else AssertionError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self._next(int(max(0.0, deadline - time.monotonic()) * 1000) or 1)
            if message is not None and predicate(message):
                return message
        raise AssertionError(f"no matching message within {timeout} s; saw {[proto.tag_of(m) for m in self.seen[-10:]]}")

    def collect(self, seconds: float) -> list:
        end = time.monotonic() + seconds
        got = []
        while (left := end - time.monotonic()) > 0:
            if (message := self._next(int(left * 1000) or 1)) is not None:
                got.append(message)
        return got

    def close(self) -> None:
        for sock in [*self.inboxes.values(), self.pull]:
            sock.close(linger=0)
        self.ctx.term()
