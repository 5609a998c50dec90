"""What the gateway knows about each stage and each of its workers, from hello/ready/heartbeat/
error/bye messages and from the connection to each worker's inbox.

A stage may run several workers (supervisor `numprocs`): the stage is ready while any of them is,
and each worker is tracked on its own, so the one that dies or hangs is told apart from the rest,
and a request goes to the ready worker with the shortest queue.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

from proto import (STAGE_MESSAGES, STAGE_STATES, TAKES_REQUESTS, Envelope, StageBye, StageError, StageHeartbeat, StageHello,
                   StageReady, StageState, WorkerState)
from services.runtime.endpoints import STAGES

DOWN_AFTER_S = 3.0  # three missed one-second heartbeats
STUCK_AFTER_S = 120.0  # busy this long without a result for any turn (a long sentence on one loaded core takes over 30 s)


@dataclass
class WorkerStatus:
    instance: str
    pid: int = 0
    state: WorkerState | StageState = "loading"  # as it last said, or failed (down and stuck are computed)
    queue_depth: int = 0
    busy_ms: int = 0
    last_seen: float = 0.0  # monotonic
    last_result: float = 0.0
    results: int = 0  # result messages it sent for turns
    connected: bool = False  # the gateway's connection to its inbox is open
    sent_since_beat: int = 0  # requests sent to it since its last heartbeat counted its queue
    chosen: int = 0  # when it was last sent a request (a count): ties go to the one idle longest

    def load(self) -> int:
        """Requests it holds, as far as the gateway knows: queued at its last heartbeat, the one
        it works on, and those sent since."""
        return self.queue_depth + (self.state == "busy") + self.sent_since_beat


@dataclass
class StageStatus:
    state: WorkerState | StageState = "down"  # the last lifecycle news for the stage
    backend: str = ""
    model: str = ""
    device: str = ""
    source: str = ""  # local | hub-cache | hub | registry
    reason: str = ""  # why that model and source
    load_s: float = 0.0
    error: str = ""
    last_seen: float = 0.0  # monotonic
    last_result: float = 0.0  # monotonic time of its last result for any turn
    workers: dict[str, WorkerStatus] = field(default_factory=dict)  # instance -> its status, gone ones removed


class StageBoard:
    def __init__(self, clock=time.monotonic, stuck_after_s: float = STUCK_AFTER_S, down_after_s: float = DOWN_AFTER_S):
        self.clock = clock
        self.stuck_after_s = stuck_after_s
        self.down_after_s = down_after_s
        self.stages = {name: StageStatus() for name in STAGES}
        # Instances that said bye or whose process left the bus: their work is lost, and a stray
        # message of theirs still in flight must not make the stage look alive again.
        self.gone: OrderedDict[str, float] = OrderedDict()  # instance -> when it went
        self._choices = itertools.count(1)

    def update(self, message: Envelope) -> None:
        if not isinstance(message, STAGE_MESSAGES):
            return
        stage = message.stage
        status = self.stages.get(stage)
        if status is None:
            return
        if message.instance in self.gone:
            # a gone instance's last words may come after its connection closed: a load failure
            # still says why the stage is down (unless another worker already speaks for it)
            if isinstance(message, StageError) and not message.session and not status.workers:
                status.state, status.error = "failed", message.message
            return
        now = self.clock()
        status.last_seen = now
        worker = status.workers.setdefault(message.instance, WorkerStatus(message.instance))
        worker.last_seen = now
        if isinstance(message, StageHello):
            status.state, status.error = "loading", ""
            status.backend, status.model, status.device, status.source = (
                message.backend, message.model, message.device, message.source)
            worker.state, worker.pid = "loading", message.pid
        elif isinstance(message, StageReady):
            status.state, status.load_s = "ready", message.load_s
            status.backend, status.model, status.device = message.backend, message.model, message.device
            status.source, status.reason = message.source, message.reason
            worker.state = "ready"
        elif isinstance(message, StageHeartbeat):
            status.state = message.state
            worker.state, worker.queue_depth, worker.busy_ms = message.state, message.queue_depth, message.busy_ms
            worker.sent_since_beat = 0
            if message.backend:
                status.backend, status.model, status.device = message.backend, message.model, message.device
                status.source = message.source
        elif isinstance(message, StageError) and not message.session:
            status.state, status.error = "failed", message.message
            worker.state = "failed"
        elif isinstance(message, StageBye):
            if status.state != "failed":  # a stage that could not load says bye too: keep why
                status.state = "down"
            self._mark_gone(stage, message.instance)

    def seen(self, stage: str, instance: str = "") -> None:
        """Any message from a stage counts as a heartbeat."""
        status = self.stages.get(stage)
        if status is None or instance in self.gone:
            return
        status.last_seen = self.clock()
        if instance in status.workers:
            status.workers[instance].last_seen = status.last_seen

    def connection(self, instance: str, connected: bool) -> None:
        """The gateway's connection to a worker's inbox opened, or closed: its process is gone
        (exited, killed or crashed), and supervisor starts a new one."""
        for stage, status in self.stages.items():
            worker = status.workers.get(instance)
            if worker is None:
                continue
            worker.connected = connected
            if not connected:
                self._mark_gone(stage, instance)
                if not status.workers and status.state != "failed":
                    status.state, status.error = "down", "its process exited"

    def _mark_gone(self, stage: str, instance: str) -> None:
        self.stages[stage].workers.pop(instance, None)
        self.gone[instance] = self.clock()
        while len(self.gone) > 256:
            self.gone.popitem(last=False)

    def is_gone(self, instance: str) -> bool:
        return instance in self.gone

    def ready_instances(self, stage: str) -> set[str]:
        """The workers that take requests now."""
        return {i for i in self.stages[stage].workers if self.worker_state(stage, i) in TAKES_REQUESTS}

    def pick(self, stage: str) -> str | None:
        """The ready worker of the stage with the shortest queue (WorkerStatus.load); on a tie the
        one chosen least recently. None when no worker of the stage is ready."""
        ready = [self.stages[stage].workers[i] for i in self.ready_instances(stage)]
        return min(ready, key=lambda w: (w.load(), w.chosen)).instance if ready else None

    def sent_to(self, stage: str, instance: str) -> None:
        """A request went to this worker: it counts in its queue until its next heartbeat."""
        worker = self.stages[stage].workers.get(instance)
        if worker is not None:
            worker.sent_since_beat += 1
            worker.chosen = next(self._choices)

    def result_seen(self, stage: str, instance: str = "") -> None:
        status = self.stages.get(stage)
        if status is None:
            return
        status.last_result = self.clock()
        worker = status.workers.get(instance)
        for w in [worker] if worker else status.workers.values():
            w.last_result = status.last_result
        if worker:
            worker.results += 1

    def progressing(self, stage: str, within_s: float) -> bool:
        """The stage produced a result for some turn within the last within_s seconds: a request
        that waits longer is queued behind other turns' work, not lost."""
        status = self.stages.get(stage)
        return (status is not None and self.state(stage) in TAKES_REQUESTS
                and self.clock() - status.last_result <= within_s)

    def worker_state(self, stage: str, instance: str) -> WorkerState | StageState:
        worker = self.stages[stage].workers.get(instance)
        if worker is None:
            return "down"
        now = self.clock()
        if worker.state != "failed" and now - worker.last_seen > self.down_after_s:
            return "down"
        if (worker.state == "busy" and worker.busy_ms / 1000 > self.stuck_after_s
                and now - worker.last_result > self.stuck_after_s):
            return "stuck"
        return worker.state

    def state(self, stage: str) -> StageState:
        status = self.stages[stage]
        states = {self.worker_state(stage, i) for i in status.workers}
        if status.state == "failed" and not states & {"ready", "busy", "loading"}:
            return "failed"  # kept over the bye, the closed connection and the missed beats
        return next((s for s in STAGE_STATES if s in states), "down")  # the first, in precedence order

    def is_ready(self, stage: str) -> bool:
        return self.state(stage) in TAKES_REQUESTS

    def has_workers(self, stage: str) -> bool:
        """Some worker of the stage is still there (connected, not said bye), whatever its state."""
        return bool(self.stages[stage].workers)

    def busy_ms(self, stage: str) -> int:
        """The longest a worker of the stage has been busy without a break (last heartbeats)."""
        return max((w.busy_ms for w in self.stages[stage].workers.values()), default=0)

    def snapshot(self) -> dict[str, dict]:
        now = self.clock()
        out = {}
        for name, status in self.stages.items():
            info = asdict(status)
            info["state"] = self.state(name)
            info["last_seen_s_ago"] = round(now - status.last_seen, 3) if status.last_seen else None
            info["queue_depth"] = sum(w.queue_depth for w in status.workers.values())
            info["busy_ms"] = self.busy_ms(name)
            info["peers"] = sum(w.connected for w in status.workers.values())  # inboxes connected to
            info["workers"] = [{"instance": w.instance, "pid": w.pid, "state": self.worker_state(name, w.instance),
                                "queue_depth": w.queue_depth, "busy_ms": w.busy_ms, "results": w.results,
                                "last_seen_s_ago": round(now - w.last_seen, 3)}
                               for w in status.workers.values()]
            del info["last_seen"]
            out[name] = info
        return out
