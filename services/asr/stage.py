"""ASR stage: 16 kHz mono PCM in, transcript and its compute time out.

A whole recording (asr.request) gets one asr.final. An utterance streamed while it is spoken
(asr.stream.start, asr.stream.audio*, asr.stream.end; see proto/README.md) is transcribed as it
grows, so that the final transcript is ready almost as soon as the speaker stops (services/asr/streams.py).
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from proto import ASR_REQUESTS, AsrFinal, AsrRequest, AsrStreamAudio, AsrStreamEnd, AsrStreamStart
from services.asr.streams import Streams
from services.runtime.audio import float_to_pcm16, pcm16_to_float
from services.runtime.errors import BadRequest
from services.models.resolve import plan_asr
from services.models.settings import ASR_BACKEND, ASR_DEVICE, ASR_LANGUAGE, ASR_MODEL
from services.runtime.settings import EnvLine
from services.runtime.stage import BackendStage
from services.runtime.worker import THREADS, Output, StopCheck

SAMPLE_RATE = 16000

# config/asr.env, as it ships (scripts/settings_docs.py writes it from this)
ENV_FILE = (
    EnvLine(ASR_BACKEND, "faster-whisper", note="faster-whisper (CTranslate2, int8 on CPU) transcribes the same "
            "words as openai-whisper about 0.3 s sooner per question on a 2-core CPU (docs/BENCHMARKS.md)."),
    EnvLine(ASR_MODEL),
    EnvLine(ASR_DEVICE),
    EnvLine(ASR_LANGUAGE, "en"),
    EnvLine(THREADS, "0", note="The ASR is first on the path to the first audio: it gets them all."),
)


class AsrStage(BackendStage):
    name = "asr"
    request_type = ASR_REQUESTS
    INBOX = 64  # a streamed utterance is many small messages (about five a second each)
    BACKENDS = {
        "openai-whisper": "services.asr.backends:OpenAIWhisperBackend",
        "faster-whisper": "services.asr.backends:FasterWhisperBackend",
    }
    backend_setting, device_setting = ASR_BACKEND, ASR_DEVICE
    planner = staticmethod(plan_asr)

    def __init__(self, settings):
        super().__init__(settings)
        self.streams = Streams(self._transcribe)

    def warmup_request(self):
        # one second of faint noise: exercises the mel front end, the encoder and the decoder
        noise = np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
        return AsrRequest(session="warm-up"), [float_to_pcm16(noise)]

    def _transcribe(self, audio: np.ndarray) -> str:
        return self.backend.transcribe(audio)

    def handle(self, request, payload: list[bytes], stop: StopCheck) -> Iterator[Output]:
        if isinstance(request, (AsrStreamStart, AsrStreamAudio, AsrStreamEnd)):
            yield from self.streams.handle(request, payload, stop)
            return
        if request.sample_rate != SAMPLE_RATE:
            raise BadRequest(f"ASR takes {SAMPLE_RATE} Hz audio, got {request.sample_rate} Hz")
        try:
            audio = pcm16_to_float(payload[0])
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        started = time.monotonic()
        text = self._transcribe(audio)
        yield AsrFinal(text=text, compute_s=round(time.monotonic() - started, 4),
                       audio_s=round(len(audio) / SAMPLE_RATE, 3)), ()
