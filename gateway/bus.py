"""The gateway's side of the bus: it binds the events socket (every worker's results and
lifecycle messages) and connects one PUSH to each worker's own inbox, which the worker names in
its hello and heartbeats. So every request goes to a worker the gateway chose, and a closed
connection tells which worker went away."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

import proto
from proto import Envelope, ProtocolError
from services.runtime.curve import CurveServer, remote_endpoints
from services.runtime.endpoints import ensure_run_dir, events_endpoint, run_dir

log = logging.getLogger("s2s.gateway.bus")

PEER_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
MONITOR_POLL_S = 0.05
INBOX_HWM = 100  # requests queued in the gateway for one worker before a send to it fails


class WorkerUnavailable(Exception):
    """No connection to that worker's inbox, or its queue is full."""


@dataclass
class Inbox:
    """The gateway's PUSH to one worker's inbox, and the monitor of its connection."""

    endpoint: str
    socket: zmq.Socket
    monitor: zmq.Socket


class Bus:
    def __init__(self, environ: dict[str, str] | None = None):
        self.environ = environ
        self.ctx = zmq.asyncio.Context()
        # Sends are non-blocking, so plain sockets serve the event loop and fail at once
        # (zmq.Again) instead of returning a future whose error could go unnoticed.
        self.send_ctx = zmq.Context()
        self.inboxes: dict[str, Inbox] = {}  # worker instance -> the PUSH to its inbox
        self.refused: set[str] = set()  # workers whose inbox the gateway will not connect to
        self.pull: zmq.asyncio.Socket | None = None
        self.dropped_frames = 0
        self._reader: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self.curve: CurveServer | None = None  # CURVE keys and ZAP handlers, when the bus uses them

    def start(self, on_message: Callable[[Envelope, list[bytes]], None],
              on_connection: Callable[[str, bool], None] = lambda instance, connected: None) -> None:
        """Bind the events socket and start reading it. on_connection(instance, connected) tells
        when the connection to a worker's inbox opens (True) or closes (False: its process exited,
        crashed or was killed, long before its heartbeats are missed; a hung one stays connected)."""
        events = events_endpoint(self.environ)
        # tcp:// (any non-ipc) events endpoint requires CURVE keys: a ConfigError names the missing
        # setting. Checked before any socket exists, so a refused start leaves nothing bound.
        self.curve = CurveServer.load(self.environ, [events])
        ensure_run_dir(run_dir(self.environ))
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        if self.curve:
            self.curve.secure(self.pull)
        self.pull.bind(events)
        self._reader = asyncio.create_task(self._read(on_message), name="bus-reader")
        self._watcher = asyncio.create_task(self._watch(on_connection), name="bus-connection-watcher")

    def connect(self, instance: str, endpoint: str) -> bool:
        """Open the PUSH to a worker's inbox (once per worker); False when it is refused: a worker
        on another host (tcp) while the gateway has no CURVE keys to authenticate to it with."""
        if instance in self.inboxes:
            return True
        if remote_endpoints([endpoint]) and self.curve is None:
            if instance not in self.refused:
                self.refused.add(instance)
                log.error("worker %s names the inbox %s, which is not a local ipc socket, and the gateway "
                          "has no CURVE keys: it gets no requests (see README, \"Several hosts / TCP\")",
                          instance, endpoint)
            return False
        sock = self.send_ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, INBOX_HWM)
        if self.curve:
            self.curve.secure(sock)  # the gateway stays the CURVE server, though it connects here
        monitor = sock.get_monitor_socket(PEER_EVENTS)
        sock.connect(endpoint)
        self.inboxes[instance] = Inbox(endpoint, sock, monitor)
        return True

    def disconnect(self, instance: str, dead: bool = False) -> None:
        """Close the PUSH to a worker that went away; what was queued for it is dropped. dead: its
        process died without closing its inbox, so an ipc inbox's socket file is removed here."""
        inbox = self.inboxes.pop(instance, None)
        if inbox is None:
            return
        inbox.socket.disable_monitor()
        inbox.monitor.close(linger=0)
        inbox.socket.close(linger=0)
        path = inbox.endpoint.removeprefix("ipc://")
        if dead and path != inbox.endpoint:
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):  # only a socket: never any other file it names
                    os.unlink(path)
            except OSError:
                pass  # already gone

    def send(self, instance: str, message: Envelope, *payload: bytes) -> None:
        """To one worker's inbox. Never blocks: no connection to it, or a full queue, raises
        WorkerUnavailable."""
        inbox = self.inboxes.get(instance)
        if inbox is None:
            raise WorkerUnavailable(f"no connection to worker {instance}")
        try:
            inbox.socket.send_multipart(proto.encode(message, *payload), flags=zmq.NOBLOCK)
        except zmq.Again:
            raise WorkerUnavailable(f"the queue of worker {instance} is full") from None

    async def _watch(self, on_connection) -> None:
        """Report each worker whose inbox connection opens or closes."""
        while True:
            for instance, inbox in list(self.inboxes.items()):
                while instance in self.inboxes and inbox.monitor.poll(0):
                    event = recv_monitor_message(inbox.monitor)["event"]
                    try:
                        on_connection(instance, event == zmq.EVENT_CONNECTED)
                    except Exception:  # one bad callback must not stop the watcher
                        log.exception("handling a connection event of %s failed", instance)
            await asyncio.sleep(MONITOR_POLL_S)

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

    async def close(self) -> None:
        for task in (self._reader, self._watcher):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for instance in list(self.inboxes):
            self.disconnect(instance)
        if self.pull is not None:
            self.pull.close(linger=0)
        if self.curve:
            self.curve.stop()  # after the sockets: without a ZAP handler any key would get in
        self.ctx.term()
        self.send_ctx.term()
