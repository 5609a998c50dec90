"""The original app's flow (s2s-original), the baseline of the side-by-side benchmark: one turn at a
time behind one lock, ASR -> LLM with the original chunker -> TTS per chunk, with the gateway's API."""

from __future__ import annotations

import threading
import time

import pytest
from aiohttp.test_utils import TestServer

from proto import AsrFinal, LlmDone, LlmSentence, TtsAudio, TtsDone
from services.asr.stage import AsrStage
from services.llm.stage import LlmStage
from tools.loadtest.client import TurnResult, load_inputs, new_user_session, run_turn
from tools.original_flow.app import create_app
from tools.original_flow.pipeline import OriginalPipeline, original_settings
from services.runtime.settings import StageSettings
from services.tts.stage import TtsStage
from tests.audio import spoken_wav, tone_wav
from tests.sse import parse_sse

pytestmark = pytest.mark.timeout(120)


class ScriptedStage:
    """Stands in for one stage: yields the given outputs, recording when it ran."""

    def __init__(self, outputs, delay: float = 0.0):
        self.outputs = outputs
        self.delay = delay
        self.calls: list[tuple[float, float]] = []

    def handle(self, request, payload, stop):
        span = [time.monotonic(), time.monotonic()]  # start, and the time of the last output so far
        self.calls.append(span)
        for output in self.outputs(request) if callable(self.outputs) else self.outputs:
            time.sleep(self.delay)
            span[1] = time.monotonic()
            yield output


def scripted_pipeline(transcript="Why is the sky blue?", delay=0.0):
    asr = ScriptedStage([(AsrFinal(text=transcript, compute_s=0.5, audio_s=2.0), ())])
    llm = ScriptedStage([(LlmSentence(index=0, text="Light scatters in the air.", elapsed_s=0.3), ()),
                         (LlmSentence(index=1, text="Blue scatters most.", elapsed_s=0.6), ()),
                         (LlmDone(full_text="Light scatters in the air. Blue scatters most.", sentences=2,
                                  tokens=12, compute_s=0.9, first_sentence_s=0.3), ())], delay)
    tts = ScriptedStage(lambda request: [
        (TtsAudio(index=request.index, part=0, text=request.text, sample_rate=24000, compute_s=0.2),
         (b"\x00\x00" * 240,)),
        (TtsDone(index=request.index, parts=1, compute_s=0.2, audio_s=0.01), ())])
    return OriginalPipeline(asr, llm, tts), (asr, llm, tts)


def test_a_turn_is_transcript_then_chunks_in_order_then_done():
    pipeline, _ = scripted_pipeline()
    events = list(pipeline.run(b"\x00\x00" * 1600, "wildlife_expert", []))
    assert [e for e, _ in events] == ["transcript", "chunk", "chunk", "done"]
    assert events[0][1] == {"text": "Why is the sky blue?", "asr_time": 0.5}
    assert [d["index"] for e, d in events if e == "chunk"] == [0, 1]
    assert events[1][1]["text"] == "Light scatters in the air." and events[1][1]["b64"].startswith("UklGR")  # RIFF
    done = events[-1][1]
    assert done["chunks"] == 2 and done["full_text"].startswith("Light scatters")
    assert (done["persona"], done["voice"]) == ("wildlife_expert", "af_heart")
    timing = done["timing"]
    assert (timing["asr"], timing["llm"], timing["llm_first_sentence"]) == (0.5, 0.9, 0.3)
    assert timing["tts"] == pytest.approx(0.4) and timing["tts_first_chunk"] == 0.2
    assert 0 <= timing["first_audio"] <= timing["total"]


def test_no_speech_is_an_error_event():
    pipeline, (_, llm, _) = scripted_pipeline(transcript="  ")
    events = list(pipeline.run(b"\x00\x00" * 1600, "wildlife_expert", []))
    assert [e for e, _ in events] == ["transcript", "error"]
    assert events[1][1] == {"message": "No speech was recognized. Please try again.", "kind": "no_speech",
                            "stage": "asr"}  # as the gateway says it (proto/events.py)
    assert llm.calls == []


async def test_a_turn_that_fails_in_a_stage_ends_with_an_error_event_of_a_declared_kind():
    def explode(request):
        raise RuntimeError("the model exploded")
        yield  # a generator, like every stage's handle()

    pipeline, (asr, _, tts) = scripted_pipeline()
    pipeline.llm = ScriptedStage(explode)
    server = TestServer(create_app(pipeline), host="127.0.0.1")
    await server.start_server()
    try:
        async with new_user_session(30) as session:
            async with session.post(server.make_url("/upload?persona=wildlife_expert"), data=tone_wav(0.5),
                                    headers={"Content-Type": "audio/wav"}) as resp:
                session_id = (await resp.json())["session_id"]
            async with session.get(server.make_url(f"/stream/{session_id}")) as resp:
                events = parse_sse(await resp.text())
    finally:
        await server.close()
    assert [e for e, _ in events] == ["transcript", "error"]
    assert events[1][1] == {"message": "The turn failed: the model exploded", "kind": "stage_error"}


def test_one_global_lock_runs_one_turn_at_a_time():
    pipeline, (asr, llm, _) = scripted_pipeline(delay=0.05)
    threads = [threading.Thread(target=lambda: list(pipeline.run(b"\x00\x00" * 1600, "wildlife_expert", [])))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    turns = sorted(zip(asr.calls, llm.calls))  # (asr span, llm span) per turn, by start
    assert len(turns) == 3
    for (_, llm_before), (asr_after, _) in zip(turns, turns[1:]):
        assert asr_after[0] >= llm_before[1], "a turn started before the previous one had finished"


def test_a_stopped_turn_speaks_nothing_more():
    pipeline, (_, _, tts) = scripted_pipeline()
    events = list(pipeline.run(b"\x00\x00" * 1600, "wildlife_expert", [], stop=lambda: True))
    assert [e for e, _ in events] == ["transcript", "chunk"] and len(tts.calls) == 1


def test_the_stages_run_as_the_original_ran_them(monkeypatch):
    for key, value in {"S2S_LLM_CHUNKING": "fast", "S2S_LLM_MIN_WORDS": "3", "S2S_LLM_THREADS": "1",
                       "S2S_ASR_BACKEND": "faster-whisper", "S2S_TTS_FIRST_THREADS": "2",
                       "S2S_TTS_THREADS": "1", "S2S_TTS_VOICES_DIR": "/voices"}.items():
        monkeypatch.setenv(key, value)
    llm, asr, tts = (original_settings(stage) for stage in ("llm", "asr", "tts"))
    assert llm.get("CHUNKING") == "sentences" and llm.get_int("MIN_WORDS", 0) == 8
    assert asr.get("BACKEND") == "openai-whisper" and llm.get_int("THREADS", 1) == 0
    assert tts.get_int("THREADS", 1) == 0 and tts.get_int("FIRST_THREADS", None) is None
    assert tts.get("VOICES_DIR") == "/voices"  # models and voices stay as configured


async def test_the_server_answers_with_real_stages_on_tiny_models(tiny_whisper, tiny_qwen2, tiny_kokoro, tmp_path):
    def settings(stage, **values):
        return StageSettings(stage, {f"S2S_{stage.upper()}_{k}": str(v) for k, v in values.items()})

    pipeline = OriginalPipeline(
        AsrStage(settings("asr", MODEL=tiny_whisper, SOURCE="local", DEVICE="cpu")),
        LlmStage(settings("llm", MODEL=tiny_qwen2, SOURCE="local", DEVICE="cpu", CHUNKING="sentences",
                          MAX_NEW_TOKENS=24)),
        TtsStage(settings("tts", MODEL_PATH=tiny_kokoro["model_path"], CONFIG_PATH=tiny_kokoro["config_path"],
                          VOICES_DIR=tiny_kokoro["voices_dir"], SOURCE="local", DEVICE="cpu")))
    loaded = pipeline.load()
    assert set(loaded) == {"asr", "llm", "tts"}
    spoken_wav("What is the capital of France?", tmp_path / "q.wav")
    server = TestServer(create_app(pipeline), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        results = []
        async with new_user_session(60) as session:
            for number in range(2):
                result = TurnResult(turn=number)
                await run_turn(session, url, load_inputs([tmp_path / "q.wav"])[0], timeout=60, result=result)
                results.append(result)
            async with session.get(f"{url}/stream/not-a-session") as resp:
                assert resp.status == 404 and "error" in await resp.json()
    finally:
        await server.close()
    for result in results:
        assert result.ok, result
        assert set(result.transcript.lower().split()) == {"hello"}  # all the tiny whisper can say
        assert result.chunks >= 1 and result.audio_s > 0 and result.ttfa_s <= result.done_s
        assert result.asr is not None and result.llm is not None and result.tts_first_chunk is not None
