"""The gateway: serves the page, takes uploads, drives turns over the bus, streams SSE."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway import guard, realtime
from gateway.bus import Bus
from gateway.conversations import Conversation, ConversationStore
from gateway.dispatch import Dispatch, NoWorker
from gateway.media import MediaError, decode_to_pcm
from gateway.observe import GatewayObserver
from gateway.recovery import Recovery
from gateway.settings import GatewaySettings
from gateway.stages import StageBoard
from gateway.turn import Emit, Finish, Send, TurnState
from gateway.uploads import read_upload
from proto import TAKES_REQUESTS, Envelope, StageBye, StageHeartbeat, StageHello, events, stage_of
from services.personas import DEFAULT_PERSONA, PERSONAS

log = logging.getLogger("s2s.gateway")

STATIC = Path(__file__).parent / "static"
COOKIE = "s2s_conversation"
CSP = ("default-src 'self'; media-src 'self' blob: data:; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
TICK_S = 0.25  # how often a waiting stream checks for disconnects and timeouts
PING_S = 15.0
SHUTDOWN_GRACE_S = 3.0  # for open streams to send their error event; well within supervisor's stopwaitsecs
GATEWAY = web.AppKey("gateway", "Gateway")
CANCELLED = "The turn was cancelled."
SHUTTING_DOWN = "The assistant is shutting down. Please try again in a moment."
BUSY = "The assistant is busy with other uploads. Please try again in a moment."


@dataclass
class Upload:
    session_id: str
    conversation: str
    persona: str
    pcm: bytes
    client: str = ""
    created: float = field(default_factory=time.monotonic)


@dataclass
class LiveTurn:
    conversation: Conversation
    number: int
    inbox: asyncio.Queue
    client: str = ""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str = CANCELLED

    def cancel(self, reason: str = CANCELLED) -> None:
        self.cancel_reason = reason
        self.cancelled.set()
        self.inbox.put_nowait(None)  # wake the stream that waits on the inbox


def finite(value):
    """The value with NaN and infinities (which a stage may report, and which JSON cannot hold:
    a browser's JSON.parse rejects the whole body) replaced by null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def retry_later(status: int, message: str) -> web.Response:
    response = json_error(status, message)
    response.headers["Retry-After"] = "1"
    return response


class Gateway:
    def __init__(self, settings: GatewaySettings, bus: Bus):
        self.settings = settings
        self.bus = bus
        self.board = StageBoard(stuck_after_s=settings.stuck_after_s, down_after_s=settings.down_after_s)
        self.dispatch = Dispatch(self.board, bus)  # which worker gets, and holds, each request
        self.conversations = ConversationStore(settings.max_conversations, settings.max_conversations_per_client)
        self.uploads: dict[str, Upload] = {}
        self.used: OrderedDict[str, None] = OrderedDict()  # streamed session ids, for 409
        self.live: dict[tuple[str, int], LiveTurn] = {}
        self.by_session: dict[str, LiveTurn] = {}
        self.decoding: Counter[str] = Counter()  # client address -> uploads being read or decoded
        self.decode_slots = asyncio.Semaphore(settings.max_decodes)  # ffmpeg processes at once
        self.late_results = 0  # results for turns that had already ended: dropped
        self.resent_requests = 0  # requests sent again because the worker holding them was lost
        self.shutting_down = False
        self.observe = GatewayObserver(self)  # metrics and turn logs (gateway/observe.py)

    # --- bus -----------------------------------------------------------------------------------

    def on_bus_message(self, message: Envelope, payload: list[bytes]) -> None:
        stage = stage_of(message)  # the stage that sent it
        self.board.seen(stage, message.producer)
        self.board.update(message)
        # the worker's inbox, connected to once (a gateway that restarted after the hello learns it from a beat)
        announces_inbox = isinstance(message, (StageHello, StageHeartbeat)) and message.inbox
        if announces_inbox and not self.board.is_gone(message.producer):
            self.bus.connect(message.producer, message.inbox)
        elif isinstance(message, StageBye):
            self.bus.disconnect(message.producer)
        if message.session:
            self.board.result_seen(stage, message.producer)
            self.dispatch.finished(stage, message)
            turn = self.live.get((message.session, message.turn))
            if turn is not None:
                turn.inbox.put_nowait((message, payload))
            else:
                self.late_results += 1

    def on_bus_connection(self, instance: str, connected: bool) -> None:
        self.board.connection(instance, connected)
        if not connected:  # the worker's process is gone
            self.bus.disconnect(instance, dead=True)
            for turn in self.live.values():
                turn.inbox.put_nowait(None)  # let each turn look at what it lost now

    def open_turn(self, conversation: Conversation, number: int, client: str) -> LiveTurn:
        """A live turn, registered so that its results, a worker's loss and shutdown reach it
        (the realtime socket's responses and utterances; gateway/realtime/)."""
        turn = LiveTurn(conversation, number, asyncio.Queue(), client)
        self.live[(conversation.id, number)] = turn
        return turn

    # --- HTTP: page and status -----------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def config(self, request: web.Request) -> web.Response:
        personas = [{"key": p.key, "name": p.name, "voice": p.voice, "style": p.style} for p in PERSONAS.values()]
        return web.json_response({"personas": personas, "default_persona": DEFAULT_PERSONA})

    async def stages(self, request: web.Request) -> web.Response:
        snapshot, holding = self.board.snapshot(), self.dispatch.holding()
        for worker in (w for info in snapshot.values() for w in info["workers"]):
            worker["holding"] = holding[worker["instance"]]  # unfinished requests the gateway sent it
        return web.json_response(finite({"stages": snapshot, "dropped_frames": self.bus.dropped_frames,
                                         "late_results": self.late_results, "resent_requests": self.resent_requests,
                                         "live_turns": len(self.live)}))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        reasons = {}
        for stage, info in self.board.snapshot().items():
            if info["state"] not in TAKES_REQUESTS:
                reasons[stage] = info["state"] + (f": {info['error']}" if info["error"] else "")
        if reasons:
            return web.json_response({"ready": False, "reasons": reasons}, status=503)
        return web.json_response({"ready": True})

    # --- HTTP: conversation --------------------------------------------------------------------

    def _conversation(self, request: web.Request) -> Conversation:
        return self.conversations.get_or_create(request.cookies.get(COOKIE), request.remote or "")

    def _with_cookie(self, response: web.StreamResponse, conversation: Conversation) -> web.StreamResponse:
        response.set_cookie(COOKIE, conversation.id, httponly=True, samesite="Strict", path="/")
        return response

    async def clear(self, request: web.Request) -> web.Response:
        # No conversation yet (no cookie, or an expired one): nothing to clear, and nothing is made.
        conversation = self.conversations.get(request.cookies.get(COOKIE))
        if conversation is not None:
            conversation.clear()
        return web.json_response({"cleared": True})

    async def upload(self, request: web.Request) -> web.Response:
        persona = request.query.get("persona", DEFAULT_PERSONA)
        if persona not in PERSONAS:
            return json_error(400, f"Unknown persona {persona!r}.")
        if request.content_length is not None and request.content_length > self.settings.max_upload_bytes:
            return json_error(413, "The recording is too large.")
        if self.shutting_down:
            return json_error(503, SHUTTING_DOWN)
        client = request.remote or ""
        self._expire_uploads()
        if self._turns_of(client) >= self.settings.max_turns_per_client:
            return retry_later(429, "Too many turns at once from this client: wait for one to finish.")
        # the same bounds for all clients together, so many addresses cannot do what one may not
        if (sum(self.decoding.values()) >= self.settings.max_uploads_in_flight
                or len(self.uploads) >= self.settings.max_pending_uploads):
            return retry_later(503, BUSY)
        self.decoding[client] += 1
        settings = self.settings
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                data = await read_upload(request, settings.max_upload_bytes)
            async with self.decode_slots:
                decode_started = time.monotonic()
                pcm = await decode_to_pcm(data, settings.max_audio_s, settings.decode_timeout_s,
                                          settings.decode_cpu_s, settings.decode_memory_mb * 1024 * 1024)
        except TimeoutError:
            # The rest of the body may never come: answer, then close the connection instead of
            # lingering to read it (aiohttp would wait 10 s more).
            response = json_error(408, f"The recording did not arrive within {settings.body_timeout_s:g} s.")
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()  # the transport flushes the answer, then closes
            return response
        except MediaError as exc:
            return json_error(exc.status, exc.message)
        finally:
            self.decoding[client] -= 1
            if not self.decoding[client]:
                del self.decoding[client]
        conversation = self._conversation(request)
        conversation.set_persona(persona)
        session_id = secrets.token_urlsafe(24)
        self.uploads[session_id] = Upload(session_id, conversation.id, persona, pcm, client)
        self.observe.upload_accepted(self.uploads[session_id], len(data), time.monotonic() - decode_started)
        return self._with_cookie(web.json_response({"session_id": session_id}), conversation)

    def _turns_of(self, client: str) -> int:
        """A client's turns at once: uploads being decoded, uploaded and not yet streamed, streaming."""
        return (self.decoding[client] + sum(u.client == client for u in self.uploads.values())
                + sum(t.client == client for t in self.live.values()))

    def _expire_uploads(self) -> None:
        cutoff = time.monotonic() - self.settings.upload_ttl_s
        for session_id in [k for k, u in self.uploads.items() if u.created < cutoff]:
            del self.uploads[session_id]

    async def shutdown(self, app: web.Application) -> None:
        """On SIGTERM: every open stream gets an error event before the process exits."""
        self.shutting_down = True
        for turn in list(self.live.values()):
            turn.cancel(SHUTTING_DOWN)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self.live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def cancel(self, request: web.Request) -> web.Response:
        turn = self.by_session.get(request.match_info["session_id"])
        if turn is None:
            return json_error(404, "No live turn with that id.")
        turn.cancel()
        return web.json_response({"cancelled": True})

    # --- HTTP: the turn itself -----------------------------------------------------------------

    def claim_upload(self, session_id: str) -> tuple[Upload, Conversation] | web.Response:
        """The upload and its conversation, taken once; an error response when it cannot be streamed."""
        self._expire_uploads()
        upload = self.uploads.pop(session_id, None)
        if upload is None:
            if session_id in self.used:
                return json_error(409, "That recording was already streamed.")
            return json_error(404, "Unknown or expired session id.")
        self.used[session_id] = None
        while len(self.used) > 10000:
            self.used.popitem(last=False)
        conversation = self.conversations.get(upload.conversation)
        if conversation is None:
            return json_error(404, "That conversation has expired.")
        return upload, conversation

    async def stream(self, request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["session_id"]
        if self.shutting_down:
            return json_error(503, SHUTTING_DOWN)
        claimed = self.claim_upload(session_id)
        if isinstance(claimed, web.Response):
            return claimed
        upload, conversation = claimed
        if conversation.active_turn is not None:  # a new question supersedes the old answer
            previous = self.live.get((conversation.id, conversation.active_turn))
            if previous is not None:
                previous.cancel()
        number = conversation.next_turn()
        turn = LiveTurn(conversation, number, asyncio.Queue(), upload.client)
        self.live[(conversation.id, number)] = turn
        self.by_session[session_id] = turn
        sse, finished = None, False
        try:  # from here every way out, a client gone before the stream opened included, releases the turn
            sse = await SseWriter.open(request, self.settings.sse_write_timeout_s)
            sse = self.observe.watch(sse, session_id, turn, upload)  # follows every event of the turn
            finished = await self._drive(request, turn, upload, sse)
        finally:
            self.observe.turn_ended(sse, finished)
            del self.live[(conversation.id, number)]
            del self.by_session[session_id]
            if conversation.active_turn == number:
                conversation.active_turn = None
            if not finished:
                self.dispatch.cancel(conversation.id, number, "stream closed")  # to the workers holding its work
            self.dispatch.end_turn(conversation.id, number)
        return sse.response

    async def _drive(self, request: web.Request, turn: LiveTurn, upload: Upload, sse: "SseWriter") -> bool:
        """Run the turn's state machine to its end; True only when the answer completed."""
        persona = PERSONAS[upload.persona]
        state = TurnState(turn.conversation.id, turn.number, persona.key, persona.voice,
                          list(turn.conversation.history), time.monotonic)
        return await self.run_turn(turn, state, state.start(upload.pcm), sse, lambda: self._disconnected(request))

    async def run_turn(self, turn: LiveTurn, state: TurnState, first: list, sse, gone) -> bool:
        """Drive a turn from its first actions to its end, its events to `sse` (anything with the
        SseWriter's send and keepalive: the realtime socket has its own); gone() says the client
        left. True only when the answer completed."""
        recovery = Recovery(self.board, self.dispatch, self.settings.stage_wait_s, time.monotonic)
        pending = deque(first)
        last_progress = time.monotonic()

        def abandoned() -> bool:  # no use waiting for a stage on behalf of this turn any more
            return turn.cancelled.is_set() or gone()

        while True:
            while pending:
                action = pending.popleft()
                if isinstance(action, Send):
                    pending.extend(await self._send(state, action, abandoned))
                elif isinstance(action, Emit):
                    if not await sse.send(action.event, action.data):
                        return False
                elif isinstance(action, Finish):
                    if action.ok:
                        turn.conversation.remember(action.user_text, action.reply_text)
                    return action.ok
            item = await self._next(turn, TICK_S)
            if turn.cancelled.is_set():
                kind = "shutdown" if turn.cancel_reason == SHUTTING_DOWN else "cancelled"
                await sse.send(*events.error(turn.cancel_reason, kind))
                return False
            if gone():
                return False
            if item is not None and not recovery.on_message(item[0]):
                last_progress = time.monotonic()
                pending.extend(state.on_message(*item))
            if pending:
                continue
            actions = recovery.check(state)
            pending.extend(actions)
            if resent := sum(isinstance(a, Send) for a in actions):  # the rest end the turn
                self.resent_requests += resent
                last_progress = time.monotonic()
            elif not recovery.waiting() and self._timed_out(state, last_progress):
                pending.extend(state.on_timeout())
            if not await sse.keepalive(PING_S):
                return False

    def _timed_out(self, state: TurnState, last_progress: float) -> bool:
        """Silence past stage_timeout_s ends a turn, unless the stage it waits on is busy finishing
        other turns (under load a request queues behind them); queue_timeout_s bounds that wait."""
        silent = time.monotonic() - last_progress
        if silent <= self.settings.stage_timeout_s:
            return False
        waiting = state.waiting_on()
        queued = waiting is not None and self.board.progressing(waiting, self.settings.stage_timeout_s)
        return not queued or silent > self.settings.queue_timeout_s

    def _will_be_ready(self, stage: str) -> bool:
        """Worth waiting for: loading, or never seen yet, or every worker of it went away
        (supervisor starts others). Not a stage that hangs (alive but silent) or failed to load."""
        state = self.board.state(stage)
        return state in ("loading", "draining") or (state == "down" and not self.board.has_workers(stage))

    async def _send(self, state: TurnState, action: Send, abandoned) -> list:
        """Send to the stage's least loaded ready worker, waiting a while for a stage that is
        loading or restarting; [] on success. A worker that died a moment ago may still be chosen:
        its closed connection then shows it gone, and the turn's recovery re-sends what it held."""
        deadline = time.monotonic() + self.settings.stage_wait_s
        while (not self.board.is_ready(action.stage) and time.monotonic() < deadline
               and self._will_be_ready(action.stage) and not self.shutting_down and not abandoned()):
            await asyncio.sleep(0.1)
        if not self.board.is_ready(action.stage):
            return state.on_stage_down(action.stage, self.board.state(action.stage))
        action.message.sent = time.monotonic()
        try:
            worker = self.dispatch.send(action.stage, action.message, *action.payload)
        except NoWorker as exc:
            return state.on_stage_down(action.stage, str(exc))
        self.observe.sent(action, worker)
        return []

    @staticmethod
    async def _next(turn: LiveTurn, timeout: float):
        try:
            return await asyncio.wait_for(turn.inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None

    @staticmethod
    def _disconnected(request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()


class SseWriter:
    """Server-Sent Events with ids and keep-alive comments; send() is False once the client left,
    or stopped reading: a write that cannot complete within write_timeout_s (the socket's buffers
    are full) closes the connection."""

    def __init__(self, request: web.Request, response: web.StreamResponse, write_timeout_s: float):
        self.request = request
        self.response = response
        self.write_timeout_s = write_timeout_s
        self.next_id = 0
        self.last_write = time.monotonic()

    @classmethod
    async def open(cls, request: web.Request, write_timeout_s: float) -> "SseWriter":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        return cls(request, response, write_timeout_s)

    async def _write(self, text: str) -> bool:
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await self.response.write(text.encode())
        except TimeoutError:
            log.warning("a stream's client stopped reading for %g s: closing it", self.write_timeout_s)
            if self.request.transport is not None:
                self.request.transport.abort()  # an event may be half written: the stream cannot go on
            return False
        except (ConnectionResetError, RuntimeError):
            return False
        self.last_write = time.monotonic()
        return True

    async def send(self, event: str, data: dict) -> bool:
        self.next_id += 1
        return await self._write(f"id: {self.next_id}\nevent: {event}\ndata: {json.dumps(finite(data))}\n\n")

    async def keepalive(self, every_s: float) -> bool:
        if time.monotonic() - self.last_write < every_s:
            return True
        return await self._write(": ping\n\n")


@web.middleware
async def json_errors(request: web.Request, handler):
    """A failure nobody foresaw is a 500 JSON like every other error, and its traceback is logged."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "The request failed inside the gateway.")


@web.middleware
async def security_headers(request: web.Request, handler):
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def create_app(settings: GatewaySettings | None = None, bus: Bus | None = None) -> web.Application:
    settings = settings or GatewaySettings.from_env()
    bus = bus or Bus()
    gateway = Gateway(settings, bus)
    app = web.Application(middlewares=[security_headers, gateway.observe.middleware,
                                       guard.middleware(settings.allowed_hosts, settings.host,
                                                        {realtime.PATH: settings.realtime.allowed_origins}),
                                       json_errors],
                          client_max_size=settings.max_upload_bytes + 65536)
    app[GATEWAY] = gateway
    app.router.add_get("/", gateway.index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/config", gateway.config)
    app.router.add_get("/api/stages", gateway.stages)
    app.router.add_post("/api/clear", gateway.clear)
    app.router.add_post("/api/cancel/{session_id}", gateway.cancel)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.observe.metrics)
    app.router.add_post("/upload", gateway.upload)
    app.router.add_get("/stream/{session_id}", gateway.stream)
    realtime.setup(app, gateway, settings.realtime)  # GET /v1/realtime (gateway/realtime/)

    async def bus_lifecycle(app: web.Application):
        bus.start(gateway.on_bus_message, gateway.on_bus_connection)
        yield
        await bus.close()

    app.cleanup_ctx.append(bus_lifecycle)
    app.on_shutdown.append(gateway.shutdown)
    return app
