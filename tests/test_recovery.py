"""The gateway's stage board, its addressed dispatch and a turn's recovery policy, with a fake
clock and no sockets: which worker gets each request, which requests go again after a worker goes
away, when a turn gives up, and why."""

import asyncio
import time

from gateway.app import Gateway, LiveTurn
from gateway.bus import WorkerUnavailable
from gateway.dispatch import Dispatch, NoWorker
from gateway.recovery import Recovery
from gateway.settings import GatewaySettings
from gateway.stages import STUCK_AFTER_S, StageBoard
from gateway.turn import Emit, Send
from proto import (AsrFinal, LlmSentence, StageBye, StageError, StageHeartbeat, StageHello, StageReady,
                   TtsDone, TtsRequest, TurnCancel)
from tests.test_turn import Clock, audio, events, ids, new_turn

WAIT_S = 30.0


def ready(board: StageBoard, stage: str, instance: str, pid: int = 1) -> None:
    for message in (StageHello(stage=stage, backend="b", model="m", device="cpu", pid=pid),
                    StageReady(stage=stage, backend="b", model="m", device="cpu", load_s=1.0)):
        message.instance = instance
        board.seen(stage, instance)
        board.update(message)


def beat(board: StageBoard, stage: str, instance: str, state: str = "ready", busy_ms: int = 0) -> None:
    message = StageHeartbeat(stage=stage, state=state, busy_ms=busy_ms, queue_depth=0)
    message.instance = instance
    board.seen(stage, instance)
    board.update(message)


def tick(clock: Clock, board: StageBoard, seconds: float, *silent: str) -> None:
    """Time passes; every worker of every stage keeps beating except those of the silent stages."""
    clock.now += seconds
    for stage, status in board.stages.items():
        if stage not in silent:
            for worker in list(status.workers.values()):
                beat(board, stage, worker.instance, worker.state if worker.state in ("ready", "busy") else "ready")


class Inboxes:
    """The bus as dispatch sees it, without sockets: what each worker's inbox received."""

    def __init__(self):
        self.received: dict[str, list] = {}
        self.full: set[str] = set()  # workers whose queue is full

    def send(self, instance, message, *payload):
        if instance in self.full:
            raise WorkerUnavailable(f"the queue of worker {instance} is full")
        self.received.setdefault(instance, []).append(message)

    def disconnect(self, instance, dead=False):
        self.full.discard(instance)


def setup():
    clock = Clock()
    board = StageBoard(clock=clock)
    for stage in ("asr", "llm", "tts"):
        ready(board, stage, f"{stage}-a")
        board.connection(f"{stage}-a", True)
    turn = new_turn()
    turn.clock = clock
    recovery = Recovery(board, Dispatch(board, Inboxes()), WAIT_S, clock)
    return clock, board, turn, recovery


def send_all(actions, recovery):
    """What the gateway does with Send actions: each goes to the stage's least loaded ready worker."""
    sends = [a for a in actions if isinstance(a, Send)]
    for send in sends:
        recovery.dispatch.send(send.stage, send.message, *send.payload)
    return sends


def llm_turn_with_two_sentences(turn, recovery):
    send_all(turn.start(b"\x01\x00" * 8), recovery)
    send_all(turn.on_message(ids(AsrFinal(text="hi", compute_s=0.1, audio_s=1.0)), []), recovery)
    for i, text in enumerate(["One.", "Two."]):
        send_all(turn.on_message(ids(LlmSentence(index=i, text=text, elapsed_s=0.1)), []), recovery)


def errors(actions):
    return [a.data for a in actions if isinstance(a, Emit) and a.event == "error"]


def test_a_killed_stage_gets_the_unfinished_requests_once_its_replacement_is_ready():
    clock, board, turn, recovery = setup()
    llm_turn_with_two_sentences(turn, recovery)
    turn.on_message(*audio(0))
    turn.on_message(ids(TtsDone(index=0, parts=1, compute_s=0.1, audio_s=0.5)), [])  # sentence 0 spoken
    board.connection("tts-a", False)  # kill -9: its connection closes
    assert board.state("tts") == "down" and board.is_gone("tts-a")
    assert recovery.check(turn) == [] and recovery.waiting()  # wait for supervisor's new one
    tick(clock, board, 5, "tts")
    ready(board, "tts", "tts-b")
    board.connection("tts-b", True)
    resent = send_all(recovery.check(turn), recovery)
    # only sentence 1 was unfinished; the LLM (still writing) was not touched
    assert [(s.stage, s.message.index, s.message.text) for s in resent] == [("tts", 1, "Two.")]
    assert recovery.dispatch.bus.received["tts-b"] == [resent[0].message] and not recovery.waiting()
    assert recovery.check(turn) == []  # nothing more to do while tts-b works


def test_a_stage_lost_twice_ends_the_turn_naming_it():
    clock, board, turn, recovery = setup()
    llm_turn_with_two_sentences(turn, recovery)
    board.connection("llm-a", False)
    ready(board, "llm", "llm-b")
    board.connection("llm-b", True)
    [again] = send_all(recovery.check(turn), recovery)
    assert again.stage == "llm" and again.message.history[-1].content == "hi"
    board.connection("llm-b", False)  # the replacement dies too
    [error] = errors(recovery.check(turn))
    assert error["stage"] == "llm" and "again" in error["message"]


def test_a_hung_stage_ends_the_turn_at_once_without_waiting():
    clock, board, turn, recovery = setup()
    llm_turn_with_two_sentences(turn, recovery)
    tick(clock, board, 2.5, "llm")
    assert recovery.check(turn) == []  # 2.5 s without a heartbeat: not yet
    tick(clock, board, 1.0, "llm")  # SIGSTOP: connected, silent; three beats missed
    [error] = errors(recovery.check(turn))
    assert error["stage"] == "llm" and "no heartbeat" in error["message"]


def test_a_stage_that_does_not_come_back_in_time_ends_the_turn():
    clock, board, turn, recovery = setup()
    send_all(turn.start(b"\x01\x00" * 8), recovery)
    board.connection("asr-a", False)
    for _ in range(int(WAIT_S) - 1):
        tick(clock, board, 1, "asr")
    assert recovery.check(turn) == []
    tick(clock, board, 2, "asr")
    [error] = errors(recovery.check(turn))
    assert error["stage"] == "asr" and "did not come back" in error["message"]


def test_a_stage_that_fails_to_load_after_a_restart_ends_the_turn():
    clock, board, turn, recovery = setup()
    send_all(turn.start(b"\x01\x00" * 8), recovery)
    board.connection("asr-a", False)
    hello = StageHello(stage="asr", backend="b", model="m", device="cpu", pid=2)
    failed = StageError(stage="asr", kind="load_failed", message="cannot load model /x")
    for message in (hello, failed):
        message.instance = "asr-b"
        board.update(message)
    [error] = errors(recovery.check(turn))
    assert error["stage"] == "asr" and "cannot load model /x" in error["message"]


def test_an_operators_restart_is_a_lost_request_not_a_failure():
    """A draining worker answers "shutdown"; the request goes to its replacement, not to it."""
    clock, board, turn, recovery = setup()
    [asr] = send_all(turn.start(b"\x01\x00" * 8), recovery)
    shutdown = ids(StageError(stage="asr", kind="shutdown", message="asr stage shut down mid-request"))
    shutdown.instance = "asr-a"
    assert recovery.on_message(shutdown)
    assert recovery.check(turn) == []  # asr-a is still there (draining): not the one to ask
    bye = StageBye(stage="asr", reason="exit")
    bye.instance = "asr-a"
    board.update(bye)
    ready(board, "asr", "asr-b")
    [again] = send_all(recovery.check(turn), recovery)
    assert again.stage == "asr" and again.payload == asr.payload  # the same audio


def test_other_errors_are_not_recovery_business():
    _, _, _, recovery = setup()
    assert not recovery.on_message(ids(StageError(stage="tts", kind="failed", message="boom")))
    assert not recovery.waiting()


def test_resent_results_already_received_are_dropped():
    """The restarted LLM writes the same sentences again: those already taken are not spoken twice."""
    clock, board, turn, recovery = setup()
    llm_turn_with_two_sentences(turn, recovery)
    assert turn.on_message(ids(LlmSentence(index=0, text="One.", elapsed_s=0.1)), []) == []
    assert turn.on_message(ids(LlmSentence(index=1, text="Two.", elapsed_s=0.1)), []) == []
    [tts] = turn.on_message(ids(LlmSentence(index=2, text="Three.", elapsed_s=0.1)), [])
    assert tts.message.index == 2
    assert events(turn.on_message(*audio(0))) == ["chunk"]
    assert turn.on_message(*audio(0)) == []  # the same part from the restarted TTS: dropped


def test_the_board_ignores_a_gone_instance_and_reports_a_stuck_one():
    clock, board, _, _ = setup()
    board.connection("tts-a", False)
    tick(clock, board, 1)
    beat(board, "tts", "tts-a")  # a heartbeat of the dead instance, still in the socket, among others
    assert board.state("tts") == "down"
    ready(board, "tts", "tts-b")
    board.connection("tts-b", True)
    assert board.state("tts") == "ready" and set(board.stages["tts"].workers) == {"tts-b"}
    board.result_seen("tts")
    for _ in range(int(STUCK_AFTER_S) + 1):
        tick(clock, board, 1, "tts")
        beat(board, "tts", "tts-b", state="busy", busy_ms=int((clock.now - 101) * 1000))
    assert board.state("tts") == "stuck"
    board.result_seen("tts")  # it answered: busy, but not stuck
    assert board.state("tts") == "busy"


def test_a_load_failure_that_comes_after_the_connection_closed_still_says_why():
    clock, board, _, _ = setup()
    board.connection("tts-a", False)
    hello = StageHello(stage="tts", backend="b", model="m", device="cpu", pid=2)
    hello.instance = "tts-b"
    board.update(hello)
    board.connection("tts-b", True)
    board.connection("tts-b", False)  # tts-b exits 78 ...
    failed = StageError(stage="tts", kind="load_failed", message="cannot load /missing.pth")
    failed.instance = "tts-b"
    board.update(failed)  # ... and its last messages are read after that
    bye = StageBye(stage="tts", reason="exit")
    bye.instance = "tts-b"
    board.update(bye)
    assert board.state("tts") == "failed" and "/missing.pth" in board.stages["tts"].error


# --- several workers per stage (supervisor numprocs) ------------------------------------------


def two_tts_workers():
    clock, board, turn, recovery = setup()
    ready(board, "tts", "tts-b", pid=2)
    board.connection("tts-b", True)
    return clock, board, turn, recovery


def result(message, instance):
    message.instance = instance
    return message


def held_by(recovery, turn, instance):
    """The sentence indexes of the turn that dispatch recorded as held by a worker."""
    return sorted(index for index in range(len(turn.sentences)) if recovery.dispatch.holder(
        "tts", TtsRequest(index=index, text="", voice="", session=turn.session, turn=turn.turn)) == instance)


def test_a_request_goes_to_the_ready_worker_with_the_shortest_queue():
    clock, board, turn, recovery = two_tts_workers()
    dispatch = recovery.dispatch
    beat(board, "tts", "tts-a", state="busy", busy_ms=500)  # working on one, two more queued
    board.stages["tts"].workers["tts-a"].queue_depth = 2
    requests = [TtsRequest(index=i, text="x", voice="v", session="s", turn=1) for i in range(4)]
    # tts-b holds 0, then 1, then 2 (its queue grows with what was sent since its beat); then
    # both hold three and the tie goes to the one chosen least recently
    assert [dispatch.send("tts", r) for r in requests] == ["tts-b", "tts-b", "tts-b", "tts-a"]
    assert [dispatch.holder("tts", r) for r in requests] == ["tts-b", "tts-b", "tts-b", "tts-a"]
    assert [m.index for m in dispatch.bus.received["tts-b"]] == [0, 1, 2]
    beat(board, "tts", "tts-b", state="busy", busy_ms=100)  # its beat: idle queue, one in progress
    assert board.pick("tts") == "tts-b"
    clock.now += 4  # neither beats: both down, nothing to choose
    assert board.pick("tts") is None
    try:
        dispatch.send("tts", requests[0])
        raise AssertionError("sent to a stage with no ready worker")
    except NoWorker as exc:
        assert "no tts worker is ready" in str(exc)


def test_a_request_pinned_to_a_worker_goes_there_whatever_the_queues():
    clock, board, turn, recovery = two_tts_workers()
    dispatch = recovery.dispatch
    board.stages["tts"].workers["tts-a"].queue_depth = 5
    request = TtsRequest(index=0, text="x", voice="v", session="s", turn=1)
    assert dispatch.send("tts", request, to="tts-a") == "tts-a" and dispatch.holder("tts", request) == "tts-a"
    assert dispatch.bus.received == {"tts-a": [request]}
    board.connection("tts-a", False)
    for gone in ("tts-a", "asr-a", "nobody"):  # gone, of another stage, never there
        try:
            dispatch.send("tts", request, to=gone)
            raise AssertionError(f"sent to {gone}")
        except NoWorker:
            pass
    assert dispatch.bus.received == {"tts-a": [request]}


def test_a_cancel_goes_to_the_workers_holding_the_turn_and_no_other():
    clock, board, turn, recovery = two_tts_workers()
    ready(board, "tts", "tts-c", pid=3)
    dispatch = recovery.dispatch
    send_all(turn.start(b"\x01\x00" * 8), recovery)
    final = result(ids(AsrFinal(text="hi", compute_s=0.1, audio_s=1.0)), "asr-a")
    send_all(turn.on_message(final, []), recovery)
    dispatch.finished("asr", final)  # the ASR request is done: asr-a holds nothing of the turn now
    send_all(turn.on_message(ids(LlmSentence(index=0, text="One.", elapsed_s=0.1)), []), recovery)
    [tts_holder] = dispatch.holders(turn.session, turn.turn) - {"llm-a"}
    other = dispatch.send("tts", TtsRequest(index=0, text="x", voice="v", session="other", turn=1))
    assert other != tts_holder and dispatch.holding() == {"llm-a": 1, tts_holder: 1, other: 1}
    reached = dispatch.cancel(turn.session, turn.turn, "stream closed")
    assert reached == {"llm-a", tts_holder}
    cancels = {w: [m for m in got if isinstance(m, TurnCancel)] for w, got in dispatch.bus.received.items()}
    assert {w for w, got in cancels.items() if got} == reached  # not asr-a, not the TTS worker holding none of it
    assert all((c.session, c.turn, c.reason) == (turn.session, turn.turn, "stream closed") for c in cancels[tts_holder])
    dispatch.end_turn(turn.session, turn.turn)
    assert dispatch.holders(turn.session, turn.turn) == set() and dispatch.cancel(turn.session, turn.turn, "x") == set()


def test_a_dead_workers_requests_go_at_once_to_another_worker_of_the_stage():
    clock, board, turn, recovery = two_tts_workers()
    llm_turn_with_two_sentences(turn, recovery)
    victim = recovery.dispatch.holder("tts", ids(TtsRequest(index=0, text="", voice="")))
    survivor = ({"tts-a", "tts-b"} - {victim}).pop()
    assert held_by(recovery, turn, victim) == [0] and held_by(recovery, turn, survivor) == [1]  # one each
    board.connection(victim, False)  # its process closed its connection
    assert board.is_gone(victim) and not board.is_gone(survivor)
    assert board.state("tts") == "ready"  # the survivor still serves
    resent = send_all(recovery.check(turn), recovery)
    assert [(s.stage, s.message.index) for s in resent] == [("tts", 0)]  # exactly the victim's sentence
    assert held_by(recovery, turn, survivor) == [0, 1]  # the only worker left took it


def test_a_hung_worker_among_several_has_exactly_its_requests_sent_again():
    clock, board, turn, recovery = two_tts_workers()
    llm_turn_with_two_sentences(turn, recovery)
    hung = recovery.dispatch.holder("tts", ids(TtsRequest(index=1, text="", voice="")))
    survivor = ({"tts-a", "tts-b"} - {hung}).pop()
    for _ in range(4):  # the hung one is SIGSTOPped: connected, silent; the others beat on
        clock.now += 1
        for stage, instance in (("asr", "asr-a"), ("llm", "llm-a"), ("tts", survivor)):
            beat(board, stage, instance)
    assert board.worker_state("tts", hung) == "down" and board.state("tts") == "ready"
    resent = send_all(recovery.check(turn), recovery)
    assert [s.message.index for s in resent] == [1]  # not the survivor's sentence 0
    assert held_by(recovery, turn, survivor) == [0, 1]


def test_the_board_shows_each_worker():
    clock, board, _, _ = two_tts_workers()
    board.result_seen("tts", "tts-b")
    workers = {w["instance"]: w for w in board.snapshot()["tts"]["workers"]}
    assert set(workers) == {"tts-a", "tts-b"} and workers["tts-b"]["results"] == 1
    assert workers["tts-a"]["pid"] == 1 and workers["tts-b"]["state"] == "ready"
    assert board.snapshot()["tts"]["peers"] == 2
    board.connection("tts-b", False)
    assert [w["instance"] for w in board.snapshot()["tts"]["workers"]] == ["tts-a"]
    assert board.snapshot()["tts"]["peers"] == 1


def test_every_result_and_error_of_a_turn_reaches_it():
    """Each message about a request passes dispatch's bookkeeping on its way to the turn: a TTS
    error (which names no sentence) too."""
    gateway = Gateway(GatewaySettings(), Inboxes())
    ready(gateway.board, "tts", "tts-a")
    inbox = asyncio.Queue()
    gateway.live[("conv", 2)] = LiveTurn(None, 2, inbox)
    request = ids(TtsRequest(index=1, text="x", voice="v"))
    gateway.dispatch.send("tts", request)
    messages = [result(ids(m), "tts-a") for m in (
        StageError(stage="tts", kind="busy", message="tts stage is saturated"),
        TtsDone(index=1, parts=1, compute_s=0.1, audio_s=0.5))]
    for message in messages:
        gateway.on_bus_message(message, [])
    assert [inbox.get_nowait()[0] for _ in messages] == messages
    assert gateway.dispatch.holder("tts", request) is None  # its final result came


# --- sending to a worker that died a moment ago ------------------------------------------------


def gateway_with_llm_ready():
    gateway = Gateway(GatewaySettings(stage_wait_s=5.0), Inboxes())
    ready(gateway.board, "llm", "llm-a", pid=11)
    gateway.board.connection("llm-a", True)
    turn = new_turn()
    turn.start(b"\x01\x00" * 8)
    [request] = [a for a in turn.on_message(ids(AsrFinal(text="hi", compute_s=0.1, audio_s=1.0)), [])
                 if isinstance(a, Send)]  # the turn now waits on the LLM alone
    return gateway, turn, request


async def test_a_request_sent_to_a_worker_that_just_died_goes_to_its_replacement():
    """The worker was killed but its closed connection is not seen yet: the stage still looks
    ready, so the request goes to it. Its closed connection then shows it gone, and the turn's
    recovery sends exactly that request to the replacement once it is ready."""
    gateway, turn, request = gateway_with_llm_ready()
    recovery = Recovery(gateway.board, gateway.dispatch, 5.0, time.monotonic)
    assert await gateway._send(turn, request, lambda: False) == []
    assert gateway.dispatch.holder("llm", request.message) == "llm-a"
    gateway.on_bus_connection("llm-a", False)  # the closed connection is seen
    assert recovery.check(turn) == [] and recovery.waiting()  # waiting for supervisor's new worker
    ready(gateway.board, "llm", "llm-b", pid=12)
    [again] = recovery.check(turn)
    assert again == request  # the same request (the turn state keeps its own copy)
    assert await gateway._send(turn, again, lambda: False) == []
    assert gateway.bus.received == {"llm-a": [request.message], "llm-b": [request.message]}
    assert gateway.dispatch.holder("llm", request.message) == "llm-b"


async def test_a_send_to_a_worker_whose_queue_is_full_fails_at_once():
    gateway, turn, request = gateway_with_llm_ready()
    gateway.bus.full.add("llm-a")
    started = time.monotonic()
    [error, finish] = await asyncio.wait_for(gateway._send(turn, request, lambda: False), 5)
    assert time.monotonic() - started < 1.0
    assert error.data["stage"] == "llm" and "the queue of worker llm-a is full" in error.data["message"]
