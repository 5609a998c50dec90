"""What the gateway tells about its turns: Prometheus metrics (GET /metrics) and one log line at
each step a turn passes (upload accepted, turn started, sent to a stage, transcript, first chunk,
done, error, cancel).

The app calls in at a few points (see gateway/app.py): GatewayObserver(gateway) in the Gateway,
upload_accepted() in /upload, watch() around a turn's SSE writer (every event of the turn passes
through it), sending() for each request to a stage, turn_ended() when the stream ends. What the
gateway already keeps (the stage board, live turns, counters) is read at scrape time.

Every metric lives in a registry of this app's own, so tests that build several apps never meet
a duplicate name.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.bus import Bus
from gateway.stages import StageBoard
from gateway.upload_desk import UploadDesk
from proto import STAGE_STATES, events, tag_of
from services.runtime.endpoints import STAGES
from services.runtime.logs import log_turn, session_tag
from services.runtime.observe import never_raises



# What the observer reads of the gateway (gateway/app.py), declared here so that this module does
# not import the app that imports it.
class Upload(Protocol):
    id: str  # the single-use upload id
    conversation: str
    persona: str
    pcm: bytes
    created: float  # monotonic


class Conversation(Protocol):
    id: str


class LiveTurn(Protocol):
    conversation: Conversation
    number: int


class Gateway(Protocol):
    board: StageBoard
    bus: Bus
    live: dict
    desk: UploadDesk
    late_results: int
    resent_requests: int

log = logging.getLogger("s2s.gateway.turn")

# Seconds, from a tenth of a second (ASR of a short clip on a fast machine) to two minutes (a long
# reply on one loaded CPU core).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
BYTES_BUCKETS = (4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
AUDIO_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
# Routes whose 4xx/5xx answers count as errors, and the kind each status stands for.
REQUEST_ROUTES = ("/upload", "/stream/{upload_id}")
STATUS_KINDS = {429: "too_many", 503: "shutdown"}


# The routes whose path holds an upload id: whoever reads it can claim that stream or cancel that turn.
ID_IN_PATH = re.compile(r"(/stream/|/api/cancel/)([^\s?\"/]+)")


class RedactIdsInPaths(logging.Filter):
    """Log lines (aiohttp's access log among them) carry a digest of an upload id in a path, never
    the id itself."""

    @staticmethod
    def redact(text: str) -> str:
        return ID_IN_PATH.sub(lambda m: m.group(1) + "~" + session_tag(m.group(2)), text)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in list(vars(record).items()):
            if isinstance(value, str) and ID_IN_PATH.search(value):
                setattr(record, key, self.redact(value))
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        return True


REDACT_IDS = RedactIdsInPaths()


@dataclass
class TurnTrace:
    """One streamed turn, as the observer follows it."""

    upload: str  # the single-use upload id (the /stream/<id> path); logs carry its digest only
    session: str  # the bus session id (the conversation)
    turn: int
    started: float = field(default_factory=time.monotonic)
    uploaded: float = 0.0  # monotonic time the upload was decoded
    first_chunk: float | None = None
    chunks: int = 0
    outcome: str | None = None  # done | the error kind
    stage: str = "gateway"


class ObservedStream:
    """A turn's SSE writer that tells the observer about each event it sends."""

    def __init__(self, sse, observer: "GatewayObserver", trace: TurnTrace):
        self._sse = sse
        self._observer = observer
        self.trace = trace

    @property
    def response(self):
        return self._sse.response

    async def send(self, event: str, data: dict) -> bool:
        sent = await self._sse.send(event, data)
        self._observer.event(self.trace, event, data, sent)
        return sent

    async def keepalive(self, every_s: float) -> bool:
        return await self._sse.keepalive(every_s)

    def __getattr__(self, name: str):
        return getattr(self._sse, name)


class _BoardCollector:
    """Read at scrape time from what the gateway already keeps: never fails a scrape."""

    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway

    def describe(self):
        return []

    def collect(self):
        gateway = self.gateway
        live = GaugeMetricFamily("s2s_gateway_live_turns", "Turns streaming now")
        live.add_metric([], len(gateway.live))
        yield live
        pending = GaugeMetricFamily("s2s_gateway_pending_uploads", "Uploads decoded and not yet streamed")
        pending.add_metric([], len(gateway.desk.uploads))
        yield pending
        try:
            snapshot = gateway.board.snapshot()
        except Exception:  # a board in an odd state must not break the scrape
            log.exception("stage board snapshot failed during a metrics scrape")
            snapshot = {}
        depth = GaugeMetricFamily("s2s_gateway_stage_queue_depth", "Requests queued in the stage (last heartbeat)",
                                  labels=["stage"])
        busy = GaugeMetricFamily("s2s_gateway_stage_busy_seconds", "How long the stage has been busy (last heartbeat)",
                                 labels=["stage"])
        peers = GaugeMetricFamily("s2s_gateway_stage_peers", "Workers whose inbox the gateway is connected to",
                                  labels=["stage"])
        state = GaugeMetricFamily("s2s_gateway_stage_state", "1 for the stage's current state", labels=["stage", "state"])
        for stage in STAGES:
            info = snapshot.get(stage) or {}
            depth.add_metric([stage], float(info.get("queue_depth") or 0))
            busy.add_metric([stage], float(info.get("busy_ms") or 0) / 1000)
            peers.add_metric([stage], float(info.get("peers") or 0))
            current = info.get("state", "down")
            for name in (*STAGE_STATES, *([current] if current not in STAGE_STATES else [])):
                state.add_metric([stage, name], 1.0 if name == current else 0.0)
        yield from (depth, busy, peers, state)
        bus = gateway.bus
        for name, doc, value in (
                ("s2s_gateway_bus_dropped_frames", "Malformed or unexpected frames the gateway dropped",
                 bus.dropped_frames if bus else 0),
                ("s2s_gateway_bus_errors", "Unexpected errors in the gateway's bus reader or watcher "
                 "(each logged; reading goes on)", bus.reader_errors if bus else 0),
                ("s2s_gateway_late_results", "Results for turns that had already ended (dropped)",
                 gateway.late_results),
                ("s2s_gateway_resent_requests", "Requests sent again because the worker holding them was lost",
                 gateway.resent_requests)):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(value or 0))
            yield counter


class GatewayObserver:
    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns_started = Counter("s2s_gateway_turns_started", "Turns whose stream started", registry=r)
        self.turns_completed = Counter("s2s_gateway_turns_completed", "Turns that ended with `done`", registry=r)
        self.errors = Counter("s2s_gateway_errors", "Turns that ended without `done`, and rejected uploads and "
                              "streams, by kind and by the stage it concerns (gateway: the gateway's own decision)",
                              ["kind", "stage"], registry=r)
        self.ttfa = Histogram("s2s_gateway_ttfa_seconds", "Stream start to the first `chunk` event sent",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.upload_ttfa = Histogram("s2s_gateway_upload_ttfa_seconds",
                                     "Upload decoded to the first `chunk` event sent (includes the browser "
                                     "opening the stream)", buckets=LATENCY_BUCKETS, registry=r)
        self.turn_seconds = Histogram("s2s_gateway_turn_seconds", "Stream start to `done`",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("s2s_gateway_stage_latency_seconds",
                                       "A completed turn's stage timings (done.timing): measure total is the "
                                       "stage's compute time, first_sentence / first_chunk its first output",
                                       ["stage", "measure"], buckets=LATENCY_BUCKETS, registry=r)
        self.upload_bytes = Histogram("s2s_gateway_upload_bytes", "Size of accepted uploads",
                                      buckets=BYTES_BUCKETS, registry=r)
        self.upload_audio = Histogram("s2s_gateway_upload_audio_seconds", "Duration of accepted recordings",
                                      buckets=AUDIO_BUCKETS, registry=r)
        self.decode_seconds = Histogram("s2s_gateway_decode_seconds", "Decoding an accepted upload (ffmpeg)",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.http = Counter("s2s_gateway_http_requests", "HTTP requests answered, by route and status",
                            ["route", "status"], registry=r)
        self.registry.register(_BoardCollector(gateway))
        for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web"):  # once each: addFilter ignores a repeat
            logging.getLogger(name).addFilter(REDACT_IDS)
        self.middleware = self._make_middleware()

    # --- HTTP ----------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _make_middleware(self):
        @web.middleware
        async def count_requests(request: web.Request, handler):
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._answered(request, exc.status)
                raise
            self._answered(request, response.status)
            return response

        return count_requests

    @never_raises
    def _answered(self, request: web.Request, status: int) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.http.labels(route, str(status)).inc()
        if route in REQUEST_ROUTES and status >= 400:
            self.errors.labels(STATUS_KINDS.get(status, "bad_input" if status < 500 else f"http_{status}"),
                               "gateway").inc()

    # --- a turn's steps ------------------------------------------------------------------------

    @never_raises
    def upload_accepted(self, upload: "Upload", size: int, decode_s: float) -> None:
        audio_s = len(upload.pcm) / 32000  # 16 kHz s16le mono
        self.upload_bytes.observe(size)
        self.upload_audio.observe(audio_s)
        self.decode_seconds.observe(decode_s)
        log_turn(log, "upload accepted", upload.conversation, upload=session_tag(upload.id), persona=upload.persona,
                 bytes=size, audio_s=round(audio_s, 3), decode_s=round(decode_s, 4))

    def watch(self, sse, turn: "LiveTurn", upload: "Upload") -> ObservedStream:
        """The turn's stream starts: count it, and follow every event it sends."""
        trace = TurnTrace(upload.id, turn.conversation.id, turn.number, uploaded=upload.created)
        self.turns_started.inc()
        log_turn(log, "turn started", trace.session, trace.turn, upload=session_tag(upload.id), persona=upload.persona,
                 waited_s=round(trace.started - upload.created, 3))
        return ObservedStream(sse, self, trace)

    @never_raises
    def sent(self, action, worker: str) -> None:
        """A Send action of a turn went to this worker of its stage (the log says which, so that
        what a lost worker held can be told from the log)."""
        message = action.message
        log_turn(log, f"sending {tag_of(message)} to {action.stage}", message.session, message.turn,
                 stage=action.stage, worker=worker, tag=tag_of(message),
                 **({"index": message.index} if hasattr(message, "index") else {}))

    @never_raises
    def event(self, trace: TurnTrace, event: events.SseEvent, data: dict, sent: bool) -> None:
        now = time.monotonic()
        if event == events.TRANSCRIPT:
            log_turn(log, "transcript", trace.session, trace.turn, chars=len(data.get("text") or ""),
                     asr_s=data.get("asr_time"))
        elif event == events.CHUNK and sent:
            trace.chunks += 1
            if trace.first_chunk is None:
                trace.first_chunk = now
                ttfa = now - trace.started
                self.ttfa.observe(ttfa)
                self.upload_ttfa.observe(now - trace.uploaded)
                log_turn(log, "first chunk sent", trace.session, trace.turn, ttfa_s=round(ttfa, 4))
        elif event == events.DONE:
            trace.outcome = "done"
            timing = data.get("timing") or {}
            for key, (stage, measure) in events.STAGE_TIMINGS.items():
                value = timing.get(key)
                if isinstance(value, (int, float)) and value >= 0:
                    self.stage_seconds.labels(stage, measure).observe(value)
            self.turn_seconds.observe(now - trace.started)
            log_turn(log, "done", trace.session, trace.turn, chunks=data.get("chunks"), timing=timing,
                     end_reason=data.get("end_reason"), total_s=round(now - trace.started, 4))
        elif event == events.ERROR:
            stage = data.get("stage")
            kind = data.get("kind") or "error"  # named where the error is made (gateway/turn.py, app.py)
            trace.outcome, trace.stage = kind, stage or "gateway"
            log_turn(log, f"error: {kind}", trace.session, trace.turn, level=logging.WARNING, kind=kind,
                     stage=trace.stage, error=data.get("message"))

    @never_raises
    def turn_ended(self, sse, finished: bool) -> None:
        """The stream is over; finished: the answer completed (else the app cancels it on the workers holding it)."""
        if not isinstance(sse, ObservedStream):  # the stream never opened
            return
        trace = sse.trace
        if finished:
            self.turns_completed.inc()
            return
        if trace.outcome in (None, "done"):  # no error event went out: the client left
            trace.outcome, trace.stage = "disconnected", "gateway"
        self.errors.labels(trace.outcome, trace.stage).inc()
        log_turn(log, "turn ended early: cancelling it on the workers holding it", trace.session, trace.turn,
                 kind=trace.outcome, stage=trace.stage, chunks=trace.chunks,
                 after_s=round(time.monotonic() - trace.started, 3))
