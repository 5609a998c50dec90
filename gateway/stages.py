"""What the gateway knows about each stage, from hello/ready/heartbeat/error/bye messages."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from proto import Envelope, StageBye, StageError, StageHeartbeat, StageHello, StageReady
from services.runtime.endpoints import STAGES

DOWN_AFTER_S = 3.0  # three missed one-second heartbeats


@dataclass
class StageStatus:
    state: str = "down"  # down | loading | ready | busy | draining | failed
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


class StageBoard:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.stages = {name: StageStatus() for name in STAGES}

    def update(self, message: Envelope) -> None:
        stage = getattr(message, "stage", None)
        status = self.stages.get(stage or "")
        if status is None:
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
            status.state = "down"

    def seen(self, stage: str) -> None:
        """Any message from a stage counts as a heartbeat."""
        if stage in self.stages:
            self.stages[stage].last_seen = self.clock()

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
        if status.state != "failed" and self.clock() - status.last_seen > DOWN_AFTER_S:
            return "down"
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
