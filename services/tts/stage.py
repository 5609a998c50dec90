"""TTS stage: one sentence in, sanitized, spoken in the persona's voice, 24 kHz PCM out."""

from __future__ import annotations

import time
from typing import Iterator

from proto import TtsAudio, TtsDone, TtsRequest
from services.personas import DEFAULT_PERSONA, PERSONAS, VOICES
from services.runtime.audio import float_to_pcm16
from services.runtime.errors import BadRequest
from services.models.resolve import plan_tts
from services.models.settings import TTS_BACKEND, TTS_DEVICE, TTS_FIRST_THREADS, TTS_REPO
from services.runtime.settings import EnvLine
from services.runtime.stage import BackendStage
from services.runtime.worker import PARALLEL, THREADS, Output, StopCheck
from services.tts.onnx_backend import WARMUP_TEXT
from services.tts.sanitize import clean_for_tts


# config/tts.env, as it ships (scripts/settings_docs.py writes it from this)
ENV_FILE = (
    EnvLine(TTS_BACKEND),
    EnvLine(TTS_REPO, note="Or local files instead of the model hub: S2S_TTS_MODEL_PATH (.pth), S2S_TTS_CONFIG_PATH "
            "(config.json), S2S_TTS_VOICES_DIR (<voice>.pt files)."),
    EnvLine(TTS_DEVICE),
    EnvLine(TTS_FIRST_THREADS, "0"),
    EnvLine(THREADS, "1", note="The sentences after a turn's first are spoken while the LLM writes the next ones on "
            "the other core."),
    EnvLine(PARALLEL, "2", note="kokoro-onnx only: with THREADS=1 the TTS can use every core when sentences wait, "
            "and gives a core back to the LLM when they do not."),
)


class TtsStage(BackendStage):
    name = "tts"
    request_type = TtsRequest
    BACKENDS = {
        "kokoro": "services.tts.backends:KokoroBackend",
        "kokoro-onnx": "services.tts.onnx_backend:KokoroOnnxBackend",
    }
    backend_setting, device_setting = TTS_BACKEND, TTS_DEVICE
    planner = staticmethod(plan_tts)
    INBOX = 256  # sentences: several turns' replies may wait here at once

    @staticmethod
    def priority(request: TtsRequest) -> int:
        """A turn's first sentence goes before other turns' later ones: under load, each new
        answer starts soon instead of waiting for whole replies queued ahead of it."""
        return 0 if request.index == 0 else 1

    def warmup_request(self):
        if self.backend.warmup_s is not None:
            return None  # the backend warmed itself up while loading (kokoro-onnx)
        return TtsRequest(session="warm-up", index=0, text=WARMUP_TEXT, voice=PERSONAS[DEFAULT_PERSONA].voice), []

    def handle(self, request: TtsRequest, payload: list[bytes], stop: StopCheck) -> Iterator[Output]:
        if request.voice not in VOICES:
            raise BadRequest(f"unknown voice {request.voice!r}")
        if not 0.5 <= request.speed <= 2.0:
            raise BadRequest(f"speed must be between 0.5 and 2.0, got {request.speed}")
        text = clean_for_tts(request.text)
        rate = self.backend.sample_rate
        started = time.monotonic()
        parts, samples = 0, 0
        if text:
            part_started = started
            for audio in self.backend.synthesize(text, request.voice, request.speed, first=request.index == 0):
                if stop.should_stop():
                    return
                yield TtsAudio(index=request.index, part=parts, text=text if parts == 0 else "",
                               sample_rate=rate, compute_s=round(time.monotonic() - part_started, 4)), (
                    float_to_pcm16(audio),)
                parts += 1
                samples += len(audio)
                part_started = time.monotonic()
        yield TtsDone(index=request.index, parts=parts, compute_s=round(time.monotonic() - started, 4),
                      audio_s=round(samples / rate, 3)), ()
