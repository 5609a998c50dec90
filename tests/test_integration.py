"""The four real processes under the project's supervisord.conf, with tiny random-weight models.

Checks the pipeline, not what random models say: a spoken wav in, `transcript`, at least one
`chunk` of valid 24 kHz WAV, `done`, in that order; restarting one stage leaves the others alone.
"""

import asyncio
import base64
import io
import wave

import aiohttp
import pytest

from tests.audio import spoken_wav
from tests.product import PROGRAMS, running, tiny_env
from tests.sse import parse_sse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def product(tiny_whisper, tiny_qwen2, tiny_kokoro):
    with running(tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro)) as product:
        yield product


@pytest.fixture(scope="module")
def question(tmp_path_factory):
    return spoken_wav("What is the capital of France?", tmp_path_factory.mktemp("wav") / "question.wav")


async def ask(url: str, wav_bytes: bytes, persona: str = "wildlife_expert") -> list[tuple[str, dict]]:
    jar = aiohttp.CookieJar(unsafe=True)  # keep the conversation cookie on 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=180)) as http:
        async with http.post(f"{url}/upload?persona={persona}", data=wav_bytes,
                             headers={"Content-Type": "audio/wav"}) as resp:
            assert resp.status == 200, await resp.text()
            session_id = (await resp.json())["session_id"]
        async with http.get(f"{url}/stream/{session_id}") as resp:
            return parse_sse(await resp.text())


def assert_complete_turn(events):
    names = [name for name, _ in events]
    assert names[0] == "transcript", events[:1]
    assert names[-1] == "done", events[-1:]
    assert "error" not in names
    chunks = [data for name, data in events if name == "chunk"]
    assert chunks, "no audio chunk"
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        with wave.open(io.BytesIO(base64.b64decode(chunk["b64"]))) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
            assert w.getnframes() > 0
    timing = events[-1][1]["timing"]
    assert timing["asr"] > 0 and timing["llm"] > 0 and timing["first_audio"] > 0


def test_four_programs_run_and_a_spoken_turn_completes(product, question):
    assert set(product.pids()) == set(PROGRAMS)
    status, stages = product.get_json("/api/stages")
    assert {name: info["state"] for name, info in stages["stages"].items()} == {
        "asr": "ready", "llm": "ready", "tts": "ready"}
    assert stages["stages"]["asr"]["backend"] == "openai-whisper"
    events = asyncio.run(ask(product.url, question.read_bytes()))
    assert_complete_turn(events)
    assert events[0][1]["text"], "the tiny ASR model always says something"


@pytest.mark.parametrize("stage", ["tts", "asr", "llm"])
def test_restarting_one_stage_leaves_the_others_running(product, question, stage):
    before = product.pids()
    product.ctl("restart", stage)
    product.wait_ready(180)
    after = product.pids()
    assert after[stage] != before[stage]
    assert {k: v for k, v in after.items() if k != stage} == {k: v for k, v in before.items() if k != stage}
    assert_complete_turn(asyncio.run(ask(product.url, question.read_bytes())))
