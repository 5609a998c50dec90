"""One turn's view of the workers that hold its work: a worker that goes away (killed, crashed,
restarted by an operator), or that hangs while another worker of its stage is up, gets exactly
the unfinished requests it held sent again, once, to the stage (another worker, or the one that
replaces it); a stage that hangs or fails with no worker left ends the turn with an error naming it.
Which worker holds each request is recorded when it is sent (gateway/dispatch.py)."""

from __future__ import annotations

from gateway.dispatch import Dispatch
from gateway.stages import StageBoard
from gateway.turn import Action, Send, TurnState
from proto import Envelope, StageError
from services.runtime.endpoints import STAGES


class Recovery:
    def __init__(self, board: StageBoard, dispatch: Dispatch, wait_s: float, clock):
        self.board = board
        self.dispatch = dispatch  # who holds each request
        self.wait_s = wait_s  # how long to wait for a replacement worker to be ready
        self.clock = clock
        self.lost: dict[str, tuple[float, set[str]]] = {}  # stage -> when its work was lost, and where
        self.resent: set[str] = set()  # stages already given a second try

    def on_message(self, message: Envelope) -> bool:
        """True when the message is about lost work and is handled here: a worker that shuts down
        mid-request (an operator's restart) will be back, or another worker of its stage is up,
        so its request is sent again."""
        if isinstance(message, StageError) and message.kind == "shutdown" and message.stage in STAGES:
            self._lose(message.stage, {message.instance})
            return True
        return False

    def _lose(self, stage: str, instances: set[str]) -> None:
        # counted from when the first of them went (the board knows for those that left the bus)
        went = min((self.board.gone.get(i, self.clock()) for i in instances), default=self.clock())
        when, lost_from = self.lost.get(stage, (went, set()))
        self.lost[stage] = (min(when, went), lost_from | instances)

    def _lost_holders(self, stage: str, requests: list[Send]) -> set[str]:
        """Workers holding some of these requests that will not answer: gone, or hung (down,
        stuck) while another worker of the stage takes requests."""
        holders = {self.dispatch.holder(stage, r.message) for r in requests} - {None}
        gone = {h for h in holders if self.board.is_gone(h)}
        if not self.board.ready_instances(stage):  # a hung holder is never among them
            return gone
        return gone | {h for h in holders if self.board.worker_state(stage, h) in ("down", "stuck")}

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
            if lost := self._lost_holders(stage, requests):
                self._lose(stage, lost)
            if stage in self.lost:
                actions = self._recover(state, stage, requests)
            elif self.board.state(stage) in ("down", "stuck", "failed"):
                actions = state.on_stage_down(stage, self._reason(stage))  # hung, not gone
            else:
                continue
            if actions:
                return actions
        return []

    def _recover(self, state: TurnState, stage: str, requests: list[Send]) -> list[Action]:
        if stage in self.resent:
            return state.on_stage_down(stage, "it stopped again after a restart")
        when, lost_from = self.lost[stage]
        if self.board.ready_instances(stage) - lost_from:
            del self.lost[stage]
            # exactly what the lost workers held: the rest is in good hands
            again = [r for r in requests if self.dispatch.holder(stage, r.message) in lost_from]
            if again:
                self.resent.add(stage)
            return again  # Send actions: the gateway sends them, and dispatch records the new holders
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
            return f"it has been busy for {self.board.busy_ms(stage) / 1000:.0f} s without a result"
        return state + (f": {status.error}" if status.error else "")
