"""The original app's stream_pipeline(), on this project's stages and models.

As the original README describes it: one process holds the three models; a turn runs ASR, then
the LLM streaming tokens from a background thread, cut by the original chunker (8 words, last
sentence end), each chunk spoken by TTS as soon as it is cut, in the request's own thread; and the
whole turn runs under one global lock, so a second user waits until the first answer is complete.
The stages are the same classes the workers run, so both flows use the same models; the settings
this project tuned (faster-whisper, fast chunking, threads per stage) are set back to the original's.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Callable, Iterator

from proto import AsrFinal, AsrRequest, ChatMessage, LlmDone, LlmRequest, LlmSentence, TtsAudio, TtsRequest, events
from services.asr.stage import AsrStage
from services.llm.stage import LlmStage
from services.personas import PERSONAS
from services.runtime.audio import wav_bytes
from services.runtime.settings import StageSettings
from services.runtime.stage import InProcessStopCheck
from services.tts.stage import TtsStage

Event = events.Event  # an SSE event name and its data, as the gateway sends them


def original_settings(stage: str) -> StageSettings:
    """A stage's settings as the original app ran it, whatever the env files say: openai-whisper
    for ASR, the original chunking (`sentences`), one thread pool per process (each library's default, one
    thread per core) and no first-sentence thread count. Models, voices and limits stay as set."""
    overrides = {"asr": {"BACKEND": "openai-whisper", "THREADS": "0"},
                 "llm": {"CHUNKING": "sentences", "MIN_WORDS": "8", "THREADS": "0"},
                 "tts": {"THREADS": "0", "FIRST_THREADS": ""}}[stage]
    return StageSettings.load(stage).with_values(**overrides)


class OriginalPipeline:
    def __init__(self, asr: AsrStage, llm: LlmStage, tts: TtsStage):
        self.asr, self.llm, self.tts = asr, llm, tts
        self.lock = threading.Lock()  # the original's state['pipeline_lock']

    @classmethod
    def from_settings(cls) -> "OriginalPipeline":
        return cls(AsrStage(original_settings("asr")), LlmStage(original_settings("llm")),
                   TtsStage(original_settings("tts")))

    def load(self) -> dict[str, str]:
        """Load (and warm up) the three models in this process; what each stage loaded."""
        return {stage.name: f"{info.backend} {info.model} ({info.source or 'configured'})"
                for stage in (self.asr, self.llm, self.tts) for info in [stage.load()]}

    def run(self, pcm: bytes, persona: str, history: list[ChatMessage],
            stop: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        """One turn's SSE events: transcript, chunk..., done (or error). Blocks while another turn runs."""
        with self.lock:
            yield from self._run_locked(pcm, persona, history, InProcessStopCheck(stop))  # stop: the client left

    def _run_locked(self, pcm: bytes, persona_key: str, history: list[ChatMessage],
                    stop: InProcessStopCheck) -> Iterator[Event]:
        started = time.monotonic()
        timing: dict[str, float] = {}
        final = self._one(self.asr.handle(AsrRequest(), [pcm], stop), AsrFinal)
        timing["asr"] = final.compute_s
        text = final.text.strip()
        yield events.transcript(text, final.compute_s)
        if not text:
            yield events.error("No speech was recognized. Please try again.", "no_speech", "asr")
            return
        persona = PERSONAS[persona_key]
        request = LlmRequest(persona=persona.key, history=[*history, ChatMessage("user", text)])
        chunks, tts_s = 0, 0.0
        reply, end_reason = "", ""
        for message, _ in self.llm.handle(request, [], stop):
            if isinstance(message, LlmDone):
                reply, end_reason = message.full_text, message.end_reason
                timing.update(llm=message.compute_s, llm_first_sentence=message.first_sentence_s)
                continue
            assert isinstance(message, LlmSentence)
            speak = TtsRequest(index=message.index, text=message.text, voice=persona.voice)
            for audio, payload in self.tts.handle(speak, [], stop):
                if not isinstance(audio, TtsAudio):
                    tts_s += audio.compute_s
                    continue
                if chunks == 0:
                    timing["tts_first_chunk"] = audio.compute_s
                    timing["first_audio"] = round(time.monotonic() - started, 4)
                wav = wav_bytes(payload[0], audio.sample_rate)
                yield events.chunk(chunks, message.text if audio.part == 0 else "",
                                   b64=base64.b64encode(wav).decode("ascii"))
                chunks += 1
            if stop.should_stop():
                return
        timing["tts"] = round(tts_s, 4)
        timing["total"] = round(time.monotonic() - started, 4)
        yield events.done(reply, chunks, timing, persona.key, persona.voice, end_reason)

    @staticmethod
    def _one(outputs, kind):
        for message, _ in outputs:
            if isinstance(message, kind):
                return message
        raise RuntimeError(f"the stage gave no {kind.__name__}")
