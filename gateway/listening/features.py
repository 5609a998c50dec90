"""Smart Turn's input: Whisper log-mel features of the last 8 s of 16 kHz audio, in numpy.

The same numbers as `transformers.WhisperFeatureExtractor(chunk_length=8)` with
`do_normalize=True` (tests/test_listening.py checks that against transformers), written after
pipecat's numpy port (`pipecat/audio/turn/smart_turn/_whisper_features.py`, BSD-2-Clause, itself
derived from transformers, Apache-2.0) so the gateway needs neither torch nor transformers.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 8 * SAMPLE_RATE  # the model sees the last 8 s
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = WINDOW_SAMPLES // HOP  # 800
_MEL_FLOOR = 1e-10
_NORM_EPS = 1e-7


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.atleast_1d(np.asarray(freq, dtype=np.float64))
    mels = 3.0 * freq / 200.0
    high = freq >= 1000.0
    mels[high] = 15.0 + np.log(freq[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.atleast_1d(np.asarray(mels, dtype=np.float64))
    freq = 200.0 * mels / 3.0
    high = mels >= 15.0
    freq[high] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[high] - 15.0))
    return freq


def _mel_filterbank() -> np.ndarray:
    """Slaney-normalised triangular filters, shape (N_FFT // 2 + 1, N_MELS)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0)[0], _hz_to_mel(SAMPLE_RATE / 2)[0], N_MELS + 2))
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    slopes = edges[None, :] - fft_freqs[:, None]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


_WINDOW = np.hanning(N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window
_MEL_FILTERS_T = _mel_filterbank().T  # (N_MELS, bins)


def fit_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of `audio` (float32, 16 kHz), zero-padded at the front to exactly 8 s."""
    audio = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
    if audio.size < WINDOW_SAMPLES:
        audio = np.concatenate([np.zeros(WINDOW_SAMPLES - audio.size, np.float32), audio])
    return audio


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Normalised Whisper log-mel of an 8 s window (see fit_window): float32 (80, 800)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"expected {WINDOW_SAMPLES} samples (8 s at 16 kHz), got shape {x.shape}")
    # zero mean, unit variance over the whole window (in float32, as transformers does)
    x = (x - x.mean()) / np.sqrt(x.var() + _NORM_EPS)
    padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (801, bins)
    mel = np.log10(np.maximum(_MEL_FLOOR, _MEL_FILTERS_T @ power.T))[:, :-1]  # drop the last frame
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)
