"""Test audio: spoken with espeak-ng, or a plain tone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from services.runtime.audio import float_to_pcm16, wav_bytes


def tone_wav(seconds: float = 1.0, rate: int = 16000, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes(float_to_pcm16(0.25 * np.sin(2 * np.pi * freq * t)), rate)


def spoken_wav(text: str, path: Path) -> Path:
    """espeak-ng speech as a WAV file (22 kHz mono, converted by the gateway like any upload)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (scripts/setup.sh installs it)")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(path), text], check=True, timeout=30)
    return path
