"""The shared stage worker: sockets, I/O thread, inbox, heartbeats, signals, lifecycle.

Lifecycle: starting -> loading -> ready <-> busy -> draining -> stopped.
The model runs on the main thread; one I/O thread owns every bus socket, so heartbeats keep
flowing during a long generation and a stuck compute loop shows up as "busy for N ms".
Each worker binds its own inbox (requests and cancels for it alone) and names it in its hello and
heartbeats; the gateway connects to it, so it knows which worker holds each request.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import queue
import secrets
import signal
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Protocol

import zmq

import proto
from proto import (Envelope, ErrorKind, ProtocolError, StageBye, StageError, StageHeartbeat, StageHello, StageReady,
                   StopReason, TurnCancel, WorkerState)
from services.runtime import curve
from services.runtime.endpoints import MAX_MESSAGE_BYTES, ensure_run_dir, events_endpoint, inbox_endpoint, run_dir
from services.runtime.errors import EXIT_CONFIG, BadRequest, ConfigError
from services.runtime.logs import configure_logging as configure_process_logging
from services.runtime.logs import turn_fields
from services.runtime.observe import WorkerObserver
from services.runtime.settings import Setting, StageSettings

log = logging.getLogger("s2s.worker")

# Every stage's worker settings, S2S_<STAGE>_<KEY> (each declared once, here).
INBOX = Setting("INBOX", int, None, "queued requests before the stage answers \"busy\"; TTS takes a turn's first "
                "sentence before other turns' later ones", default_doc="the stage's own INBOX")
PARALLEL = Setting("PARALLEL", int, 1, "requests handled at once where the backend allows it: the LLM decodes them "
                   "in one shared batch (one forward pass per token for all replies); kokoro-onnx speaks each on its "
                   "own thread")
THREADS = Setting("THREADS", int, 0, "CPU threads for that stage (0 = one per core)")
NICE = Setting("NICE", int, 0, "CPU priority (0-19): a stage off the path to the first audio yields to those on it")
INBOX_ENDPOINT = Setting("INBOX_ENDPOINT", str, None, "where each worker binds its own inbox (its requests and "
                         "cancels; the gateway connects to it, learning it from the worker's hello). On another "
                         "host: this host's address as the gateway reaches it, e.g. `tcp://10.0.0.2:*` (any free "
                         "port); `tcp://` requires the CURVE keys below",
                         default_doc="`ipc://$S2S_RUN_DIR/<worker instance>.in`")
WORKER_SETTINGS = (INBOX, PARALLEL, THREADS, NICE, INBOX_ENDPOINT)

HEARTBEAT_S = 1.0
# SIGTERM budget: must stay below supervisor's stopwaitsecs (10 s in supervisord.conf).
DRAIN_BUDGET_S = 5.0
LIFECYCLE_RETRY_S = 5.0
LIFECYCLE = (StageHello, StageReady, StageError, StageBye)


@dataclass
class StageInfo:
    backend: str
    model: str
    device: str
    source: str = ""  # where the model came from: local | hub-cache | hub | registry
    reason: str = ""


Output = tuple[Envelope, tuple[bytes, ...]]


class Stage(Protocol):
    """What a stage implements: load its backend, then turn one request into outputs; and the
    capabilities the worker asks of it (StageDefaults declares each one's default)."""

    name: str
    request_type: type | tuple[type, ...]
    INBOX: int  # requests queued before the worker answers busy, unless S2S_<STAGE>_INBOX says
    parallel_ok: bool  # several requests may be handled at once (S2S_<STAGE>_PARALLEL)

    def priority(self, request: Envelope) -> int:
        """Where the request goes in the inbox: lower first, then by arrival."""
        ...

    def describe(self) -> StageInfo:
        """What the settings ask for, known before loading."""
        ...

    def load(self) -> StageInfo:
        """Load the backend (heavy); return what was really loaded and where."""
        ...

    def handle(self, request: Envelope, payload: list[bytes], stop: "StopCheck") -> Iterator[Output]: ...


class StageDefaults:
    """The optional capabilities of a Stage, as a stage has them unless it says otherwise."""

    INBOX = 16
    parallel_ok = False

    def priority(self, request: Envelope) -> int:
        return 0  # arrival order


class TurnBook:
    """Which (session, turn) pairs are cancelled or superseded; shared by both threads."""

    def __init__(self, capacity: int = 4096):
        self._lock = threading.Lock()
        self._latest: OrderedDict[str, int] = OrderedDict()  # session -> newest turn seen
        self._cancelled: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._capacity = capacity

    def note(self, session: str, turn: int) -> None:
        with self._lock:
            # A session's first turn is noted whatever its number (a negative one too).
            if turn >= self._latest.get(session, turn):
                self._latest[session] = turn
            self._latest.move_to_end(session)
            while len(self._latest) > self._capacity:
                self._latest.popitem(last=False)

    def cancel(self, session: str, turn: int) -> None:
        with self._lock:
            self._cancelled[(session, turn)] = None
            while len(self._cancelled) > self._capacity:
                self._cancelled.popitem(last=False)

    def is_live(self, session: str, turn: int) -> bool:
        with self._lock:
            if (session, turn) in self._cancelled:
                return False
            return turn >= self._latest.get(session, turn)


class StopCheck:
    """One request's stop check, handed to Stage.handle: tells the compute loop when to stop
    early (its turn cancelled or superseded, its deadline passed, the worker draining)."""

    def __init__(self, request: Envelope, book: TurnBook, draining: threading.Event):
        self.request = request
        self._book = book
        self._draining = draining

    def stale_reason(self) -> StopReason | None:
        if self._draining.is_set():
            return "shutdown"
        if not self._book.is_live(self.request.session, self.request.turn):
            return "cancelled"
        if self.request.deadline and time.monotonic() > self.request.deadline:
            return "deadline"
        return None

    def should_stop(self) -> bool:
        return self.stale_reason() is not None

    def is_live(self, session: str, turn: int) -> bool:
        """Whether another turn is still wanted (a stage that keeps state across requests, as
        ASR keeps streamed utterances, forgets those of cancelled turns)."""
        return self._book.is_live(session, turn)


class Worker:
    def __init__(self, stage: Stage, settings: StageSettings):
        self.stage = stage
        self.settings = settings
        self.instance = f"{stage.name}-{os.getpid()}-{secrets.token_hex(3)}"
        # Ordered by the stage's priority for each request (lower first), then by arrival.
        self.inbox: queue.PriorityQueue = queue.PriorityQueue(
            stage.INBOX if settings.value(INBOX) is None else settings.value(INBOX))
        self._arrivals = itertools.count()
        # Requests handled at once, each on its own compute thread (for backends that allow it).
        self.parallel = max(1, settings.value(PARALLEL))
        self._busy = 0  # requests being computed now (under _busy_lock)
        self._busy_lock = threading.Lock()
        self.book = TurnBook()
        self.draining = threading.Event()
        self.stopped = threading.Event()
        self.state: WorkerState = "starting"
        self.busy_since = 0.0
        self.dropped_frames = 0
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._ctx = zmq.Context.instance()
        self._outbox_addr = f"inproc://outbox-{self.instance}"
        # The I/O thread binds the outbox before the main thread connects to it.
        self._outbox_pull = self._ctx.socket(zmq.PAIR)
        self._outbox_pull.bind(self._outbox_addr)
        self._outbox = self._ctx.socket(zmq.PAIR)
        self._outbox.connect(self._outbox_addr)
        self._outbox_lock = threading.Lock()
        self.info = stage.describe()  # heartbeats carry it, so a restarted gateway learns it too
        # Lifecycle messages are retried briefly: the events socket may not be connected yet.
        self._retry: list[tuple[float, list[bytes]]] = []
        self.inbox_address = ""  # the endpoint bound for requests (tcp: with the port chosen)
        self._inbox_socket: zmq.Socket | None = None
        self._io = threading.Thread(target=self._io_loop, name=f"{stage.name}-io", daemon=True)
        self.observe = WorkerObserver(self)  # metrics and request logs (services/runtime/observe.py)

    @property
    def busy(self) -> int:
        """Requests being computed now (each on its compute thread)."""
        return self._busy

    # --- sending -------------------------------------------------------------------------------

    def stamp(self, message: Envelope, reply_to: Envelope | None = None) -> Envelope:
        with self._seq_lock:
            self._seq += 1
            message.seq = self._seq
        message.instance = self.instance
        message.sent = time.monotonic()
        if reply_to is not None:
            message.session, message.turn = reply_to.session, reply_to.turn
        return message

    def send(self, message: Envelope, *payload: bytes, reply_to: Envelope | None = None) -> None:
        """Queue a message for the I/O thread (the only thread that touches the bus).

        The first outbox frame says whether to retry it while the gateway is not connected:
        lifecycle messages (hello, ready, a load failure, bye) must not be lost to that race.
        """
        retry = b"r" if isinstance(message, LIFECYCLE) else b"-"
        with self._outbox_lock:  # numbered as queued: the outbox goes out in `seq` order
            frames = proto.encode(self.stamp(message, reply_to), *payload)
            self._outbox.send_multipart([retry, *frames], copy=False)

    def _send_now(self, message: Envelope, push: zmq.Socket, reply_to: Envelope | None = None) -> None:
        """On the I/O thread: send at once, after what the other threads queued (and numbered) first."""
        with self._outbox_lock:
            while self._outbox_pull.poll(0):
                self._forward_outbox(push)
            self._forward(proto.encode(self.stamp(message, reply_to)), push)

    # --- the I/O thread ------------------------------------------------------------------------

    def _bind_inbox(self) -> None:
        """Bind this worker's own inbox before the hello names it (the I/O thread then owns it)."""
        sock = self._ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # a larger frame drops its sender
        curve.secure_client(sock, curve.worker_keys(self.settings))  # tcp: only the gateway gets in
        endpoint = self.settings.value(INBOX_ENDPOINT) or inbox_endpoint(self.instance, self.settings)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise ConfigError(f"cannot bind this worker's inbox {endpoint} "
                              f"({self.settings.prefix}INBOX_ENDPOINT): {exc}") from None
        self._inbox_socket = sock
        self.inbox_address = sock.last_endpoint.decode()

    def _io_loop(self) -> None:
        pull = self._inbox_socket
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)  # a larger frame drops its sender
        curve.secure_client(push, curve.worker_keys(self.settings))  # tcp: authenticated to the gateway with CURVE
        # Nothing stale is queued for a gateway that is not there (or restarts).
        push.setsockopt(zmq.IMMEDIATE, 1)
        push.setsockopt(zmq.SNDHWM, 1000)
        push.connect(events_endpoint(self.settings))
        self._push = push
        poller = zmq.Poller()
        for sock in (pull, self._outbox_pull):
            poller.register(sock, zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self.stopped.is_set():
                timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000))
                for sock, _ in poller.poll(min(timeout_ms, 200)):
                    if sock is pull:
                        self._receive_safely(sock.recv_multipart(copy=True), push)
                    else:
                        self._forward_outbox(push)
                if self._retry:
                    self._resend()
                # No beat while a lifecycle message waits for the gateway: it would overtake the
                # hello (and the gateway learns the worker from its hello first).
                if time.monotonic() >= next_beat and not self._retry:
                    next_beat = time.monotonic() + HEARTBEAT_S
                    self._send_now(self._heartbeat(), push)
            # Flush what the main thread queued last (stage.bye, a load failure) before closing.
            while self._outbox_pull.poll(0):
                self._forward_outbox(push)
            give_up = time.monotonic() + 2.0
            while self._retry and time.monotonic() < give_up:
                time.sleep(0.05)
                self._resend()
        finally:
            push.close(linger=500)
            pull.close()  # an ipc inbox's socket file goes with it

    def _heartbeat(self) -> StageHeartbeat:
        busy_ms = int((time.monotonic() - self.busy_since) * 1000) if self.state == "busy" else 0
        return StageHeartbeat(stage=self.stage.name, state=self.state, busy_ms=busy_ms,
                              queue_depth=self.inbox.qsize(), dropped_frames=self.dropped_frames,
                              backend=self.info.backend, model=self.info.model, device=self.info.device,
                              source=self.info.source, inbox=self.inbox_address)

    def _forward_outbox(self, push: zmq.Socket) -> None:
        retry, *frames = self._outbox_pull.recv_multipart(copy=True)
        if retry == b"r" and self._retry:
            # Behind a lifecycle message still waiting to go: keep their order (hello before ready).
            self._retry.append((time.monotonic() + LIFECYCLE_RETRY_S, frames))
            self._resend()
        elif not self._forward(frames, push) and retry == b"r":
            self._retry.append((time.monotonic() + LIFECYCLE_RETRY_S, frames))

    def _forward(self, frames: list[bytes], push: zmq.Socket) -> bool:
        """False when the gateway is absent or saturated (a result for it is then moot)."""
        try:
            push.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _resend(self) -> None:
        """Send waiting lifecycle messages in order; stop at the first that still cannot go."""
        while self._retry:
            expires, frames = self._retry[0]
            if not self._forward(frames, self._push) and time.monotonic() < expires:
                return
            self._retry.pop(0)

    def _receive_safely(self, frames: list[bytes], push: zmq.Socket) -> None:
        """One frame that trips a bug must not end the I/O thread: the process would live on, deaf
        and without heartbeats, so its supervisor would never restart it."""
        try:
            self._receive(frames, push)
        except Exception:
            self.dropped_frames += 1
            log.exception("dropped a frame that could not be handled")

    def _receive(self, frames: list[bytes], push: zmq.Socket) -> None:
        """A frame from this worker's inbox: a request for its stage, or a cancel of a turn."""
        try:
            message, payload = proto.decode(frames)
        except ProtocolError as exc:
            self.dropped_frames += 1
            log.warning("dropped malformed frame: %s", exc)
            return
        if isinstance(message, TurnCancel):
            self.book.cancel(message.session, message.turn)
            self.observe.received(message)
            return
        if not isinstance(message, self.stage.request_type):
            self.dropped_frames += 1
            log.warning("dropped unexpected %s", proto.tag_of(message))
            return
        self.book.note(message.session, message.turn)
        self.observe.received(message)
        if self.draining.is_set():
            self._reject(message, "shutdown", f"{self.stage.name} stage is shutting down", push)
            return
        try:
            self.inbox.put_nowait((self.stage.priority(message), next(self._arrivals), message, payload))
        except queue.Full:
            self._reject(message, "busy", f"{self.stage.name} stage is saturated", push)

    def _reject(self, request: Envelope, kind: ErrorKind, text: str, push: zmq.Socket) -> None:
        error = StageError(stage=self.stage.name, kind=kind, message=text)
        self.observe.rejected(request, kind, text)
        self._send_now(error, push, reply_to=request)

    # --- the main thread -----------------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        log.info("signal %s: draining", signal.Signals(signum).name)
        self.draining.set()
        if self.state == "loading":
            raise SystemExit(0)  # loading cannot be interrupted politely; just leave

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        ensure_run_dir(run_dir(self.settings))
        try:
            self._bind_inbox()
        except ConfigError as exc:
            log.error("%s stage cannot start: %s", self.stage.name, exc)
            return EXIT_CONFIG
        self._io.start()
        try:
            self.state = "loading"
            started = time.monotonic()
            wanted = self.stage.describe()
            self.send(StageHello(stage=self.stage.name, backend=wanted.backend, model=wanted.model,
                                 device=wanted.device, pid=os.getpid(), source=wanted.source,
                                 inbox=self.inbox_address))
            try:
                info = self.stage.load()
            except ConfigError as exc:
                log.error("%s stage cannot start: %s", self.stage.name, exc)
                self.send(StageError(stage=self.stage.name, kind="load_failed", message=str(exc)))
                return EXIT_CONFIG
            load_s = time.monotonic() - started
            self.info = info
            log.info("%s ready: backend=%s model=%s source=%s device=%s (loaded in %.1f s)",
                     self.stage.name, info.backend, info.model, info.source, info.device, load_s)
            self.state = "ready"
            self.send(StageReady(stage=self.stage.name, backend=info.backend, model=info.model,
                                 device=info.device, load_s=round(load_s, 3), source=info.source,
                                 reason=info.reason))
            self._serve()
            return 0
        finally:
            self.state = "draining"
            self.send(StageBye(stage=self.stage.name, reason="exit"))
            self.stopped.set()
            self._io.join(timeout=2)
            self._outbox.close(linger=0)
            self._outbox_pull.close(linger=0)

    def _serve(self) -> None:
        parallel = self.parallel
        if parallel > 1 and not self.stage.parallel_ok:
            log.warning("%s: PARALLEL=%d ignored: the %s backend handles one request at a time",
                        self.stage.name, parallel, self.info.backend)
            parallel = 1
        helpers = [threading.Thread(target=self._serve_one, name=f"{self.stage.name}-compute-{i}", daemon=True)
                   for i in range(1, parallel)]
        for helper in helpers:
            helper.start()
        self._serve_one()
        for helper in helpers:
            helper.join()

    def _serve_one(self) -> None:
        while not self.draining.is_set():
            try:
                _, _, request, payload = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            self._process(request, payload)

    def _process(self, request: Envelope, payload: list[bytes]) -> None:
        stop = StopCheck(request, self.book, self.draining)
        if stop.should_stop():
            self.observe.stale_dropped(request, stop.stale_reason())
            return
        with self._busy_lock:
            if self._busy == 0:
                self.state, self.busy_since = "busy", time.monotonic()
            self._busy += 1
        started = self.observe.started(request)
        outputs = self.stage.handle(request, payload, stop)
        try:
            for message, frames in outputs:
                if stop.should_stop():
                    break
                self.send(message, *frames, reply_to=request)
            if stop.stale_reason() == "shutdown":
                self._fail(request, "shutdown", f"{self.stage.name} stage shut down mid-request")
        except BadRequest as exc:
            self._fail(request, "bad_request", str(exc))
        except Exception as exc:  # a model failure must not take the worker down
            log.exception("%s failed on a request", self.stage.name, extra=turn_fields(request.session, request.turn))
            self._fail(request, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            outputs.close()
            self.observe.finished(request, stop, started)
            with self._busy_lock:
                self._busy -= 1
                if self._busy == 0 and self.state == "busy":
                    self.state = "ready"

    def _fail(self, request: Envelope, kind: ErrorKind, text: str) -> None:
        self.observe.failed(request, kind, text)
        self.send(StageError(stage=self.stage.name, kind=kind, message=text), reply_to=request)


def configure_logging(process: str = "worker") -> None:
    """JSON lines (or text: S2S_LOG_FORMAT) on stderr; see services/runtime/logs.py."""
    configure_process_logging(process)


def apply_cpu_settings(settings: StageSettings) -> None:
    """THREADS pins this stage's CPU thread pool so stages sharing a machine do not oversubscribe it;
    NICE lowers its CPU priority (0..19), so a stage off the path to the first audio yields to those on it."""
    threads = settings.value(THREADS)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    nice = settings.value(NICE)
    if not 0 <= nice <= 19:
        raise ConfigError(f"{settings.prefix}NICE must be between 0 and 19, got {nice}")
    if nice:
        os.nice(nice)
        log.info("%s runs at nice %d", settings.stage, os.nice(0))


def main(stage_factory) -> None:
    """Entry point shared by s2s-asr, s2s-llm and s2s-tts."""
    name = stage_factory.name
    argparse.ArgumentParser(prog=f"s2s-{name}", description=f"Run one {name} stage worker. Settings come from "
                            f"S2S_{name.upper()}_* environment variables over config/{name}.env "
                            f"(README, Settings).").parse_args()
    configure_logging(name)
    try:
        settings = StageSettings.load(stage_factory.name)
        curve.worker_keys(settings)  # tcp endpoints without CURVE keys: refused
        ensure_run_dir(run_dir(settings))  # a run dir of someone else's, or a symlink: refused
        apply_cpu_settings(settings)
        stage = stage_factory(settings)
    except ConfigError as exc:
        log.error("%s stage cannot start: %s", stage_factory.name, exc)
        sys.exit(EXIT_CONFIG)
    worker = Worker(stage, settings)
    worker.observe.serve()  # its own metrics port; one that is taken is logged, never fatal
    sys.exit(worker.run())
