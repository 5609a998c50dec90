"""The gateway: serves the page, takes uploads, drives turns over the bus, streams SSE."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway import guard, realtime
from gateway.bus import Bus
from gateway.conversations import Conversation, ConversationStore
from gateway.dispatch import Dispatch, NoWorker
from gateway.http import SseWriter, finite, json_error, json_errors, security_headers
from gateway.observe import GatewayObserver
from gateway.recovery import Recovery
from gateway.settings import GatewaySettings
from gateway.stages import StageBoard
from gateway.turn import Emit, Finish, Send, TurnState
from gateway.upload_desk import SHUTTING_DOWN, Upload, UploadDesk
from proto import TAKES_REQUESTS, Envelope, StageBye, StageHeartbeat, StageHello, events, stage_of
from services.personas import PERSONAS

log = logging.getLogger("s2s.gateway")

STATIC = Path(__file__).parent / "static"
TICK_S = 0.25  # how often a waiting stream checks for disconnects and timeouts
PING_S = 15.0
SHUTDOWN_GRACE_S = 3.0  # for open streams to send their error event; well within supervisor's stopwaitsecs
GATEWAY = web.AppKey("gateway", "Gateway")
CANCELLED = "The turn was cancelled."


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


class Gateway:
    def __init__(self, settings: GatewaySettings, bus: Bus):
        self.settings = settings
        self.bus = bus
        self.board = StageBoard(stuck_after_s=settings.stuck_after_s, down_after_s=settings.down_after_s)
        self.dispatch = Dispatch(self.board, bus)  # which worker gets, and holds, each request
        self.conversations = ConversationStore(settings.max_conversations, settings.max_conversations_per_client)
        self.live: dict[tuple[str, int], LiveTurn] = {}
        self.by_upload: dict[str, LiveTurn] = {}  # upload id -> its turn, for POST /api/cancel/<upload id>
        self.late_results = 0  # results for turns that had already ended: dropped
        self.resent_requests = 0  # requests sent again because the worker holding them was lost
        self.observe = GatewayObserver(self)  # metrics and turn logs (gateway/observe.py)
        self.desk = UploadDesk(settings, self.conversations, self._streaming, self.observe.upload_accepted)

    @property
    def shutting_down(self) -> bool:
        return self.desk.closed

    # --- bus -----------------------------------------------------------------------------------

    def on_bus_message(self, message: Envelope, payload: list[bytes]) -> None:
        stage = stage_of(message)  # the stage that sent it
        self.board.seen(stage, message.instance)
        self.board.update(message)
        # the worker's inbox, connected to once (a gateway that restarted after the hello learns it from a beat)
        announces_inbox = isinstance(message, (StageHello, StageHeartbeat)) and message.inbox
        if announces_inbox and not self.board.is_gone(message.instance):
            self.bus.connect(message.instance, message.inbox)
        elif isinstance(message, StageBye):
            self.bus.disconnect(message.instance)
        if message.session:
            self.board.result_seen(stage, message.instance)
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

    # --- HTTP: shutdown and cancel ------------------------------------------------------------

    def _streaming(self, client: str) -> int:
        """The client's turns streaming now (over HTTP or the realtime socket): they count
        against its limit of turns at once, beside its uploads (gateway/upload_desk.py)."""
        return sum(t.client == client for t in self.live.values())

    async def shutdown(self, app: web.Application) -> None:
        """On SIGTERM: every open stream gets an error event before the process exits."""
        self.desk.closed = True
        for turn in list(self.live.values()):
            turn.cancel(SHUTTING_DOWN)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while self.live and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def cancel(self, request: web.Request) -> web.Response:
        turn = self.by_upload.get(request.match_info["upload_id"])
        if turn is None:
            return json_error(404, "No live turn with that id.")
        turn.cancel()
        return web.json_response({"cancelled": True})

    # --- HTTP: the turn itself -----------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        upload_id = request.match_info["upload_id"]
        if self.shutting_down:
            return json_error(503, SHUTTING_DOWN)
        claimed = self.desk.claim(upload_id)
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
        self.by_upload[upload_id] = turn
        sse, finished = None, False
        try:  # from here every way out, a client gone before the stream opened included, releases the turn
            sse = await SseWriter.open(request, self.settings.sse_write_timeout_s)
            sse = self.observe.watch(sse, turn, upload)  # follows every event of the turn
            finished = await self._drive(request, turn, upload, sse)
        finally:
            self.observe.turn_ended(sse, finished)
            del self.live[(conversation.id, number)]
            del self.by_upload[upload_id]
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
    app.router.add_get("/api/config", gateway.desk.config)
    app.router.add_get("/api/stages", gateway.stages)
    app.router.add_post("/api/clear", gateway.desk.clear)
    app.router.add_post("/api/cancel/{upload_id}", gateway.cancel)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.observe.metrics)
    app.router.add_post("/upload", gateway.desk.upload)
    app.router.add_get("/stream/{upload_id}", gateway.stream)
    realtime.setup(app, gateway, settings.realtime)  # GET /v1/realtime (gateway/realtime/)

    async def bus_lifecycle(app: web.Application):
        bus.start(gateway.on_bus_message, gateway.on_bus_connection)
        yield
        await bus.close()

    app.cleanup_ctx.append(bus_lifecycle)
    app.on_shutdown.append(gateway.shutdown)
    return app
