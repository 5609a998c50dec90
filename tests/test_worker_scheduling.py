"""How a worker orders and runs its requests: the stage's priority first, then arrival; several at
once only where the stage's backend allows it."""

from __future__ import annotations

import threading
import time

import proto
from proto import TtsRequest
from services.runtime.settings import StageSettings
from services.runtime.worker import StageDefaults, Worker
from services.tts.stage import TtsStage


class SleepyStage(StageDefaults):
    """Handles each request by sleeping, recording when; parallel_ok as given."""

    name = "tts"
    request_type = TtsRequest

    def __init__(self, parallel_ok: bool):
        self.parallel_ok = parallel_ok
        self.spans: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def describe(self):
        from services.runtime.worker import StageInfo

        return StageInfo("sleepy", "none", "cpu")

    def handle(self, request, payload, stop):
        started = time.monotonic()
        time.sleep(0.3)
        with self.lock:
            self.spans.append((started, time.monotonic()))
        yield from ()  # a generator, like every stage's handle()


def request(session: str, index: int) -> list[bytes]:
    return proto.encode(TtsRequest(session=session, turn=1, index=index, text="Hello.", voice="af_heart"))


def close(worker: Worker) -> None:
    worker._outbox.close(linger=0)
    worker._outbox_pull.close(linger=0)


def test_first_sentences_of_new_turns_go_before_later_sentences():
    settings = StageSettings("tts", {})
    worker = Worker(TtsStage(settings), settings)
    try:
        for session, index in [("a", 1), ("a", 2), ("b", 0), ("a", 3), ("c", 0)]:
            worker._receive(request(session, index), push=None)
        order = [worker.inbox.get_nowait()[2] for _ in range(5)]
    finally:
        close(worker)
    assert [(m.session, m.index) for m in order] == [("b", 0), ("c", 0), ("a", 1), ("a", 2), ("a", 3)]


def run_two(parallel_ok: bool, parallel: str) -> list[tuple[float, float]]:
    stage = SleepyStage(parallel_ok)
    worker = Worker(stage, StageSettings("tts", {"S2S_TTS_PARALLEL": parallel}))
    try:
        worker._receive(request("a", 0), push=None)
        worker._receive(request("b", 0), push=None)
        serving = threading.Thread(target=worker._serve)
        serving.start()
        deadline = time.monotonic() + 5
        while len(stage.spans) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        worker.draining.set()
        serving.join(5)
    finally:
        close(worker)
    assert len(stage.spans) == 2 and worker.state == "ready"
    return sorted(stage.spans)


def test_parallel_runs_requests_at_once_where_the_backend_allows_it():
    (a_start, a_end), (b_start, _) = run_two(parallel_ok=True, parallel="2")
    assert b_start < a_end  # overlapping


def test_parallel_is_ignored_for_a_backend_that_handles_one_request_at_a_time():
    (_, a_end), (b_start, _) = run_two(parallel_ok=False, parallel="2")
    assert b_start >= a_end
