"""Speech-to-text backends. The ASR worker calls load() once, then transcribe() per utterance."""

from __future__ import annotations

import numpy as np

from services.runtime.devices import resolve_device
from services.runtime.errors import ConfigError


class OpenAIWhisperBackend:
    """openai-whisper on torch. `model` is an official name ("base", "small.en", ...) or a .pt checkpoint path."""

    name = "openai-whisper"

    def __init__(
        self,
        model: str = "base",
        device: str = "cpu",
        language: str | None = "en",
        download_root: str | None = None,
    ):
        # Cheap on purpose: the worker builds this from config before deciding to load.
        self.model_label = model
        self.requested_device = device
        self.device = device
        self.language = language
        self.download_root = download_root
        self._model = None

    def load(self) -> None:
        self.device = resolve_device(self.requested_device)
        try:
            import whisper
        except ImportError as e:
            raise ConfigError(f"openai-whisper is not installed ({e})") from e
        try:
            # Official names download to download_root (~/.cache/whisper) on first use;
            # offline that fails unless the file is already cached there.
            self._model = whisper.load_model(self.model_label, device=self.device, download_root=self.download_root)
        except Exception as e:
            raise ConfigError(
                f"cannot load whisper model {self.model_label!r} on {self.device}: {e} "
                "(is it a valid name or checkpoint path, and is it cached if offline?)"
            ) from e

    def transcribe(self, audio: np.ndarray) -> str:
        """audio: float32 mono 16 kHz in [-1, 1]."""
        if self._model is None:
            raise RuntimeError("OpenAIWhisperBackend.transcribe() called before load()")
        import whisper

        audio = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        result = whisper.transcribe(
            self._model,
            audio,
            language=self.language,
            fp16=self.device.startswith("cuda"),  # whisper only supports fp16 on CUDA
            verbose=None,  # no progress bar / per-segment printing in a worker
        )
        return str(result.get("text", "")).strip()
