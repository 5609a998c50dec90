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


def spoken_pcm16(text: str, rate: int = 16000, voice: str = "en-us") -> np.ndarray:
    """espeak-ng speech as int16 samples at `rate` (sox), trimmed to the first and last sample
    above -40 dBFS, so padding it with silence gives known speech boundaries."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise RuntimeError("espeak-ng and sox are needed (scripts/setup.sh installs them)")
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "--stdout", text],
                         check=True, capture_output=True, timeout=30).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-r", str(rate), "-b", "16", "-c", "1", "-e", "signed-integer",
                          "-t", "raw", "-"], input=wav, check=True, capture_output=True, timeout=30).stdout
    samples = np.frombuffer(raw, "<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 328)
    return samples[loud[0]: loud[-1] + 1].copy()

