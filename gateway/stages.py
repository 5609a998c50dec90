"""What the gateway knows about each stage, from hello/ready/heartbeat/error/bye messages."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

from proto import Envelope, StageBye, StageError, StageHeartbeat, StageHello, StageReady
from services.runtime.endpoints import STAGES

DOWN_AFTER_S = 3.0  # three missed one-second heartbeats
STUCK_AFTER_S = 120.0  # busy this long without a result for any turn (a long sentence on one loaded core takes over 30 s)


@dataclass
class StageStatus:
    state: str = "down"  # down | loading | ready | busy | stuck | draining | failed
    backend: str = ""
    model: str = ""
    device: str = ""
    source: str = ""  # local | hub-cache | hub | registry
    reason: str = ""  # why that model and source
    pid: int = 0
    instance: str = ""
    queue_depth: int = 0
    busy_ms: int = 0
    load_s: float = 0.0
    error: str = ""
    last_seen: float = 0.0  # monotonic
    last_result: float = 0.0  # monotonic time of its last result for any turn
    peers: int = 0  # workers connected to its socket


class StageBoard:
    def __init__(self, clock=time.monotonic, stuck_after_s: float = STUCK_AFTER_S):
        self.clock = clock
        self.stuck_after_s = stuck_after_s
        self.stages = {name: StageStatus() for name in STAGES}
        # Instances that said bye or whose process left the bus: their work is lost, and a stray
        # message of theirs still in flight must not make the stage look alive again.
        self.gone: OrderedDict[str, float] = OrderedDict()  # instance -> when it went

    def update(self, message: Envelope) -> None:
        stage = getattr(message, "stage", None)
        status = self.stages.get(stage or "")
        if status is None:
            return
        if message.producer in self.gone:
            # a gone instance's last words may come after its connection closed: a load failure
            # still says why the stage is down (unless a new instance already speaks for it)
            if (isinstance(message, StageError) and not message.session
                    and status.instance == message.producer):
                status.state, status.error = "failed", message.message
            return
        status.last_seen = self.clock()
        status.instance = message.producer
        if isinstance(message, StageHello):
            status.state, status.error = "loading", ""
            status.backend, status.model, status.device, status.pid, status.source = (
                message.backend, message.model, message.device, message.pid, message.source)
        elif isinstance(message, StageReady):
            status.state, status.load_s = "ready", message.load_s
            status.backend, status.model, status.device = message.backend, message.model, message.device
            status.source, status.reason = message.source, message.reason
        elif isinstance(message, StageHeartbeat):
            status.state = message.state
            status.queue_depth, status.busy_ms = message.queue_depth, message.busy_ms
            if message.backend:
                status.backend, status.model, status.device = message.backend, message.model, message.device
                status.source = message.source
        elif isinstance(message, StageError) and not message.session:
            status.state, status.error = "failed", message.message
        elif isinstance(message, StageBye):
            if status.state != "failed":  # a stage that could not load says bye too: keep why
                status.state = "down"
            self._mark_gone(message.producer)

    def seen(self, stage: str, producer: str = "") -> None:
        """Any message from a stage counts as a heartbeat."""
        if stage in self.stages and producer not in self.gone:
            self.stages[stage].last_seen = self.clock()

    def peer(self, stage: str, joined: bool) -> None:
        """A worker connected to or left the stage's socket (from the bus's connection events)."""
        status = self.stages.get(stage)
        if status is None:
            return
        status.peers = status.peers + 1 if joined else max(0, status.peers - 1)
        if not joined and status.peers == 0 and status.instance:
            # its process is gone (exited, killed or crashed): supervisor starts a new one
            if status.state != "failed":
                status.state, status.error = "down", "its process exited"
            self._mark_gone(status.instance)

    def _mark_gone(self, instance: str) -> None:
        if instance:
            self.gone[instance] = self.clock()
            while len(self.gone) > 256:
                self.gone.popitem(last=False)

    def instance(self, stage: str) -> str:
        """The instance that last spoke for the stage (the one a request sent now reaches)."""
        return self.stages[stage].instance

    def is_gone(self, instance: str) -> bool:
        return instance in self.gone

    def result_seen(self, stage: str) -> None:
        status = self.stages.get(stage)
        if status is not None:
            status.last_result = self.clock()

    def progressing(self, stage: str, within_s: float) -> bool:
        """The stage produced a result for some turn within the last within_s seconds: a request
        that waits longer is queued behind other turns' work, not lost."""
        status = self.stages.get(stage)
        return (status is not None and self.state(stage) in ("ready", "busy")
                and self.clock() - status.last_result <= within_s)

    def state(self, stage: str) -> str:
        status = self.stages[stage]
        now = self.clock()
        if status.state != "failed" and now - status.last_seen > DOWN_AFTER_S:
            return "down"
        if (status.state == "busy" and status.busy_ms / 1000 > self.stuck_after_s
                and now - status.last_result > self.stuck_after_s):
            return "stuck"
        return status.state

    def is_ready(self, stage: str) -> bool:
        return self.state(stage) in ("ready", "busy")

    def snapshot(self) -> dict[str, dict]:
        now = self.clock()
        out = {}
        for name, status in self.stages.items():
            info = asdict(status)
            info["state"] = self.state(name)
            info["last_seen_s_ago"] = round(now - status.last_seen, 3) if status.last_seen else None
            del info["last_seen"]
            out[name] = info
        return out
