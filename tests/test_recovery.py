"""The gateway's stage board and a turn's recovery policy, with a fake clock and no sockets:
which requests go again after a stage instance goes away, when a turn gives up, and why."""

from gateway.recovery import Recovery
from gateway.stages import STUCK_AFTER_S, StageBoard
from gateway.turn import Emit, Send
from proto import AsrFinal, LlmSentence, StageBye, StageError, StageHeartbeat, StageHello, StageReady, TtsDone
from tests.test_turn import Clock, audio, events, ids, new_turn

WAIT_S = 30.0


def ready(board: StageBoard, stage: str, instance: str) -> None:
    for message in (StageHello(stage=stage, backend="b", model="m", device="cpu", pid=1),
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
        recovery.sent(send.stage)
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
