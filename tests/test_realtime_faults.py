"""/v1/realtime in the real product (supervisord, real processes, tiny models) with two ASR
workers: the one holding a streamed utterance is killed (-9) before its final transcript, and the
gateway re-sends the utterance it kept to the other, so the turn completes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal

import aiohttp
import pytest

from tests.audio import spoken_wav
from tests.product import running, tiny_env
from tests.test_realtime import spoken_pcm24

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def product(tiny_whisper, tiny_qwen2, tiny_kokoro):
    env = tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro)
    # a worker held still (SIGSTOP) stays "ready", not "down" (hung), however long the machine
    # takes: the test then kills it on the path it means to test, the dead worker's
    env.update({"S2S_LLM_MAX_NEW_TOKENS": "30", "S2S_GATEWAY_DOWN_AFTER_S": "120"})
    with running(env, workers={"asr": 2}) as product:
        yield product


def asr_workers(product) -> dict[int, dict]:
    """The ASR workers the gateway knows, by pid (with the requests it holds them to)."""
    _, body = product.get_json("/api/stages")
    return {w["pid"]: w for w in body["stages"]["asr"]["workers"]}


def test_a_killed_asr_worker_holding_an_utterance_is_replaced_and_the_turn_completes(product, tmp_path):
    pcm, _, _ = spoken_pcm24(spoken_wav("What is the capital of France?", tmp_path / "q.wav"))

    async def scenario():
        _, before = product.get_json("/api/stages")
        pids = sorted(asr_workers(product))
        assert len(pids) == 2
        seen: list[dict] = []
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(product.url.replace("http", "ws") + "/v1/realtime") as ws:
            async def until(kind: str) -> dict:
                async with asyncio.timeout(180):
                    async for msg in ws:
                        event = json.loads(msg.data)
                        seen.append(event)
                        if event["type"] == kind:
                            return event

            await ws.send_json({"type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {"turn_detection": None}}}})
            await until("session.updated")
            for pid in pids:  # both held still: neither can answer before one is killed
                os.kill(pid, signal.SIGSTOP)
            try:
                for start in range(0, len(pcm), 9600):
                    await ws.send_json({"type": "input_audio_buffer.append",
                                        "audio": base64.b64encode(pcm[start:start + 9600]).decode()})
                await ws.send_json({"type": "input_audio_buffer.commit"})
                await until("input_audio_buffer.committed")
                async with asyncio.timeout(60):  # the gateway has sent the whole utterance to one of them
                    while not (holder := [p for p, w in asr_workers(product).items() if w["holding"]]):
                        await asyncio.sleep(0.05)
                (victim,) = holder
                os.kill(victim, signal.SIGKILL)
            finally:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
            completed = await until("conversation.item.input_audio_transcription.completed")
            await ws.send_json({"type": "response.create"})
            done = await until("response.done")
        _, after = product.get_json("/api/stages")
        return before, after, victim, pids, completed, done

    before, after, victim, pids, completed, done = asyncio.run(scenario())
    assert completed["transcript"].startswith("hello")  # what the tiny whisper always says
    assert done["response"]["status"] == "completed", done
    assert after["resent_requests"] - before["resent_requests"] == 1  # the utterance, once
    survivor = next(p for p in pids if p != victim)
    assert asr_workers(product)[survivor]["results"] > 0
