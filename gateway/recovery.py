"""One turn's view of the workers that hold its work: a worker that goes away (killed, crashed,
restarted by an operator), or that hangs while another worker of its stage is up, gets its
unfinished requests sent again, once, to the stage (another worker, or the one that replaces it);
a stage that hangs or fails with no worker left ends the turn with an error naming it."""

from __future__ import annotations

from proto import Envelope, StageError, tag_of
from services.runtime.endpoints import STAGES

from gateway.stages import StageBoard
from gateway.turn import Action, Send, TurnState

RequestKey = tuple[str, int]  # (stage, sentence index for tts, else -1)


def request_key(stage: str, message: Envelope) -> RequestKey:
    """Which of a turn's requests a request or a result is about: a turn has one ASR and one LLM
    request, and one TTS request per sentence (which several TTS workers may share out)."""
    return stage, (message.index if stage == "tts" else -1)


class Recovery:
    def __init__(self, board: StageBoard, wait_s: float, clock):
        self.board = board
        self.wait_s = wait_s  # how long to wait for a replacement worker to be ready
        self.clock = clock
        # Which workers may hold each request: every ready one of its stage when it was sent (the
        # stage's socket hands it to one of them), narrowed to one by its first result.
        self.holders: dict[RequestKey, set[str]] = {}
        self.lost: dict[str, tuple[float, set[str]]] = {}  # stage -> when its work was lost, and where
        self.resent: set[str] = set()  # stages already given a second try
        self.resent_requests = 0

    def sent(self, stage: str, message: Envelope) -> None:
        """Sent to a ready stage: one of its ready workers has it."""
        self.holders[request_key(stage, message)] = self.board.ready_instances(stage)

    def on_message(self, message: Envelope) -> bool:
        """Notes which worker answers each request. True when the message is about lost work and is
        handled here: a worker that shuts down mid-request (an operator's restart) will be back, or
        another worker of its stage is up, so its request is sent again."""
        if isinstance(message, StageError):
            if message.kind == "shutdown" and message.stage in STAGES:
                self._lose(message.stage, {message.producer})
                return True
            return False
        stage = tag_of(message).split(".", 1)[0]
        if stage in STAGES:
            self.holders[request_key(stage, message)] = {message.producer}
        return False

    def _lose(self, stage: str, instances: set[str]) -> None:
        # counted from when the first of them went (the board knows for those that left the bus)
        went = min((self.board.gone.get(i, self.clock()) for i in instances), default=self.clock())
        when, lost_from = self.lost.get(stage, (went, set()))
        self.lost[stage] = (min(when, went), lost_from | instances)

    def _lost_holders(self, stage: str, requests: list[Send]) -> set[str]:
        """Workers holding some of these requests that will not answer: gone, or hung (down,
        stuck) while another worker of the stage takes requests."""
        holders = set().union(*(self.holders.get(request_key(stage, r.message), set()) for r in requests))
        up = self.board.ready_instances(stage)  # a hung holder is never among them
        hung = {h for h in holders if self.board.worker_state(stage, h) in ("down", "stuck")}
        gone = {h for h in holders if self.board.is_gone(h)}
        return gone | (hung if up else set())

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
            # what the lost workers held (or may have held): the rest is in good hands
            again = [r for r in requests if self.holders.get(request_key(stage, r.message), set()) & lost_from]
            if not again:
                return []
            self.resent.add(stage)
            for request in again:
                self.holders.pop(request_key(stage, request.message), None)
            self.resent_requests += len(again)
            return again  # Send actions: the gateway sends them and notes the new holders
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
