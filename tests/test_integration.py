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


def test_a_hands_free_turn_over_the_realtime_socket(product, question):
    """/v1/realtime with the openai SDK on the real processes: Silero VAD ends the turn, the
    utterance streams to the real ASR worker, and the answer comes back as 24 kHz audio."""
    from tests.test_realtime import spoken_pcm24

    async def converse():
        from openai import AsyncOpenAI

        sdk = AsyncOpenAI(api_key="x", websocket_base_url=product.url.replace("http", "ws") + "/v1")
        seen = []
        async with sdk.realtime.connect(model="s2s") as connection:
            pcm, _, _ = spoken_pcm24(question)
            for start in range(0, len(pcm), 4800):
                await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + 4800]).decode())
            async with asyncio.timeout(180):
                async for event in connection:
                    seen.append(event)
                    if event.type in ("response.done", "error") or (
                            event.type == "conversation.item.input_audio_transcription.completed"
                            and not event.transcript):
                        break
        return seen

    seen = asyncio.run(converse())
    kinds = [e.type for e in seen]
    assert kinds[0] == "session.created" and "error" not in kinds, seen[-1:]
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
             "input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed",
             "response.created", "response.output_audio.delta", "response.done"]
    assert set(order) <= set(kinds) and [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order), kinds
    transcript = next(e for e in seen if e.type == "conversation.item.input_audio_transcription.completed")
    assert transcript.transcript, "the tiny ASR model always says something"
    assert seen[-1].response.status == "completed"
    audio = b"".join(base64.b64decode(e.delta) for e in seen if e.type == "response.output_audio.delta")
    assert len(audio) > 0 and len(audio) % 2 == 0
    status, stages = product.get_json("/api/stages")
    assert stages["live_turns"] == 0  # the socket closed: nothing left behind
