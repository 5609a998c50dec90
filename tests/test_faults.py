"""Faults injected into the real product (supervisord, four processes, tiny random-weight models):
a stage killed, hung or unable to start, and the gateway stopped, with streams in flight.

Each stream must end exactly once: full audio and `done`, or one `error` event naming the stage.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from tests.audio import spoken_wav
from tests.product import Product, running, tiny_env
from tests.sse import parse_sse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ENDINGS = ("done", "error")


@pytest.fixture(scope="module")
def models(tiny_whisper, tiny_qwen2, tiny_kokoro):
    return tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro)


@pytest.fixture(scope="module")
def product(models):
    # short replies (a few sentences): five turns at once finish in seconds on two cores
    with running({**models, "S2S_LLM_MAX_NEW_TOKENS": "30"}) as product:
        yield product


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    return spoken_wav("What is the capital of France?", tmp_path_factory.mktemp("wav") / "question.wav").read_bytes()


class Stream:
    """One turn as the page runs it: upload, then read the SSE stream, noting when each event came.
    Each stream is its own browser unless given one: a new question in a conversation replaces
    the answer in progress."""

    def __init__(self, url: str, http: aiohttp.ClientSession | None = None):
        self.url = url
        self.own_http = http is None
        self.http = http or new_session()
        self.events: list[tuple[str, dict]] = []
        self.times: list[float] = []
        self.task: asyncio.Task | None = None
        self.session_id = ""

    async def start(self, wav: bytes) -> "Stream":
        return (await self.upload(wav)).open()

    async def upload(self, wav: bytes) -> "Stream":
        async with self.http.post(f"{self.url}/upload?persona=wildlife_expert", data=wav,
                                  headers={"Content-Type": "audio/wav"}) as resp:
            assert resp.status == 200, await resp.text()
            self.session_id = (await resp.json())["session_id"]
        return self

    def open(self) -> "Stream":
        self.task = asyncio.create_task(self._read(self.session_id))
        return self

    async def _read(self, session_id: str) -> None:
        try:
            async with self.http.get(f"{self.url}/stream/{session_id}") as resp:
                buffer = ""
                async for chunk in resp.content.iter_any():
                    buffer += chunk.decode()
                    *blocks, buffer = buffer.split("\n\n")
                    for block in blocks:
                        for event in parse_sse(block + "\n\n"):
                            self.events.append(event)
                            self.times.append(time.monotonic())
        finally:
            if self.own_http:
                await self.http.close()

    def saw(self, name: str) -> bool:
        return any(n == name for n, _ in self.events)

    @property
    def ending(self) -> tuple[str, dict]:
        return self.events[-1]

    @property
    def ended_at(self) -> float:
        return self.times[-1]


def new_session() -> aiohttp.ClientSession:
    jar = aiohttp.CookieJar(unsafe=True)  # keep the conversation cookie on 127.0.0.1
    return aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=240))


def assert_ends_once(stream: Stream, failed_stage: str | None = None) -> None:
    """One ending, last; chunks numbered 0..n-1 with no repeat; an error names the stage."""
    names = [n for n, _ in stream.events]
    assert sum(n in ENDINGS for n in names) == 1 and names[-1] in ENDINGS, names
    chunks = [d["index"] for n, d in stream.events if n == "chunk"]
    assert chunks == list(range(len(chunks))), chunks
    name, data = stream.ending
    if name == "done":
        assert names[0] == "transcript" and data["chunks"] == len(chunks)
        spoken = " ".join(d["text"] for n, d in stream.events if n == "chunk" and d["text"])
        assert spoken == data["full_text"]  # every sentence is this turn's own, each once
    elif failed_stage is not None:
        assert data.get("stage") == failed_stage, data


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def back_ready(product: Product, stage: str, old_pid: int, timeout: float = 120) -> float:
    """When the stage is ready again in a new process (its pid from /api/stages)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = await asyncio.to_thread(product.get_json, "/api/stages")
        info = body["stages"][stage]
        if info["state"] in ("ready", "busy") and info["pid"] not in (0, old_pid):
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{stage} did not come back: {body}")


# which event shows that a turn's work has reached the stage
REACHED = {"asr": None, "llm": "transcript", "tts": "chunk"}


@pytest.mark.parametrize("stage", ["asr", "llm", "tts"])
def test_kill_9_with_five_streams_in_flight(product, question, stage):
    """The gateway re-sends each lost request once to the restarted stage: every stream ends
    within 10 s of the stage being back, no chunk twice, and the next turn completes."""

    async def scenario():
        async with new_session() as http:
            _, before = product.get_json("/api/stages")
            streams = [await Stream(product.url, http if i == 0 else None).upload(question) for i in range(5)]
            pid = product.pids()[stage]
            if not REACHED[stage]:
                # the tiny ASR is quick: held still (well under the 3 s that make it "hung") so
                # that all five requests are surely in its hands when it is killed
                os.kill(pid, signal.SIGSTOP)
            for stream in streams:  # five questions at once
                stream.open()
            if REACHED[stage]:
                await wait_for(lambda: all(s.saw(REACHED[stage]) for s in streams[:2]), 60, f"turns to reach {stage}")
            else:
                await asyncio.sleep(0.5)
            assert not all(s.events and s.ending[0] in ENDINGS for s in streams), "nothing was in flight"
            os.kill(pid, signal.SIGKILL)
            back = await back_ready(product, stage, pid)
            await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 120)
            _, after = product.get_json("/api/stages")
            later = await Stream(product.url, http).start(question)  # the first one's conversation
            await asyncio.wait_for(later.task, 120)
            return streams, back, before, after, later

    streams, back, before, after, later = asyncio.run(scenario())
    for stream in streams:
        assert_ends_once(stream, stage)
        assert stream.ended_at - back <= 10.0, (stream.ending, stream.ended_at - back)
    assert after["resent_requests"] > before["resent_requests"]  # the lost work was sent again
    # with one retry, the turns whose work was lost still complete
    assert all(s.ending[0] == "done" for s in streams), [s.ending for s in streams]
    assert_ends_once(later)
    assert later.ending[0] == "done"
    assert "RUNNING" in product.ctl("status", stage)


@pytest.mark.parametrize("stage", ["llm", "tts"])
def test_a_hung_stage_ends_its_streams_within_5_s_and_late_results_are_dropped(product, question, stage):
    """SIGSTOP: the stage is alive but silent. Its streams get an error naming it within 5 s;
    after SIGCONT what it sends for those turns goes nowhere, and the next turn is whole."""

    async def scenario():
        async with new_session() as http:
            # the first is the conversation that asks again once the stage is back
            streams = [await Stream(product.url, http if i == 0 else None).start(question) for i in range(3)]
            await wait_for(lambda: all(s.saw(REACHED[stage]) for s in streams[:1]), 60, f"a turn to reach {stage}")
            pid = product.pids()[stage]
            os.kill(pid, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), 30)
            finally:
                os.kill(pid, signal.SIGCONT)
            await asyncio.to_thread(product.wait_ready, 60)
            # the same conversation at once: the resumed stage may still send for the old turns
            later = await Stream(product.url, http).start(question)
            await asyncio.wait_for(later.task, 120)
            return streams, stopped, later

    streams, stopped, later = asyncio.run(scenario())
    for stream in streams:
        assert_ends_once(stream, stage)
        if stream.ending[0] == "error":
            assert stream.ended_at - stopped <= 5.0, stream.ended_at - stopped
    assert any(s.ending[0] == "error" for s in streams), "no stream was waiting on the hung stage"
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
    assert stopped.ending == ("error", {"message": "The turn was cancelled."})
    assert_ends_once(following)
    assert following.ending[0] == "done"


def test_gateway_sigterm_sends_an_error_to_each_open_stream_and_exits_in_time(product, question):
    async def scenario():
        streams = [await Stream(product.url).start(question) for _ in range(3)]
        await wait_for(lambda: all(s.saw("transcript") for s in streams), 60, "transcripts")
        started = time.monotonic()
        await asyncio.to_thread(product.ctl, "stop", "gateway")
        stopped_in = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*(s.task for s in streams), return_exceptions=True), 30)
        return streams, stopped_in

    try:
        streams, stopped_in = asyncio.run(scenario())
    finally:
        product.ctl("start", "gateway", check=False)
        product.wait_ready(120)
    for stream in streams:
        assert_ends_once(stream)
        if stream.ending[0] == "error":
            assert "shutting down" in stream.ending[1]["message"]
    assert any(s.ending[0] == "error" for s in streams)
    assert stopped_in < 10.0  # before supervisor's stopwaitsecs would kill it
    log = (product.var / "log" / "supervisord.log").read_text()
    assert "gateway (terminated by SIGKILL)" not in log and "stopped: gateway (exit status 0)" in log


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
