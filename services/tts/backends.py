"""Text-to-speech backends. The TTS worker calls load() once, then synthesize() per sentence."""

from __future__ import annotations

import os
import re
from typing import Iterator

import numpy as np

from services.runtime.devices import resolve_device
from services.runtime.backend import Backend
from services.runtime.errors import ConfigError


class KokoroBackend(Backend):
    """Kokoro-82M via the kokoro package (misaki G2P). Weights/voices from local paths or the HF hub."""

    name = "kokoro"
    sample_rate = 24000

    def __init__(
        self,
        repo_id: str = "hexgrad/Kokoro-82M",
        model_path: str | None = None,
        config_path: str | None = None,
        voices_dir: str | None = None,
        device: str = "cpu",
        lang_code: str = "a",
        first_threads: int | None = None,
    ):
        self.repo_id = repo_id
        self.model_path = model_path
        self.config_path = config_path
        self.voices_dir = voices_dir
        self.requested_device = device
        self.device = device
        self.lang_code = lang_code
        # torch threads for a turn's first sentence: None the same as the rest, 0 one per core
        self.first_threads = None if first_threads is None else (int(first_threads) or os.cpu_count() or 1)
        self.model_label = model_path or repo_id
        self._pipeline = None
        self._voices: dict = {}

    def load(self) -> None:
        self.device = resolve_device(self.requested_device)
        try:
            from kokoro import KModel, KPipeline
        except ImportError as e:
            raise ConfigError(f"kokoro is not installed ({e})") from e
        try:
            # config/model None -> kokoro downloads them from repo_id on the hub.
            kmodel = KModel(repo_id=self.repo_id, config=self.config_path, model=self.model_path)
            kmodel = kmodel.to(self.device).eval()
            self._pipeline = KPipeline(lang_code=self.lang_code, repo_id=self.repo_id, model=kmodel)
        except (Exception, SystemExit) as e:  # spacy's model download can sys.exit() when it fails
            raise ConfigError(
                f"cannot load Kokoro model {self.model_label!r} (config {self.config_path!r}): {e} "
                "(the Hugging Face hub may be unreachable; set model_path/config_path to local files; "
                "misaki needs the en_core_web_sm spaCy package, see scripts/install-models-deps.sh)"
            ) from e

    def _voice(self, voice: str):
        """Voice pack tensor [510, 1, 256], loaded once per name."""
        if voice in self._voices:
            return self._voices[voice]
        import torch

        if not re.fullmatch(r"[A-Za-z0-9_-]+", voice or ""):  # also keeps paths out of voices_dir lookups
            raise ValueError(f"unknown voice {voice!r}: expected a name like 'af_heart'")
        if self.voices_dir:
            path = os.path.join(self.voices_dir, f"{voice}.pt")
            if not os.path.isfile(path):
                raise ValueError(f"unknown voice {voice!r}: no {path}")
            pack = torch.load(path, map_location="cpu", weights_only=True)
        else:
            try:
                pack = self._pipeline.load_single_voice(voice)  # hub download via kokoro
            except Exception as e:
                raise ValueError(f"unknown or unavailable voice {voice!r} in {self.repo_id}: {e}") from e
        self._voices[voice] = pack
        return pack

    def synthesize(self, text: str, voice: str, speed: float = 1.0, first: bool = False) -> Iterator[np.ndarray]:
        """Yield float32 mono 24 kHz audio, one array per pipeline segment.
        first: the turn's first sentence (uses first_threads when set)."""
        if self._pipeline is None:
            raise RuntimeError("KokoroBackend.synthesize() called before load()")
        import torch

        pack = self._voice(voice)  # before the pipeline, so a bad voice fails before any audio
        threads = torch.get_num_threads()
        if first and self.first_threads is not None:
            torch.set_num_threads(self.first_threads)
        try:
            for result in self._pipeline(text, voice=pack, speed=speed):
                if result.audio is not None:
                    yield result.audio.detach().cpu().numpy().astype(np.float32, copy=False).reshape(-1)
        finally:
            torch.set_num_threads(threads)
