"""ASR stage: 16 kHz mono PCM in, transcript and its compute time out."""

from __future__ import annotations

import time
from typing import Iterator

from proto import AsrFinal, AsrRequest
from services.runtime.audio import pcm16_to_float
from services.runtime.errors import BadRequest
from services.runtime.registry import backend_class
from services.runtime.settings import StageSettings
from services.runtime.worker import Output, StageInfo, TurnContext

BACKENDS = {"openai-whisper": "services.asr.backends:OpenAIWhisperBackend"}
SAMPLE_RATE = 16000


class AsrStage:
    name = "asr"
    request_type = AsrRequest

    def __init__(self, settings: StageSettings):
        self.backend_name = settings.get("BACKEND", "openai-whisper")
        cls = backend_class(self.name, self.backend_name, BACKENDS)
        self.backend = cls(
            model=settings.get("MODEL", "base"),
            device=settings.get("DEVICE", "cpu"),
            language=settings.get("LANGUAGE"),
            download_root=settings.get("DOWNLOAD_ROOT"),
        )
        self.wanted = StageInfo(self.backend_name, settings.get("MODEL", "base"), settings.get("DEVICE", "cpu"))

    def describe(self) -> StageInfo:
        return self.wanted

    def load(self) -> StageInfo:
        self.backend.load()
        return StageInfo(self.backend_name, self.backend.model_label, self.backend.device)

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
