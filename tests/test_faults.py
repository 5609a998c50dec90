"""Faults injected into the real product (supervisord, four processes, tiny random-weight models):
a stage killed, hung or unable to start, and the gateway stopped, with streams in flight.

Each stream must end exactly once: full audio and `done`, or one `error` event naming the stage.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from gateway.upload_desk import SHUTTING_DOWN
from tests.audio import spoken_wav
from tests.product import Product, running, tiny_env
from tests.streams import ENDINGS, Stream, assert_ends_once, back_ready, new_session, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# a silent worker is `down` (hung) after this long here (3 s by default): the turns' work must
# reach a stopped stage before then, and a stage held still must not be taken for hung. With the
# default, the errors came 2.5 to 3.1 s after the stop, quiet or beside a busy loop; how soon is
# docs/RELIABILITY.md's claim. The bound is for "ends at all, with its error".
HUNG_AFTER_S = 15.0
HUNG_ENDS_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def models(tiny_whisper, tiny_qwen2, tiny_kokoro):
    return tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro)


@pytest.fixture(scope="module")
def product(models):
    # short replies (a few sentences): five turns at once finish in seconds on two cores
    with running({**models, "S2S_LLM_MAX_NEW_TOKENS": "30", "S2S_GATEWAY_DOWN_AFTER_S": str(HUNG_AFTER_S)}) as product:
        yield product


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    return spoken_wav("What is the capital of France?", tmp_path_factory.mktemp("wav") / "question.wav").read_bytes()


# which event shows that a turn's work has reached the stage
REACHED = {"asr": None, "llm": "transcript", "tts": "chunk"}
STAGES = ("asr", "llm", "tts")


def requests_sent(product, since: int, stage: str | None = None) -> Counter:
    """How many times the gateway sent each request (session, turn, tag, index) since that offset
    of its log: a request sent again to a restarted stage is counted twice."""
    return Counter((r.get("session"), r.get("turn"), r["tag"], r.get("index"))
                   for r in product.log_records("gateway", since)
                   if r.get("msg", "").startswith("sending ") and "tag" in r
                   and (stage is None or r.get("stage") == stage))


def turns_sent(product, since: int, stage: str) -> set:
    """The turns (session, turn) with a request sent to the stage since that offset of its log."""
    return {(session, turn) for session, turn, *_ in requests_sent(product, since, stage)}


async def wait_for_sent(product, since: int, stage: str, count: int) -> None:
    await wait_for(lambda: len(requests_sent(product, since, stage)) >= count, 120, f"{count} requests sent to {stage}")


# five turns' lost work redone on two cores: about 10 s on a quiet machine, 10.4 s beside a
# registry-weights benchmark, 68 s beside a busy loop; the bound is for "ends at all", so that a
# re-send that never came fails here and not at the suite's timeout. How soon is a benchmark's claim.
ENDS_WITHIN_S = 300.0


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
def test_kill_9_with_five_streams_in_flight(product, question, stage):
    """The gateway re-sends each lost request once to the restarted stage: every stream ends with
    `done` once the stage is back, no chunk twice, and the next turn completes."""
    log_from = product.log_size("gateway")

    async def scenario():
        async with new_session() as http:
            _, before = product.get_json("/api/stages")
            streams = [await Stream(product.url, http if i == 0 else None).upload(question) for i in range(5)]
            pid = product.pids()[stage]
            if not REACHED[stage]:
                # the tiny ASR is quick: held still (well under the HUNG_AFTER_S after which it is "hung")
                # so that all five requests are surely in its hands when it is killed
                os.kill(pid, signal.SIGSTOP)
            for stream in streams:  # five questions at once
                stream.open()
            if REACHED[stage]:
                await wait_for(lambda: all(s.saw(REACHED[stage]) for s in streams[:2]), 180, f"turns to reach {stage}")
            else:  # all five requests went to the held ASR: it has them all when it dies
                await wait_for_sent(product, log_from, "asr", 5)
            assert not all(s.events and s.ending[0] in ENDINGS for s in streams), "nothing was in flight"
            os.kill(pid, signal.SIGKILL)
            await back_ready(product, stage, pid)
            await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), ENDS_WITHIN_S)
            _, after = product.get_json("/api/stages")
            later = await Stream(product.url, http).start(question)  # the first one's conversation
            await asyncio.wait_for(later.task, 120)
            return streams, before, after, later

    streams, before, after, later = asyncio.run(scenario())
    for stream in streams:
        assert_ends_once(stream, stage)
    # the lost work was sent again, each request once (a turn whose request was lost and not sent
    # again could not end with `done`, checked below)
    sent = requests_sent(product, log_from)
    again = sorted(key for key, times in sent.items() if times > 1)
    assert again and max(sent.values()) == 2, sent
    assert {tag.split(".")[0] for _, _, tag, _ in again} == {stage}, again
    assert after["resent_requests"] - before["resent_requests"] == len(again)
    if stage == "asr":  # held still from before the streams opened: it had every turn's request
        assert len(again) == 5
    # with one retry, the turns whose work was lost still complete
    assert all(s.ending[0] == "done" for s in streams), [
        (s.ending[0], s.ending[1].get("message")) for s in streams]
    assert_ends_once(later)
    assert later.ending[0] == "done"
    assert "RUNNING" in product.ctl("status", stage)


@pytest.mark.parametrize("stage", ["llm", "tts"])
def test_a_hung_stage_ends_its_streams_with_an_error_and_late_results_are_dropped(product, question, stage):
    """SIGSTOP: the stage is alive but silent. Every stream whose work it holds gets one error
    naming it, once its heartbeats are missed and while it is still stopped; after SIGCONT what it
    sends for those turns goes nowhere, and the same conversation's next turn is whole."""
    log_from = product.log_size("gateway")
    pid = product.pids()[stage]

    async def scenario():
        async with new_session() as http:
            # the first is the conversation that asks again once the stage is back
            streams = [await Stream(product.url, http if i == 0 else None).upload(question) for i in range(3)]
            # stopped before any of the turns reaches it, so each turn's request waits in its hands
            # (the tiny models are quick: a stage stopped mid-turn may have finished some already)
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                for stream in streams:
                    stream.open()
                # it looks ready until its heartbeats are missed: every turn's work goes to it
                await wait_for(lambda: len(turns_sent(product, log_from, stage)) >= len(streams), HUNG_AFTER_S,
                               f"each turn's request sent to the stopped {stage}")
                await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), HUNG_ENDS_WITHIN_S)
            finally:
                os.kill(pid, signal.SIGCONT)
                resumed = time.monotonic()
            await asyncio.to_thread(product.wait_ready, 60)
            # the same conversation at once: the resumed stage may still send for the old turns
            later = await Stream(product.url, http).start(question)
            await asyncio.wait_for(later.task, 120)
            return streams, stopped, resumed, later

    streams, stopped, resumed, later = asyncio.run(scenario())
    for stream in streams:
        assert_ends_once(stream, stage)
        assert stream.ending[0] == "error", stream.ending
        # found hung by its silence (not at once), and before it was back
        assert stopped + HUNG_AFTER_S / 2 < stream.ended_at < resumed, (stream.ended_at - stopped, resumed - stopped)
    assert_ends_once(later)
    assert later.ending[0] == "done", later.ending


def test_stop_ends_the_turn_and_the_next_one_starts_at_once(product, question):
    async def scenario():
        async with new_session() as http:
            stopped = await Stream(product.url, http).start(question)
            # stopped as soon as it is heard: the tiny models' short answers are over in seconds
            await wait_for(lambda: stopped.saw("transcript"), 60, "the transcript")
            async with http.post(f"{product.url}/api/cancel/{stopped.session_id}") as resp:
                assert resp.status == 200
            await asyncio.wait_for(stopped.task, 5)
            following = await Stream(product.url, http).start(question)
            await asyncio.wait_for(following.task, 120)
            return stopped, following

    stopped, following = asyncio.run(scenario())
    assert_ends_once(stopped)
    assert stopped.ending == ("error", {"message": "The turn was cancelled.", "kind": "cancelled"})
    assert_ends_once(following)
    assert following.ending[0] == "done"


def test_gateway_sigterm_sends_an_error_to_each_open_stream_and_exits_in_time(product, question):
    """Every open stream gets the shutdown error, the worker holding each of those turns is told
    to drop it (and no other: nothing else holds them), and the gateway exits cleanly before
    supervisor's stopwaitsecs (10 s) would kill it."""
    log_from = {program: product.log_size(program) for program in ("gateway", *STAGES)}
    asr = product.pids()["asr"]

    async def scenario():
        streams = [await Stream(product.url).upload(question) for _ in range(3)]
        # the ASR is held still (well under the HUNG_AFTER_S after which it is "hung"), so that no turn can end
        # before the gateway stops
        os.kill(asr, signal.SIGSTOP)
        try:
            for stream in streams:
                stream.open()
            await wait_for_sent(product, log_from["gateway"], "asr", 3)
            gateway = product.pids()["gateway"]
            started = time.monotonic()
            os.kill(gateway, signal.SIGTERM)  # as supervisor stops it
            # every stream has its error before the ASR may answer; the cancels then queued behind
            # the three recordings in its inbox still reach it while the gateway closes its bus
            await asyncio.wait_for(asyncio.gather(*(s.task for s in streams), return_exceptions=True), 30)
        finally:
            os.kill(asr, signal.SIGCONT)
        await wait_for(lambda: not alive(gateway), 30, "the gateway to exit")
        stopped_in = time.monotonic() - started
        return streams, stopped_in

    try:
        streams, stopped_in = asyncio.run(scenario())
        told = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the workers log each cancel as it arrives
            told = {stage: {(r.get("session"), r.get("turn"))
                            for r in product.log_records(stage, log_from[stage], "cancel received")}
                    for stage in STAGES}
            if len(told["asr"]) >= 3:
                break
            time.sleep(0.2)
    finally:
        product.ctl("start", "gateway", check=False)
        product.wait_ready(120)
    for stream in streams:
        assert_ends_once(stream)
        assert stream.ending == ("error", {"message": SHUTTING_DOWN, "kind": "shutdown"}), stream.ending
    turns = told["asr"]
    assert len(turns) == 3 and told["llm"] == told["tts"] == set(), told  # only the holder is told
    assert stopped_in < 10.0  # before supervisor's stopwaitsecs would kill it
    log = (product.var / "log" / "supervisord.log").read_text()
    assert "gateway (terminated by SIGKILL)" not in log and "exited: gateway (exit status 0; expected)" in log


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_stage_that_cannot_start_does_not_restart_loop_and_readyz_says_why(models, tmp_path):
    broken = Product({**models, "S2S_TTS_MODEL_PATH": str(tmp_path / "missing-kokoro.pth")})
    try:
        with pytest.raises(AssertionError, match="not ready"):
            broken.start(ready_timeout=120)  # gives up as soon as supervisor reports tts EXITED
        assert "EXITED" in broken.ctl("status", "tts", check=False)
        time.sleep(3)
        assert "EXITED" in broken.ctl("status", "tts", check=False)
        log = (broken.var / "log" / "supervisord.log").read_text()
        assert log.count("spawned: 'tts'") == 1, log  # started once, never again
        assert "tts (exit status 78; expected)" in log
        status, body = broken.get_json("/readyz")
        assert status == 503
        assert "failed" in body["reasons"]["tts"] and "missing-kokoro.pth" in body["reasons"]["tts"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the other stages still load and serve
            _, stages = broken.get_json("/api/stages")
            if all(stages["stages"][s]["state"] == "ready" for s in ("asr", "llm")):
                break
            time.sleep(0.5)
        assert stages["stages"]["asr"]["state"] == "ready" and stages["stages"]["llm"]["state"] == "ready"
    finally:
        broken.stop()
