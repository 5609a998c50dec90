"""`GET /v1/realtime`: the OpenAI Realtime protocol over a WebSocket (docs/REALTIME.md).

protocol.py: events in and out; session.py: a session's settings; connection.py: one socket;
transcription.py: an utterance streamed to ASR; detection.py: turn detection; limits.py: the
socket's limits and who may open one. This module admits sockets and owns what they share.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from gateway.realtime.connection import Connection
from gateway.realtime.detection import load_listening
from gateway.realtime.limits import RealtimeSettings
from gateway.realtime.protocol import ClientError, error_event, new_id

log = logging.getLogger("s2s.gateway.realtime")

PATH = "/v1/realtime"
CLOSE_TRY_AGAIN = 1013  # WebSocket close code: try again later


class RealtimeHub:
    def __init__(self, gateway, settings: RealtimeSettings):
        self.gateway, self.settings = gateway, settings
        # turn detection runs here, off the event loop (two threads: the 2-core machine's share)
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="s2s-listen")
        self.listening = None
        self.sessions: Counter[str] = Counter()  # client address -> open sockets
        self.connections: set[Connection] = set()

    async def start(self, app: web.Application) -> None:
        self.listening = await asyncio.get_running_loop().run_in_executor(self.executor, load_listening)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.settings.hard_message_bytes, heartbeat=30.0,
                                   protocols=("realtime",))
        await ws.prepare(request)
        client = request.remote or ""
        if self.gateway.shutting_down or self.sessions[client] >= self.settings.max_sessions_per_client:
            shutting = self.gateway.shutting_down
            exc = ClientError("The assistant is shutting down." if shutting else
                              f"At most {self.settings.max_sessions_per_client} realtime sessions at once from "
                              "one client.", code="shutting_down" if shutting else "too_many_sessions")
            await ws.send_json({**error_event(exc), "event_id": new_id("event")})
            await ws.close(code=CLOSE_TRY_AGAIN, message=exc.code.encode())
            return ws
        self.sessions[client] += 1
        connection = Connection(self.gateway, self, request, ws, client)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self.sessions[client] -= 1
            if not self.sessions[client]:
                del self.sessions[client]
            await ws.close()
        return ws

    async def shutdown(self, app: web.Application) -> None:
        """On SIGTERM: every socket hears why, then closes (its work is cancelled as it closes)."""
        for connection in list(self.connections):
            await connection.error(ClientError("The assistant is shutting down.", code="shutting_down"))
            await connection.ws.close(code=CLOSE_TRY_AGAIN, message=b"shutting down")

    async def cleanup(self, app: web.Application) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


REALTIME = web.AppKey("realtime", RealtimeHub)


def setup(app: web.Application, gateway, settings: RealtimeSettings) -> RealtimeHub:
    hub = RealtimeHub(gateway, settings)
    app[REALTIME] = hub
    app.router.add_get(PATH, hub.handle)
    app.on_startup.append(hub.start)
    app.on_shutdown.insert(0, hub.shutdown)
    app.on_cleanup.append(hub.cleanup)
    return hub
