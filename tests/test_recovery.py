"""The gateway's stage board and a turn's recovery policy, with a fake clock and no sockets:
which requests go again after a stage instance goes away, when a turn gives up, and why."""

import asyncio
import time

from gateway.app import Gateway
from gateway.bus import StageUnavailable
from gateway.recovery import Recovery
from gateway.settings import GatewaySettings
from gateway.stages import STUCK_AFTER_S, StageBoard
from gateway.turn import Emit, Send
from proto import AsrFinal, LlmRequest, LlmSentence, StageBye, StageError, StageHeartbeat, StageHello, StageReady, TtsDone
from tests.test_turn import Clock, audio, events, ids, new_turn

WAIT_S = 30.0


def ready(board: StageBoard, stage: str, instance: str, pid: int = 1) -> None:
    for message in (StageHello(stage=stage, backend="b", model="m", device="cpu", pid=pid),
                    StageReady(stage=stage, backend="b", model="m", device="cpu", load_s=1.0)):
        message.producer = instance
        board.seen(stage, instance)
        board.update(message)


def beat(board: StageBoard, stage: str, instance: str, state: str = "ready", busy_ms: int = 0) -> None:
    message = StageHeartbeat(stage=stage, state=state, busy_ms=busy_ms, queue_depth=0)
    message.producer = instance
    board.seen(stage, instance)
    board.update(message)


def tick(clock: Clock, board: StageBoard, seconds: float, *silent: str) -> None:
    """Time passes; every stage's instance keeps beating except the silent ones."""
    clock.now += seconds
    for stage, status in board.stages.items():
        if stage not in silent:
            beat(board, stage, status.instance, status.state if status.state != "down" else "ready")


def setup():
    clock = Clock()
    board = StageBoard(clock=clock)
    for stage in ("asr", "llm", "tts"):
        ready(board, stage, f"{stage}-a")
        board.peer(stage, True)
    turn = new_turn()
    turn.clock = clock
    recovery = Recovery(board, WAIT_S, clock)
    return clock, board, turn, recovery


def send_all(actions, recovery):
    """What the gateway does with Send actions: the request reaches the stage's current instance."""
    sends = [a for a in actions if isinstance(a, Send)]
    for send in sends:
        recovery.sent(send.stage, send.message)
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
    board.peer("tts", False)  # kill -9: its connection closes
    assert board.state("tts") == "down" and board.is_gone("tts-a")
    assert recovery.check(turn) == [] and recovery.waiting()  # wait for supervisor's new one
    tick(clock, board, 5, "tts")
    ready(board, "tts", "tts-b")
    board.peer("tts", True)
    resent = send_all(recovery.check(turn), recovery)
    # only sentence 1 was unfinished; the LLM (still writing) was not touched
    assert [(s.stage, s.message.index, s.message.text) for s in resent] == [("tts", 1, "Two.")]
    assert recovery.resent_requests == 1 and not recovery.waiting()
    assert recovery.check(turn) == []  # nothing more to do while tts-b works


def test_a_stage_lost_twice_ends_the_turn_naming_it():
    clock, board, turn, recovery = setup()
    llm_turn_with_two_sentences(turn, recovery)
    board.peer("llm", False)
    ready(board, "llm", "llm-b")
    board.peer("llm", True)
    [again] = send_all(recovery.check(turn), recovery)
    assert again.stage == "llm" and again.message.history[-1].content == "hi"
    board.peer("llm", False)  # the replacement dies too
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
    board.peer("asr", False)
    for _ in range(int(WAIT_S) - 1):
        tick(clock, board, 1, "asr")
    assert recovery.check(turn) == []
    tick(clock, board, 2, "asr")
    [error] = errors(recovery.check(turn))
    assert error["stage"] == "asr" and "did not come back" in error["message"]


def test_a_stage_that_fails_to_load_after_a_restart_ends_the_turn():
    clock, board, turn, recovery = setup()
    send_all(turn.start(b"\x01\x00" * 8), recovery)
    board.peer("asr", False)
    hello = StageHello(stage="asr", backend="b", model="m", device="cpu", pid=2)
    failed = StageError(stage="asr", kind="load_failed", message="cannot load model /x")
    for message in (hello, failed):
        message.producer = "asr-b"
        board.update(message)
    [error] = errors(recovery.check(turn))
    assert error["stage"] == "asr" and "cannot load model /x" in error["message"]


def test_an_operators_restart_is_a_lost_request_not_a_failure():
    """A draining worker answers "shutdown"; the request goes to its replacement, not to it."""
    clock, board, turn, recovery = setup()
    [asr] = send_all(turn.start(b"\x01\x00" * 8), recovery)
    shutdown = ids(StageError(stage="asr", kind="shutdown", message="asr stage shut down mid-request"))
    shutdown.producer = "asr-a"
    assert recovery.on_message(shutdown)
    assert recovery.check(turn) == []  # asr-a is still there (draining): not the one to ask
    bye = StageBye(stage="asr", reason="exit")
    bye.producer = "asr-a"
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
    board.peer("tts", False)
    tick(clock, board, 1)  # a heartbeat of the dead instance, still in the socket, among others
    assert board.state("tts") == "down"
    ready(board, "tts", "tts-b")
    board.peer("tts", True)
    assert board.state("tts") == "ready" and board.instance("tts") == "tts-b"
    board.result_seen("tts")
    for _ in range(int(STUCK_AFTER_S) + 1):
        tick(clock, board, 1, "tts")
        beat(board, "tts", "tts-b", state="busy", busy_ms=int((clock.now - 101) * 1000))
    assert board.state("tts") == "stuck"
    board.result_seen("tts")  # it answered: busy, but not stuck
    assert board.state("tts") == "busy"


def test_a_load_failure_that_comes_after_the_connection_closed_still_says_why():
    clock, board, _, _ = setup()
    board.peer("tts", False)
    hello = StageHello(stage="tts", backend="b", model="m", device="cpu", pid=2)
    hello.producer = "tts-b"
    board.update(hello)
    board.peer("tts", True)
    board.peer("tts", False)  # tts-b exits 78 ...
    failed = StageError(stage="tts", kind="load_failed", message="cannot load /missing.pth")
    failed.producer = "tts-b"
    board.update(failed)  # ... and its last messages are read after that
    bye = StageBye(stage="tts", reason="exit")
    bye.producer = "tts-b"
    board.update(bye)
    assert board.state("tts") == "failed" and "/missing.pth" in board.stages["tts"].error


# --- several workers per stage (supervisor numprocs) ------------------------------------------


def two_tts_workers():
    clock, board, turn, recovery = setup()
    ready(board, "tts", "tts-b", pid=2)
    board.peer("tts", True)
    return clock, board, turn, recovery


def result(message, producer):
    message.producer = producer
    return message


def test_a_request_is_held_by_the_worker_that_answers_it():
    clock, board, turn, recovery = two_tts_workers()
    llm_turn_with_two_sentences(turn, recovery)
    # sent to the stage: either worker may hold each sentence until one answers
    assert recovery.holders[("tts", 0)] == recovery.holders[("tts", 1)] == {"tts-a", "tts-b"}
    recovery.on_message(result(audio(1)[0], "tts-b"))
    assert recovery.holders[("tts", 1)] == {"tts-b"}


def test_a_dead_workers_requests_go_at_once_to_another_worker_of_the_stage():
    clock, board, turn, recovery = two_tts_workers()
    llm_turn_with_two_sentences(turn, recovery)
    recovery.on_message(result(audio(0)[0], "tts-a"))
    recovery.on_message(result(audio(1)[0], "tts-b"))
    board.peer("tts", False, pid=1)  # tts-a's process closed its connection
    assert board.is_gone("tts-a") and not board.is_gone("tts-b")
    assert board.state("tts") == "ready"  # tts-b still serves
    resent = send_all(recovery.check(turn), recovery)
    assert [(s.stage, s.message.index) for s in resent] == [("tts", 0)]  # not tts-b's sentence
    assert recovery.holders[("tts", 0)] == {"tts-b"}  # the only worker left takes it


def test_a_hung_worker_among_several_has_its_requests_sent_again():
    clock, board, turn, recovery = two_tts_workers()
    llm_turn_with_two_sentences(turn, recovery)
    recovery.on_message(result(audio(0)[0], "tts-a"))
    for _ in range(4):  # tts-a is SIGSTOPped: connected, silent; the others beat on
        clock.now += 1
        for stage, instance in (("asr", "asr-a"), ("llm", "llm-a"), ("tts", "tts-b")):
            beat(board, stage, instance)
    assert board.worker_state("tts", "tts-a") == "down" and board.state("tts") == "ready"
    resent = send_all(recovery.check(turn), recovery)
    assert [s.message.index for s in resent] == [0, 1]  # sentence 1 was never answered: either may hold it
    assert not errors(resent)


def test_the_board_shows_each_worker():
    clock, board, _, _ = two_tts_workers()
    board.result_seen("tts", "tts-b")
    workers = {w["instance"]: w for w in board.snapshot()["tts"]["workers"]}
    assert set(workers) == {"tts-a", "tts-b"} and workers["tts-b"]["results"] == 1
    assert workers["tts-a"]["pid"] == 1 and workers["tts-b"]["state"] == "ready"
    board.peer("tts", False, pid=2)
    assert [w["instance"] for w in board.snapshot()["tts"]["workers"]] == ["tts-a"]


# --- sending to a worker that died a moment ago ------------------------------------------------


class NoWorkerYet:
    """The bus while the stage's only worker has just been killed: nothing takes the request."""

    def __init__(self):
        self.sent = []
        self.connected = False

    def send(self, stage, message, *payload):
        if not self.connected:
            raise StageUnavailable(f"no {stage} worker is connected or its queue is full")
        self.sent.append(message)


def gateway_with_llm_ready():
    gateway = Gateway(GatewaySettings(stage_wait_s=5.0), NoWorkerYet())
    ready(gateway.board, "llm", "llm-a", pid=11)
    gateway.board.peer("llm", True)
    turn = new_turn()
    recovery = Recovery(gateway.board, 5.0, time.monotonic)
    request = Send("llm", ids(LlmRequest(persona="astronaut", history=[], max_new_tokens=10)))
    return gateway, turn, recovery, request


async def test_a_send_that_finds_no_worker_waits_for_the_one_that_replaces_it():
    """The worker was killed but its closed connection is not seen yet: the stage still looks
    ready. The send waits for the board to notice, then for the replacement, and goes there."""
    gateway, turn, recovery, request = gateway_with_llm_ready()
    sending = asyncio.create_task(gateway._send(turn, request, recovery, lambda: False))
    await asyncio.sleep(0.3)
    gateway.board.peer("llm", False, pid=11)  # the closed connection is seen
    await asyncio.sleep(0.3)
    assert not sending.done()  # waiting for supervisor's new worker, not failing the turn
    ready(gateway.board, "llm", "llm-b", pid=12)
    gateway.board.peer("llm", True)
    gateway.bus.connected = True
    assert await asyncio.wait_for(sending, 5) == []
    assert gateway.bus.sent == [request.message] and recovery.holders[("llm", -1)] == {"llm-b"}


async def test_a_send_to_a_connected_but_saturated_stage_fails_within_a_second():
    gateway, turn, recovery, request = gateway_with_llm_ready()
    started = time.monotonic()
    [error, finish] = await asyncio.wait_for(gateway._send(turn, request, recovery, lambda: False), 5)
    assert time.monotonic() - started < 2.0
    assert error.data["stage"] == "llm" and "no llm worker is connected" in error.data["message"]
