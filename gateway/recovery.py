"""One turn's view of the stages that hold its work: a stage instance that goes away (killed,
crashed, restarted by an operator) gets the turn's unfinished requests sent again, once, to the
instance that replaces it; a stage that hangs or fails ends the turn with an error naming it."""

from __future__ import annotations

from proto import Envelope, StageError
from services.runtime.endpoints import STAGES

from gateway.stages import StageBoard
from gateway.turn import Action, TurnState


class Recovery:
    def __init__(self, board: StageBoard, wait_s: float, clock):
        self.board = board
        self.wait_s = wait_s  # how long to wait for the replacement instance to be ready
        self.clock = clock
        self.holders: dict[str, set[str]] = {}  # stage -> instances the turn's requests went to
        self.lost: dict[str, tuple[float, set[str]]] = {}  # stage -> when its work was lost, and where
        self.resent: set[str] = set()  # stages already given a second try
        self.resent_requests = 0

    def sent(self, stage: str) -> None:
        self.holders.setdefault(stage, set()).add(self.board.instance(stage))

    def on_message(self, message: Envelope) -> bool:
        """True when the message is about lost work and is handled here: a stage that shuts down
        mid-request (an operator's restart) will be back, so its request is sent again."""
        if isinstance(message, StageError) and message.kind == "shutdown" and message.stage in STAGES:
            self._lose(message.stage, {message.producer})
            return True
        return False

    def _lose(self, stage: str, instances: set[str]) -> None:
        # counted from when the first of them went (the board knows for those that left the bus)
        went = min((self.board.gone.get(i, self.clock()) for i in instances), default=self.clock())
        when, lost_from = self.lost.get(stage, (went, set()))
        self.lost[stage] = (min(when, went), lost_from | instances)

    def waiting(self) -> bool:
        """Waiting for a replacement instance (the turn's silence is expected meanwhile)."""
        return bool(self.lost)

    def check(self, state: TurnState) -> list[Action]:
        """Called on every tick of the turn: re-send, keep waiting, or end the turn."""
        for stage in STAGES:
            requests = state.requests_on(stage)
            if not requests:
                self.lost.pop(stage, None)
                continue
            holders = self.holders.get(stage, set())
            gone = {h for h in holders if self.board.is_gone(h)}
            if gone:
                self._lose(stage, gone)
            if stage in self.lost:
                actions = self._recover(state, stage, requests)
            elif self.board.state(stage) in ("down", "stuck", "failed"):
                actions = state.on_stage_down(stage, self._reason(stage))  # hung, not gone
            else:
                continue
            if actions:
                return actions
        return []

    def _recover(self, state: TurnState, stage: str, requests: list) -> list[Action]:
        if stage in self.resent:
            return state.on_stage_down(stage, "it stopped again after a restart")
        when, lost_from = self.lost[stage]
        current = self.board.instance(stage)
        if self.board.is_ready(stage) and current not in lost_from and not self.board.is_gone(current):
            del self.lost[stage]
            self.resent.add(stage)
            self.holders[stage] = set()
            self.resent_requests += len(requests)
            return list(requests)  # Send actions: the gateway sends them and notes the new holder
        if self.board.state(stage) == "failed":
            return state.on_stage_down(stage, self._reason(stage))
        if self.clock() - when > self.wait_s:
            return state.on_stage_down(stage, f"it did not come back within {self.wait_s:.0f} s")
        return []

    def _reason(self, stage: str) -> str:
        status = self.board.stages[stage]
        state = self.board.state(stage)
        if state == "down" and not status.error:
            return "it stopped responding (no heartbeat)"
        if state == "stuck":
            return f"it has been busy for {status.busy_ms / 1000:.0f} s without a result"
        return state + (f": {status.error}" if status.error else "")
