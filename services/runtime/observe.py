"""What a stage worker tells about its requests: Prometheus metrics on its own HTTP port and one
log line at each step a request passes (received, started, finished with its duration, cancelled,
stale dropped, failed, rejected).

The worker (services/runtime/worker.py) calls in at those steps; what it already keeps (inbox,
busy count, state, dropped frames) is read at scrape time. Every metric carries the labels
`stage` (asr | llm | tts) and `instance` (the worker's instance id, as in stage.hello and
/api/stages).

Settings (declared below): S2S_<STAGE>_METRICS_PORT (0: no metrics server) plus
S2S_WORKER_INDEX (supervisor sets it when a stage runs several workers, so each gets its own
port); S2S_<STAGE>_METRICS_HOST. A port that is taken is logged as an error and the worker serves
on without metrics.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from proto import ERROR_KINDS, STOP_REASONS, WORKER_STATES, Envelope, ErrorKind, StopReason, TurnCancel, WorkerState
from proto import tag_of
from services.runtime.errors import ConfigError
from services.runtime.logs import log_turn
from services.runtime.settings import Setting, StageSettings



# What the observer reads of the worker (services/runtime/worker.py), declared here so that this
# module does not import the worker that imports it.
class ObservedStage(Protocol):
    name: str
    request_type: type


class LoadedModel(Protocol):
    backend: str
    model: str
    device: str
    source: str


class Worker(Protocol):
    stage: ObservedStage
    instance: str
    settings: StageSettings
    inbox: queue.Queue
    state: WorkerState
    busy: int  # requests being computed now
    busy_since: float  # monotonic
    dropped_frames: int
    info: LoadedModel


class StopCheck(Protocol):
    def stale_reason(self) -> StopReason | None: ...

log = logging.getLogger("s2s.worker.requests")

METRICS_PORTS = {"asr": 9101, "llm": 9102, "tts": 9103}
METRICS_PORT = Setting("METRICS_PORT", int, None, "the worker's Prometheus port (`0`: none); a port that is taken is "
                       "logged and the worker serves on without metrics",
                       default_doc=", ".join(f"`{port}` {stage}" for stage, port in METRICS_PORTS.items()))
METRICS_HOST = Setting("METRICS_HOST", str, "127.0.0.1", "the worker's metrics bind address")
WORKER_INDEX = Setting("WORKER_INDEX", int, 0, "added to the metrics port, so several workers of one stage do not "
                       "collide (supervisord.conf sets it to the process number)")  # project-wide: S2S_WORKER_INDEX
# How a request ended. ok: answered in full; a stop reason (cancelled, deadline, shutdown): stopped
# part-way; an error kind it was answered with (failed, bad_request, busy); stale: dropped from the
# inbox before it started (its turn was cancelled, superseded or late).
OUTCOMES = ("ok", *STOP_REASONS, *(k for k in ERROR_KINDS if k not in STOP_REASONS and k != "load_failed"), "stale")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
                   120.0)
_ARRIVALS_KEPT = 4096


def never_raises(method):
    """For the hooks that a worker or the gateway calls on the path of a request: a bug in
    observing must not break serving (nor leave a worker counted busy forever)."""

    @functools.wraps(method)
    def guarded(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception:
            logging.getLogger("s2s.observe").exception("observing %s failed", method.__name__)
            return None

    return guarded


def _fields(request: Envelope) -> dict:
    out = {"tag": tag_of(request)}
    index = getattr(request, "index", None)
    if index is not None:
        out["index"] = index
    return out


class _StateCollector:
    """The worker's live state, read at scrape time."""

    def __init__(self, worker: "Worker", labels: list[str]):
        self.worker = worker
        self.labels = labels

    def describe(self):
        return []

    def collect(self):
        w, names, values = self.worker, ["stage", "instance"], self.labels
        inbox = GaugeMetricFamily("s2s_worker_inbox_depth", "Requests waiting in the inbox", labels=names)
        inbox.add_metric(values, w.inbox.qsize())
        busy = GaugeMetricFamily("s2s_worker_busy", "Requests being computed now", labels=names)
        busy.add_metric(values, w.busy)
        busy_s = GaugeMetricFamily("s2s_worker_busy_seconds", "How long the worker has been busy without a break",
                                   labels=names)
        busy_s.add_metric(values, time.monotonic() - w.busy_since if w.state == "busy" else 0.0)
        state = GaugeMetricFamily("s2s_worker_state", "1 for the worker's lifecycle state", labels=[*names, "state"])
        for name in WORKER_STATES:
            state.add_metric([*values, name], 1.0 if name == w.state else 0.0)
        malformed = CounterMetricFamily("s2s_worker_malformed_frames",
                                        "Malformed or unexpected frames dropped", labels=names)
        malformed.add_metric(values, w.dropped_frames)
        info = GaugeMetricFamily("s2s_worker_info", "The loaded backend", labels=[*names, "backend", "model",
                                                                                  "device", "source"])
        info.add_metric([*values, w.info.backend, w.info.model, w.info.device, w.info.source], 1.0)
        yield from (inbox, busy, busy_s, state, malformed, info)


class WorkerObserver:
    def __init__(self, worker: "Worker"):
        self.worker = worker
        self.stage = worker.stage.name
        self.registry = CollectorRegistry()
        labels = [self.stage, worker.instance]
        r, names = self.registry, ["stage", "instance"]
        self.received_total = Counter("s2s_worker_requests_received", "Requests that reached the worker",
                                      names, registry=r).labels(*labels)
        self.cancels_total = Counter("s2s_worker_cancels_received", "turn.cancel messages received", names,
                                     registry=r).labels(*labels)
        requests = Counter("s2s_worker_requests", "Requests by how they ended", [*names, "outcome"], registry=r)
        self.outcomes = {outcome: requests.labels(*labels, outcome) for outcome in OUTCOMES}
        stale = Counter("s2s_worker_stale_dropped", "Requests dropped before they started, by why",
                        [*names, "reason"], registry=r)
        self.stale = {reason: stale.labels(*labels, reason) for reason in STOP_REASONS}
        cancelled = Counter("s2s_worker_cancelled", "Requests stopped part-way, by why", [*names, "reason"],
                            registry=r)
        self.cancelled = {reason: cancelled.labels(*labels, reason) for reason in STOP_REASONS}
        self.compute_seconds = Histogram("s2s_worker_request_seconds", "Compute time of a request (started to "
                                         "finished, whatever the outcome)", names, buckets=LATENCY_BUCKETS,
                                         registry=r).labels(*labels)
        self.wait_seconds = Histogram("s2s_worker_queue_wait_seconds", "Time a request waited in the inbox",
                                      names, buckets=LATENCY_BUCKETS, registry=r).labels(*labels)
        self.registry.register(_StateCollector(worker, labels))
        self._lock = threading.Lock()
        self._arrived: OrderedDict[int, float] = OrderedDict()  # id(request) -> monotonic arrival
        self._failed: dict[int, tuple[str, str]] = {}  # id(request) -> (kind, text), set by _fail
        self.server = None
        self.port: int | None = None

    # --- the metrics server --------------------------------------------------------------------

    def serve(self) -> int | None:
        """Start the metrics server; the port it listens on, or None (disabled, or it could not)."""
        settings = self.worker.settings
        try:
            base = settings.value(METRICS_PORT)
            base = METRICS_PORTS.get(self.stage, 0) if base is None else base
            index_text = settings.get_global(WORKER_INDEX.key, str(WORKER_INDEX.default))
            try:
                index = int(index_text)
            except ValueError:
                raise ConfigError(f"S2S_WORKER_INDEX must be an integer, got {index_text!r}") from None
        except ConfigError as exc:
            log.error("%s serves without metrics: %s", self.stage, exc)
            return None
        if base <= 0:
            log.info("%s metrics server disabled (%sMETRICS_PORT=0)", self.stage, settings.prefix)
            return None
        port = base + index
        host = settings.value(METRICS_HOST)
        try:
            self.server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error("%s serves without metrics: cannot listen on %s:%d (%s); set %sMETRICS_PORT to a free "
                      "port (S2S_WORKER_INDEX=%d is added to it) or 0 to turn metrics off",
                      self.stage, host, port, exc.strerror or exc, settings.prefix, index)
            return None
        self.port = port
        log.info("%s metrics at http://%s:%d/metrics", self.stage, host, port)
        return port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # --- a request's steps ---------------------------------------------------------------------

    @never_raises
    def received(self, message: Envelope) -> None:
        """On the I/O thread: a decoded message for this worker (a request, a cancel or a stray)."""
        if isinstance(message, TurnCancel):
            self.cancels_total.inc()
            log_turn(log, "cancel received", message.session, message.turn, reason=message.reason)
            return
        if not isinstance(message, self.worker.stage.request_type):
            return  # counted as a dropped frame by the worker
        self.received_total.inc()
        with self._lock:
            self._arrived[id(message)] = time.monotonic()
            while len(self._arrived) > _ARRIVALS_KEPT:
                self._arrived.popitem(last=False)
        log_turn(log, "request received", message.session, message.turn, queued=self.worker.inbox.qsize(),
                 **_fields(message))

    def _arrival(self, request: Envelope) -> float | None:
        with self._lock:
            return self._arrived.pop(id(request), None)

    @never_raises
    def rejected(self, request: Envelope, kind: ErrorKind, text: str) -> None:
        """Refused at the door (inbox full, shutting down)."""
        self._arrival(request)
        self.outcomes["busy" if kind == "busy" else "shutdown"].inc()
        log_turn(log, f"request rejected: {kind}", request.session, request.turn, level=logging.WARNING,
                 kind=kind, error=text, **_fields(request))

    @never_raises
    def stale_dropped(self, request: Envelope, reason: StopReason | None) -> None:
        """Taken from the inbox and dropped without starting: its turn is over."""
        arrived = self._arrival(request)
        reason = reason if reason in self.stale else "cancelled"
        self.stale[reason].inc()
        self.outcomes["stale"].inc()
        waited = round(time.monotonic() - arrived, 4) if arrived is not None else None
        log_turn(log, f"request dropped: {reason}", request.session, request.turn, reason=reason, waited_s=waited,
                 **_fields(request))

    @never_raises
    def started(self, request: Envelope) -> float:
        now = time.monotonic()
        arrived = self._arrival(request)
        waited = None
        if arrived is not None:
            waited = now - arrived
            self.wait_seconds.observe(waited)
        log_turn(log, "request started", request.session, request.turn,
                 waited_s=round(waited, 4) if waited is not None else None, **_fields(request))
        return now

    @never_raises
    def failed(self, request: Envelope, kind: ErrorKind, text: str) -> None:
        """The worker answered the request with a stage.error (on the compute thread)."""
        self._failed[id(request)] = (kind, text)

    @never_raises
    def finished(self, request: Envelope, stop: "StopCheck", started: float | None) -> None:
        duration = time.monotonic() - (started or time.monotonic())
        self.compute_seconds.observe(duration)
        kind, text = self._failed.pop(id(request), (None, None))
        reason = stop.stale_reason()
        if kind is not None:
            outcome = kind if kind in self.outcomes else "failed"
        elif reason is not None:
            outcome = reason if reason in self.cancelled else "cancelled"
        else:
            outcome = "ok"
        self.outcomes[outcome].inc()
        if outcome in self.cancelled:
            self.cancelled[outcome].inc()
        fields = {"outcome": outcome, "duration_s": round(duration, 4), **_fields(request)}
        if outcome == "ok":
            log_turn(log, "request finished", request.session, request.turn, **fields)
        elif outcome in ("cancelled", "deadline"):
            log_turn(log, f"request stopped: {outcome}", request.session, request.turn, **fields)
        else:
            log_turn(log, f"request failed: {outcome}", request.session, request.turn, level=logging.WARNING,
                     error=text, **fields)
