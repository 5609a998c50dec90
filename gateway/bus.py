"""The gateway's side of the bus: it binds every socket; workers connect."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

import proto
from proto import Envelope, ProtocolError
from services.runtime.curve import CurveServer
from services.runtime.endpoints import (MAX_MESSAGE_BYTES, STAGES, control_endpoint, ensure_run_dir,
                                       events_endpoint, run_dir, stage_endpoint)

log = logging.getLogger("s2s.gateway.bus")

PEER_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
MONITOR_POLL_S = 0.05
ERROR_PAUSE_S = 0.05  # after an unexpected error in the reader: never a busy loop of errors


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
        self.control: zmq.Socket | None = None  # PUB: cancels to every worker
        self.dropped_frames = 0
        self.reader_errors = 0  # unexpected errors in the reader or the watcher, each logged; both read on
        self._reader: asyncio.Task | None = None
        # Connection events of each stage's socket: a worker's process that dies (kill -9, a crash)
        # closes its connection at once, long before its heartbeats are missed. A hung one does not.
        self.monitors: dict[str, zmq.Socket] = {}
        self._watcher: asyncio.Task | None = None
        self.curve: CurveServer | None = None  # CURVE keys and ZAP handlers, when the bus uses them

    def start(self, on_message: Callable[[Envelope, list[bytes]], None],
              on_peer: Callable[[str, bool, int], None] = lambda stage, joined, pid: None) -> None:
        endpoints = {stage: stage_endpoint(stage, self.environ) for stage in STAGES}
        events, control = events_endpoint(self.environ), control_endpoint(self.environ)
        # tcp:// (any non-ipc) endpoints require CURVE keys: a ConfigError names the missing setting.
        # Checked before any socket exists, so a refused start leaves nothing bound.
        self.curve = CurveServer.load(self.environ, [*endpoints.values(), events, control])
        ensure_run_dir(run_dir(self.environ))
        for stage in STAGES:
            sock = self.send_ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            sock.setsockopt(zmq.SNDHWM, 100)
            if self.curve:
                self.curve.secure(sock)
            self.monitors[stage] = sock.get_monitor_socket(PEER_EVENTS)
            sock.bind(endpoints[stage])
            self.push[stage] = sock
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self.curve:
            self.curve.secure(self.pull)
        self.pull.bind(events)
        self.control = self.send_ctx.socket(zmq.PUB)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self.curve:
            self.curve.secure(self.control)
        self.control.bind(control)
        self._reader = asyncio.create_task(self._read(on_message), name="bus-reader")
        self._watcher = asyncio.create_task(self._watch(on_peer), name="bus-peer-watcher")

    async def _watch(self, on_peer) -> None:
        """Report each worker that connects to (True) or leaves (False) a stage's socket, with its
        process id where the connection tells it (ipc), so the one of several workers that died
        is known."""
        pids: dict[tuple[str, int], int] = {}  # (stage, connection fd) -> the peer's pid
        while True:
            for stage, monitor in self.monitors.items():
                try:
                    while monitor.poll(0):
                        event = recv_monitor_message(monitor)
                        joined, fd = event["event"] == zmq.EVENT_ACCEPTED, event["value"]
                        pid = peer_pid(fd) if joined else pids.pop((stage, fd), 0)
                        if joined and pid:
                            pids[(stage, fd)] = pid
                        on_peer(stage, joined, pid)
                except Exception:  # whatever it was, the watcher must go on: the gateway would go blind
                    self.reader_errors += 1
                    log.exception("handling a %s connection event failed", stage)
            await asyncio.sleep(MONITOR_POLL_S)

    async def _read(self, on_message) -> None:
        """Every message to on_message; a malformed one is counted and dropped, and any other
        error is counted, logged and read past: a reader that stopped would leave the gateway up
        but deaf to every stage, which supervisor cannot see."""
        while not self.pull.closed:
            try:
                frames = await self.pull.recv_multipart()
                try:
                    message, payload = proto.decode(frames)
                except ProtocolError as exc:
                    self.dropped_frames += 1
                    log.warning("dropped malformed frame: %s", exc)
                    continue
                on_message(message, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.reader_errors += 1
                log.exception("the bus reader failed on a message; reading on")
                await asyncio.sleep(ERROR_PAUSE_S)

    def send(self, stage: str, message: Envelope, *payload: bytes) -> None:
        """Never blocks: no connected worker or a full queue means the stage is unavailable."""
        try:
            self.push[stage].send_multipart(proto.encode(message, *payload), flags=zmq.NOBLOCK)
        except zmq.Again:
            raise StageUnavailable(f"no {stage} worker is connected or its queue is full") from None

    def broadcast(self, message: Envelope) -> None:
        """To every connected worker of every stage (never blocks; a worker not there misses it)."""
        self.control.send_multipart(proto.encode(message), flags=zmq.NOBLOCK)

    async def close(self) -> None:
        for task in (self._reader, self._watcher):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for stage, sock in self.push.items():
            sock.disable_monitor()
            self.monitors[stage].close(linger=0)
        for sock in [*self.push.values(), self.pull, self.control]:
            if sock is not None:
                sock.close(linger=0)
        if self.curve:
            self.curve.stop()  # after the sockets: without a ZAP handler any key would get in
        self.ctx.term()
        self.send_ctx.term()


PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_pid(fd: int) -> int:
    """The process at the other end of an accepted unix-socket connection; 0 for tcp, or when the
    connection closed before its event was read."""
    try:
        conn = socket.socket(fileno=fd)
    except OSError:
        return 0
    try:
        if conn.family != socket.AF_UNIX:
            return 0
        return PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))[0]
    except OSError:
        return 0
    finally:
        conn.detach()  # the fd is libzmq's: never close it here
