"""Addressed dispatch through the real gateway and bus: two TTS workers (the scripted stage under
the real worker runtime, each in its own process with its own inbox) behind the gateway, with fake
ASR and LLM stages whose sentences are the TTS scripts ("parts=N delay=S")."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from gateway.app import GATEWAY
from proto import TtsRequest
from tests.audio import tone_wav
from tests.fakes.fake_stages import FakeStages
from tests.gateway_harness import eventually, wait_ready
from tests.sse import parse_sse
from tests.worker_process import ROOT

pytestmark = pytest.mark.timeout(120)

SLOW = "parts=2 delay=1.5"  # a sentence that keeps its worker busy for 3 s


@pytest.fixture
def tts_workers(bus_env):
    """Start scripted TTS worker processes on the gateway's bus; killed at the end."""
    env = {**os.environ, **bus_env, "PYTHONPATH": str(ROOT), "S2S_TTS_METRICS_PORT": "0", "S2S_TTS_THREADS": "0",
           "S2S_TTS_PARALLEL": "1"}
    procs = []

    def start(count: int) -> list[subprocess.Popen]:
        for _ in range(count):
            log = tempfile.mkstemp(prefix="worker-", suffix=".log", dir=bus_env["S2S_RUN_DIR"])[1]
            with open(log, "wb") as sink:
                procs.append(subprocess.Popen([sys.executable, "-m", "tests.fakes.scripted_stage"], env=env, cwd=ROOT,
                                              stdout=sink, stderr=subprocess.STDOUT))
        return procs

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


async def ready_workers(gateway, count: int) -> dict[int, str]:
    """pid -> instance of the TTS workers, once `count` are ready."""
    assert await eventually(lambda: len(gateway.board.ready_instances("tts")) == count, timeout=30)
    return {w.pid: w.instance for w in gateway.board.stages["tts"].workers.values()}


async def test_exactly_the_requests_a_killed_worker_held_are_sent_again(make_client, bus_env, tts_workers):
    client = await make_client()
    gateway = client.app[GATEWAY]
    procs = tts_workers(2)
    with FakeStages(bus_env, sentences=(SLOW,) * 4, stages=("asr", "llm")):
        workers = await ready_workers(gateway, 2)
        await wait_ready(client)
        upload = await client.post("/upload", data=tone_wav(1.0), headers={"Content-Type": "audio/wav"})
        stream = asyncio.create_task(client.get(f"/stream/{(await upload.json())['session_id']}"))

        def tts_holding():
            return {w: n for w, n in gateway.dispatch.holding().items() if w in workers.values()}

        # the four sentences spread over the two idle workers by queue length: two each
        assert await eventually(lambda: sum(tts_holding().values()) == 4, timeout=30)
        held = tts_holding()
        assert sorted(held.values()) == [2, 2], held
        victim_pid = next(p for p in procs if p.pid in workers)
        victim = workers[victim_pid.pid]
        survivor = ({*workers.values()} - {victim}).pop()
        assert gateway.resent_requests == 0
        os.kill(victim_pid.pid, signal.SIGKILL)  # 3 s per sentence: it finished none of its two
        response = await asyncio.wait_for(stream, 60)
        events = parse_sse(await response.text())
    assert events[-1][0] == "done", events[-1]
    chunks = [data["index"] for name, data in events if name == "chunk"]
    assert chunks == list(range(len(chunks))) and len(chunks) == 8  # 4 sentences x 2 parts, none twice
    assert gateway.resent_requests == held[victim] == 2  # exactly what the killed worker held, once each
    assert gateway.board.is_gone(victim) and set(gateway.board.stages["tts"].workers) == {survivor}
    assert not os.path.exists(f"{bus_env['S2S_RUN_DIR']}/{victim}.in")  # its inbox's socket file went with it
    assert gateway.dispatch.holding() == {}  # the turn is over: nobody holds anything of it


async def test_a_request_pinned_to_a_worker_reaches_that_worker(make_client, bus_env, tts_workers):
    client = await make_client()
    gateway = client.app[GATEWAY]
    tts_workers(2)
    workers = await ready_workers(gateway, 2)
    pinned, idle = sorted(workers.values())
    board = gateway.board.stages["tts"].workers
    for index in range(3):  # pinned, whatever the queues say: the idle worker would be chosen otherwise
        sent_to = gateway.dispatch.send("tts", TtsRequest(index=index, text="parts=1 delay=0.2", voice="v",
                                                         session="s", turn=1), to=pinned)
        assert sent_to == pinned
    # each answer is an audio part and a done: all six from the pinned worker, none from the other
    assert await eventually(lambda: board[pinned].results == 6, timeout=20)
    assert board[idle].results == 0 and gateway.dispatch.holding() == {}
    # unpinned, the next one goes to the worker with the shorter queue
    assert gateway.dispatch.send("tts", TtsRequest(index=9, text="parts=1", voice="v", session="s", turn=2)) == idle
