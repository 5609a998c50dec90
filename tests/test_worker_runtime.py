"""The shared worker runtime over real ipc sockets, with a scripted stage in a real process."""

import signal
import subprocess
import sys
import time

import msgspec
import pytest

from proto import StageBye, StageError, StageHeartbeat, StageHello, StageReady, TtsAudio, TtsDone, TtsRequest
from proto import TurnCancel
from services.runtime.errors import EXIT_CONFIG
from tests.worker_process import ROOT, WorkerProcess, private_run_dir

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def run_env():
    with private_run_dir() as env:
        yield env


class Worker(WorkerProcess):
    """The scripted TTS stage (tests/fakes/scripted_stage.py): request text is its script."""

    def request(self, text, turn=1, index=0, session="s1", to=None, **kw):
        self.bus.send("tts", TtsRequest(index=index, text=text, voice="af_heart", session=session, turn=turn, **kw),
                      to=to)


@pytest.fixture
def worker(run_env):
    workers = []

    def start(late_bus=False, **extra):
        w = Worker(run_env, late_bus=late_bus, **extra)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def test_lifecycle_announces_hello_ready_and_heartbeats(worker):
    w = worker()
    hello = w.bus.wait_for(lambda m: isinstance(m, StageHello), timeout=20)
    assert (hello.stage, hello.backend, hello.device, hello.pid) == ("tts", "scripted", "cpu", w.proc.pid)
    ready = w.bus.wait_for(lambda m: isinstance(m, StageReady))
    assert ready.load_s >= 0
    beat = w.bus.wait_for(lambda m: isinstance(m, StageHeartbeat))
    assert beat.state == "ready" and beat.queue_depth == 0
    # its own inbox, in the run dir, named after it: in the hello, and in every beat for a gateway that starts later
    assert hello.inbox == beat.inbox == f"ipc://{w.env['S2S_RUN_DIR']}/{hello.instance}.in"


def test_lifecycle_messages_wait_for_a_late_gateway_and_keep_their_order(worker):
    # The worker has loaded before anything listens: hello and ready are retried, in order.
    # (A message queued behind a waiting one now waits too, so ready can never overtake hello.)
    w = worker(late_bus=True)
    ready = w.bus.wait_for(lambda m: isinstance(m, StageReady), timeout=10)
    lifecycle = [type(m).__name__ for m in w.bus.seen if isinstance(m, (StageHello, StageReady))]
    assert lifecycle == ["StageHello", "StageReady"]
    assert ready.instance == w.bus.seen[0].instance


def test_outputs_carry_the_request_ids_in_order(worker):
    w = worker().ready()
    w.request("parts=3", turn=4, session="abc")
    done = w.bus.wait_for(lambda m: isinstance(m, TtsDone))
    parts = [m for m in w.bus.seen if isinstance(m, TtsAudio)]
    assert [p.part for p in parts] == [0, 1, 2]
    assert all((m.session, m.turn) == ("abc", 4) for m in [*parts, done])
    seqs = [m.seq for m in w.bus.seen if m.instance == done.instance]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_cancel_stops_an_item_in_progress(worker):
    w = worker().ready()
    w.request("parts=50 delay=0.05", turn=1)
    w.bus.wait_for(lambda m: isinstance(m, TtsAudio) and m.part == 2)
    w.bus.send("tts", TurnCancel(session="s1", turn=1))  # as the gateway sends it, to the holder's inbox
    after = w.bus.collect(0.5)
    late = [m for m in after if isinstance(m, TtsAudio)]
    assert len(late) <= 2  # at most what was already in flight when the cancel landed
    assert not any(isinstance(m, TtsDone) for m in after)
    w.request("parts=1", turn=2)  # the next turn is served at once
    assert w.bus.wait_for(lambda m: isinstance(m, TtsDone)).turn == 2


def test_each_of_several_workers_gets_only_what_is_sent_to_its_own_inbox(worker):
    """Two workers of one stage behind one gateway, each with its own inbox: a request reaches the
    worker it is addressed to, and a cancel sent to one worker stops its turn there and nowhere else."""
    first = worker()
    second = worker(bus=first.bus)
    readies = {first.bus.wait_for(lambda m: isinstance(m, StageReady), timeout=20).instance for _ in range(2)}
    assert len(readies) == 2 and set(first.bus.inboxes) == readies
    holders = {"s1": first.bus.workers["tts"][0], "s2": first.bus.workers["tts"][1]}
    for session, holder in holders.items():
        first.request("parts=50 delay=0.05", session=session, to=holder)
    seen = {}
    while len(seen) < 2:
        audio = first.bus.wait_for(lambda m: isinstance(m, TtsAudio) and m.part == 2)
        seen[audio.session] = audio.instance
    assert seen == holders  # each request went to the worker it was addressed to
    first.bus.send("tts", TurnCancel(session="s1", turn=1), to=holders["s1"])
    # the same cancel at the other worker would not stop s2 there either: it is another session
    after = first.bus.collect(0.5)
    assert len([m for m in after if isinstance(m, TtsAudio) and m.session == "s1"]) <= 2
    assert not any(isinstance(m, TtsDone) for m in after)
    assert [m.instance for m in after if isinstance(m, TtsAudio) and m.session == "s2"][-1:] == [holders["s2"]]
    first.bus.send("tts", TurnCancel(session="s2", turn=1), to=holders["s2"])
    assert second.proc.poll() is None


def test_a_newer_turn_supersedes_queued_work(worker):
    w = worker().ready()
    w.request("parts=1 delay=0.5", turn=1, index=0)
    w.request("parts=1", turn=1, index=1)  # queued behind the slow one
    w.request("parts=1", turn=2, index=0)
    w.bus.wait_for(lambda m: isinstance(m, TtsDone) and m.turn == 2)
    done = [(m.turn, m.index) for m in w.bus.seen if isinstance(m, TtsDone)]
    assert (1, 1) not in done


def test_stale_deadline_is_skipped(worker):
    w = worker().ready()
    w.request("parts=1", turn=1, deadline=time.monotonic() - 1)
    w.request("parts=1", turn=2, index=7)
    assert w.bus.wait_for(lambda m: isinstance(m, TtsDone)).index == 7


def test_malformed_frames_are_counted_and_dropped(worker):
    w = worker().ready()
    w.bus.send_raw("tts", [b"\xc1garbage"])
    w.bus.send_raw("tts", [msgspec.msgpack.encode({"tag": "tts.request", "v": 1})])
    w.bus.send_raw("tts", [msgspec.msgpack.encode({"tag": "asr.final", "v": 1, "text": "x", "compute_s": 0,
                                                    "audio_s": 0})])  # valid, but not for this stage
    w.request("parts=1", turn=1)
    w.bus.wait_for(lambda m: isinstance(m, TtsDone))
    beat = w.bus.wait_for(lambda m: isinstance(m, StageHeartbeat))
    assert beat.dropped_frames == 3
    assert w.proc.poll() is None


def test_model_errors_are_reported_and_the_worker_keeps_serving(worker):
    w = worker().ready()
    w.request("boom", turn=1)
    error = w.bus.wait_for(lambda m: isinstance(m, StageError))
    assert (error.kind, error.turn) == ("failed", 1) and "exploded" in error.message
    w.request("bad", turn=2)
    error = w.bus.wait_for(lambda m: isinstance(m, StageError))
    assert error.kind == "bad_request"
    w.request("parts=1", turn=3)
    assert w.bus.wait_for(lambda m: isinstance(m, TtsDone)).turn == 3


def test_a_full_inbox_answers_busy_at_once(worker):
    w = worker(S2S_TTS_INBOX="1").ready()
    w.request("parts=1 hold=60", turn=1, index=0)  # in progress until the worker is stopped
    w.bus.wait_for(lambda m: isinstance(m, StageHeartbeat) and m.state == "busy" and m.queue_depth == 0)
    for index in (1, 2, 3):
        w.request("parts=1", turn=1, index=index)
    busy = w.bus.wait_for(lambda m: isinstance(m, StageError))
    assert busy.kind == "busy"


def test_sigterm_drains_says_bye_and_exits_zero(worker):
    w = worker().ready()
    w.request("parts=100 delay=0.05", turn=1)
    w.bus.wait_for(lambda m: isinstance(m, TtsAudio))
    started = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    error = w.bus.wait_for(lambda m: isinstance(m, StageError), timeout=5)
    assert error.kind == "shutdown" and error.turn == 1
    w.bus.wait_for(lambda m: isinstance(m, StageBye), timeout=5)
    assert w.proc.wait(5) == 0
    assert time.monotonic() - started < 5


def test_sigterm_while_loading_exits_promptly(worker):
    w = worker(FAKE_LOAD_S="120")
    w.bus.wait_for(lambda m: isinstance(m, StageHello), timeout=20)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0  # long before the load would end (a loaded machine's margin)


def test_a_stage_that_cannot_load_exits_78_with_the_reason(worker):
    w = worker(FAKE_LOAD_FAIL="1")
    error = w.bus.wait_for(lambda m: isinstance(m, StageError), timeout=20)
    assert error.kind == "load_failed" and "/nonexistent" in error.message
    assert w.proc.wait(10) == EXIT_CONFIG
    assert "/nonexistent" in w.output()


def test_unknown_backend_is_a_config_error(run_env):
    env = {**run_env, "S2S_ASR_BACKEND": "nope"}
    out = subprocess.run([sys.executable, "-m", "services.asr"], env=env, cwd=ROOT, capture_output=True,
                         timeout=60, text=True)
    assert out.returncode == EXIT_CONFIG
    assert "unknown asr backend 'nope'" in out.stderr and "openai-whisper" in out.stderr
