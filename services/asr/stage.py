"""ASR stage: 16 kHz mono PCM in, transcript and its compute time out."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from proto import AsrFinal, AsrRequest
from services.runtime.audio import float_to_pcm16, pcm16_to_float
from services.runtime.errors import BadRequest
from services.models.resolve import plan_asr
from services.runtime.stage import BackendStage
from services.runtime.worker import Output, TurnContext

SAMPLE_RATE = 16000


class AsrStage(BackendStage):
    name = "asr"
    request_type = AsrRequest
    BACKENDS = {
        "openai-whisper": "services.asr.backends:OpenAIWhisperBackend",
        "faster-whisper": "services.asr.backends:FasterWhisperBackend",
    }
    DEFAULT_BACKEND = "openai-whisper"
    planner = staticmethod(plan_asr)

    def warmup_request(self):
        # one second of faint noise: exercises the mel front end, the encoder and the decoder
        noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        return AsrRequest(session="warm-up"), [float_to_pcm16(noise)]

    def handle(self, request: AsrRequest, payload: list[bytes], turn: TurnContext) -> Iterator[Output]:
        if request.sample_rate != SAMPLE_RATE:
            raise BadRequest(f"ASR takes {SAMPLE_RATE} Hz audio, got {request.sample_rate} Hz")
        try:
            audio = pcm16_to_float(payload[0])
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        started = time.monotonic()
        text = self.backend.transcribe(audio)
        yield AsrFinal(text=text, compute_s=round(time.monotonic() - started, 4),
                       audio_s=round(len(audio) / SAMPLE_RATE, 3)), ()
