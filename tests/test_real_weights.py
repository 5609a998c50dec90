"""The product on the real registry weights, as a fresh offline machine runs it.

The hub is unreachable (HF_HUB_OFFLINE=1), so every stage must resolve to the registry fallback:
Whisper base, SmolLM2-135M-Instruct and Kokoro-82M int8 ONNX, assembled by s2s-models.
"""

import asyncio
import base64
import io
import wave

import aiohttp
import pytest

from services.models import store
from services.runtime.audio import wav_bytes
from services.tts.sanitize import clean_for_tts
from tests.audio import spoken_wav
from tests.product import Product
from tests.sse import parse_sse
from tests.wer import wer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def models_dir(registry_model):
    """The real artifacts, fetched once into the user's model cache (S2S_MODELS_DIR wins)."""
    for name in ("whisper-base-ct2", "smollm2-135m-instruct", "kokoro-82m-onnx"):
        registry_model(name)
    return store.models_dir()


@pytest.fixture(scope="module")
def product(models_dir):
    running = Product({"S2S_MODELS_DIR": str(models_dir), "S2S_ASR_MODEL": "base",
                       "S2S_LLM_MODEL": "Qwen/Qwen2.5-1.5B-Instruct", "S2S_TTS_BACKEND": "kokoro"})
    try:
        yield running.start(ready_timeout=900)
    finally:
        running.stop()


async def post_and_stream(http, url, wav: bytes, persona: str, until: str = "done"):
    async with http.post(f"{url}/upload?persona={persona}", data=wav) as resp:
        assert resp.status == 200, await resp.text()
        session_id = (await resp.json())["session_id"]
    events = []
    async with http.get(f"{url}/stream/{session_id}") as resp:
        buffer = ""
        async for chunk in resp.content.iter_any():
            buffer += chunk.decode()
            *blocks, buffer = buffer.split("\n\n")
            events += parse_sse("\n\n".join(blocks) + "\n\n")
            if any(name in (until, "error") for name, _ in events):
                break  # leaving early closes the stream, which cancels the rest of the turn
    return events


def joined_wav(chunks: list[dict]) -> bytes:
    """The chunks' WAV files as one WAV, the whole spoken reply."""
    frames, rate = b"", 24000
    for chunk in chunks:
        with wave.open(io.BytesIO(base64.b64decode(chunk["b64"]))) as w:
            rate = w.getframerate()
            frames += w.readframes(w.getnframes())
    return wav_bytes(frames, rate)


def test_every_stage_resolves_to_the_registry_weights(product):
    _, body = product.get_json("/api/stages")
    stages = body["stages"]
    assert {name: info["source"] for name, info in stages.items()} == {
        "asr": "registry", "llm": "registry", "tts": "registry"}
    assert stages["tts"]["backend"] == "kokoro-onnx"
    assert "unreachable" in stages["llm"]["reason"]


def test_a_spoken_question_gets_a_spoken_answer_that_names_paris(product, tmp_path):
    question = spoken_wav(QUESTION, tmp_path / "q.wav").read_bytes()

    async def run():
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=600)) as http:
            events = await post_and_stream(http, product.url, question, "wildlife_expert")
            names = [name for name, _ in events]
            assert names[0] == "transcript" and names[-1] == "done", events[-1]
            transcript = events[0][1]["text"]
            reply = events[-1][1]["full_text"]
            chunks = [data for name, data in events if name == "chunk"]
            # The reply audio, heard back by the ASR stage (a fresh conversation, stopped after ASR).
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             timeout=aiohttp.ClientTimeout(total=600)) as other:
                heard = await post_and_stream(other, product.url, joined_wav(chunks), "wildlife_expert",
                                              until="transcript")
            return transcript, reply, chunks, heard[0][1]["text"]

    transcript, reply, chunks, heard_back = asyncio.run(run())
    print(f"transcript={transcript!r}\nreply={reply!r}\nheard back={heard_back!r}")
    assert wer(QUESTION, transcript) <= 0.10, transcript
    assert "paris" in reply.lower(), reply
    assert chunks
    assert wer(clean_for_tts(reply), heard_back) <= 0.25, (reply, heard_back)
