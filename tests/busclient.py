"""The gateway's side of the bus in tests: bind the sockets, send requests, collect messages."""

from __future__ import annotations

import time

import zmq

import proto
from services.runtime.endpoints import STAGES, control_endpoint, events_endpoint, stage_endpoint


class BusClient:
    def __init__(self, environ: dict[str, str]):
        self.ctx = zmq.Context()
        self.push = {}
        for stage in STAGES:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            # A worker that stopped reading fails the send (zmq.Again) instead of hanging the test,
            # where a timeout's signal cannot reach a thread blocked inside libzmq.
            sock.setsockopt(zmq.SNDTIMEO, 10_000)
            sock.bind(stage_endpoint(stage, environ))
            self.push[stage] = sock
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(events_endpoint(environ))
        self.control = self.ctx.socket(zmq.PUB)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(control_endpoint(environ))
        self.seen: list[proto.Envelope] = []

    def send(self, stage: str, message, *payload: bytes) -> None:
        self.push[stage].send_multipart(proto.encode(message, *payload))

    def broadcast(self, message) -> None:
        """To every worker, as the gateway sends cancels."""
        self.control.send_multipart(proto.encode(message))

    def send_raw(self, stage: str, frames: list[bytes]) -> None:
        self.push[stage].send_multipart(frames)

    def wait_for(self, predicate, timeout: float = 10.0):
        """The first message (seen since the last call) matching predicate, else AssertionError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pull.poll(int(max(0.0, deadline - time.monotonic()) * 1000) or 1):
                message, payload = proto.decode(self.pull.recv_multipart())
                self.seen.append(message)
                if predicate(message):
                    return message
        raise AssertionError(f"no matching message within {timeout} s; saw {[proto.tag_of(m) for m in self.seen[-10:]]}")

    def collect(self, seconds: float) -> list:
        end = time.monotonic() + seconds
        got = []
        while (left := end - time.monotonic()) > 0:
            if self.pull.poll(int(left * 1000) or 1):
                message, _ = proto.decode(self.pull.recv_multipart())
                self.seen.append(message)
                got.append(message)
        return got

    def close(self) -> None:
        for sock in [*self.push.values(), self.pull, self.control]:
            sock.close(linger=0)
        self.ctx.term()
