"""Operating and scaling stages in the real product (supervisord, real processes, tiny models):
several workers per stage share the work and cover for one that dies, and an operator swaps a
stage's backend (edit its env file, restart it) while the load-test harness keeps talking.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from proto import TAKES_REQUESTS
from tests.audio import spoken_wav
from tests.fixtures.ct2_writer import scripted_whisper_state, write_ct2_whisper_dir
from tests.product import running, tiny_env
from tests.streams import Stream, assert_ends_once
from tests.test_whisper_ct2 import SCRIPTED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    return spoken_wav("What is the capital of France?", tmp_path_factory.mktemp("wav") / "question.wav")


@pytest.fixture(scope="module")
def asr_env_file(tmp_path_factory, tiny_whisper):
    """The ASR stage's env file, the one an operator edits to swap its backend."""
    path = tmp_path_factory.mktemp("config") / "asr.env"
    path.write_text(f"S2S_ASR_BACKEND=openai-whisper\nS2S_ASR_MODEL={tiny_whisper}\n")
    return path


@pytest.fixture(scope="module")
def product(tiny_whisper, tiny_qwen2, tiny_kokoro, asr_env_file):
    env = tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro)
    for name in ("S2S_ASR_BACKEND", "S2S_ASR_MODEL"):  # from the env file instead, to be swapped
        del env[name]
    env.update({"S2S_ASR_ENV_FILE": str(asr_env_file), "S2S_LLM_MAX_NEW_TOKENS": "30",
                # a worker held still (SIGSTOP) stays "ready", not "down" (hung), however long the
                # machine takes: the dead-worker test then kills it on the path it means to test
                "S2S_GATEWAY_DOWN_AFTER_S": "120"})
    with running(env, workers={"llm": 2, "tts": 2}) as product:
        yield product


def workers(product, stage: str) -> dict[str, dict]:
    _, body = product.get_json("/api/stages")
    return {w["instance"]: w for w in body["stages"][stage]["workers"]}


async def run_turns(product, wav: bytes, count: int) -> list[Stream]:
    streams = [await Stream(product.url).start(wav) for _ in range(count)]
    await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 180)
    return streams


def wait_workers_take_requests(product, stage: str, count: int, timeout_s: float = 120) -> None:
    """The gateway is ready once one worker of each stage is: a second one may still be loading."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [w["state"] for w in workers(product, stage).values()]
        if len(states) == count and all(state in TAKES_REQUESTS for state in states):
            return
        assert time.monotonic() < deadline, (stage, states)
        time.sleep(0.2)


def test_requests_spread_over_the_workers_of_a_stage(product, question):
    for stage in ("llm", "tts"):
        wait_workers_take_requests(product, stage, 2)
    streams = asyncio.run(run_turns(product, question.read_bytes(), 4))
    for stream in streams:
        assert_ends_once(stream)
        assert stream.ending[0] == "done", stream.ending
    # each worker of each stage answered some of the four turns
    for stage in ("llm", "tts"):
        served = {w["pid"]: w["results"] for w in workers(product, stage).values()}
        assert len(served) == 2 and all(served.values()), (stage, served)


def test_a_dead_workers_requests_go_to_another_worker(product, question):
    """One TTS worker is held still (SIGSTOP) while the gateway says it holds sentences, then
    killed: exactly what it held is sent to the other worker, which speaks it, and every turn
    completes."""
    wav = question.read_bytes()
    def holding(pid: int) -> int:  # unfinished requests the gateway sent that worker
        return next((w["holding"] for w in workers(product, "tts").values() if w["pid"] == pid), 0)

    async def scenario():
        _, before = product.get_json("/api/stages")
        log_from = product.log_size("gateway")
        pids = product.pids()
        victim, survivor = pids["tts:tts_0"], pids["tts:tts_1"]
        names = {w["pid"]: name for name, w in workers(product, "tts").items()}
        streams = [await Stream(product.url).start(wav) for _ in range(3)]
        held, deadline = 0, time.monotonic() + 120
        try:
            while not held:  # catch it with sentences in hand, and freeze it there
                assert time.monotonic() < deadline, "the gateway never gave the victim a sentence"
                if holding(victim):
                    os.kill(victim, signal.SIGSTOP)
                    await asyncio.sleep(0.3)  # results it sent before it stopped are read: try again if none is left
                    if not (held := holding(victim)):
                        os.kill(victim, signal.SIGCONT)
                await asyncio.sleep(0.05)
            victim_state = next(w["state"] for w in workers(product, "tts").values() if w["pid"] == victim)
        finally:
            os.kill(victim, signal.SIGKILL)
        served_before = {w["pid"]: w["results"] for w in workers(product, "tts").values()}
        await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 120)
        _, after = product.get_json("/api/stages")
        served_after = {w["pid"]: w["results"] for w in workers(product, "tts").values()}
        sends = [r for r in product.log_records("gateway", log_from)
                 if r.get("msg", "").startswith("sending ") and r.get("stage") == "tts"]
        return streams, before, after, (victim, names[victim]), (survivor, names[survivor]), sends, \
            served_before, served_after, victim_state

    (streams, before, after, (_, victim), (survivor_pid, survivor), sends, served_before, served_after,
     victim_state) = asyncio.run(scenario())
    assert victim_state in ("ready", "busy")  # killed while it looked alive: the dead-worker path
    for stream in streams:
        assert_ends_once(stream, "tts")
        assert stream.ending[0] == "done", stream.ending
    # the gateway may give the frozen worker more sentences until its connection closes, so what it
    # held is read from the log: every sentence sent twice went first to the victim, then to the
    # survivor; one it held and not sent again would have left its turn without a done
    workers_of = {}
    for record in sends:
        workers_of.setdefault((record["session"], record["turn"], record["index"]), []).append(record["worker"])
    again = {key: sent for key, sent in workers_of.items() if len(sent) > 1}
    assert again and all(sent == [victim, survivor] for sent in again.values()), again
    assert after["resent_requests"] - before["resent_requests"] == len(again)  # exactly what it held, once
    assert served_after[survivor_pid] > served_before.get(survivor_pid, 0)


def test_swapping_the_asr_backend_while_the_harness_runs(product, question, asr_env_file, tmp_path):
    """Edit the env file, restart the stage: no turn of the running harness fails (the request in
    flight is sent again to the new worker), and /api/stages shows the new backend."""
    ct2 = write_ct2_whisper_dir(scripted_whisper_state(SCRIPTED), SCRIPTED, tmp_path / "ct2")  # says "hello"
    _, before = product.get_json("/api/stages")
    assert before["stages"]["asr"]["backend"] == "openai-whisper"
    out = tmp_path / "harness"
    harness = subprocess.Popen(
        [sys.executable, "-m", "tools.loadtest", "--url", product.url, "--turns", "8", "--concurrency", "2",
         "--max-seconds", "400", "--quiet", "--out", str(out), str(question)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while workers(product, "tts") and sum(w["results"] for w in workers(product, "tts").values()) < 4:
            assert harness.poll() is None and time.monotonic() < deadline, "the harness made no progress"
            time.sleep(0.2)
        asr_env_file.write_text(f"S2S_ASR_BACKEND=faster-whisper\nS2S_ASR_MODEL={ct2}\n")
        product.ctl("restart", "asr")
        assert harness.poll() is None, "the harness finished before the swap"
        output, _ = harness.communicate(timeout=420)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait(10)
    assert harness.returncode == 0, output
    [run] = json.loads((out / "report.json").read_text())["runs"]
    assert run["turns"] == 8 and run["errors"] == 0, run["errors_by_detail"]
    _, after = product.get_json("/api/stages")
    asr = after["stages"]["asr"]
    assert (asr["backend"], asr["model"], asr["state"]) == ("faster-whisper", str(ct2), "ready")
    [new_worker] = asr["workers"]
    assert new_worker["results"] > 0  # later turns of the harness went through the new backend
