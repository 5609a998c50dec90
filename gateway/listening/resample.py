"""24 kHz PCM16 (what Realtime clients send) to 16 kHz PCM16 (what the VAD and ASR take).

A polyphase windowed-sinc filter (up 2, low-pass at 7.2 kHz, down 3) that keeps its history
between calls, so a stream cut into any chunks comes out exactly as the whole would. After K
input samples it has given ceil(2K/3) output samples; the filter delays the audio by about 2 ms.
"""

from __future__ import annotations

import numpy as np

IN_RATE, OUT_RATE = 24000, 16000
_UP, _DOWN = 2, 3
_TAPS_PER_PHASE = 96
_CUTOFF_HZ = 7200.0
_KAISER_BETA = 8.0


def _phases() -> tuple[np.ndarray, np.ndarray]:
    """The low-pass at 48 kHz split into the taps applied at even and at odd outputs, reversed
    (index 0 multiplies the oldest sample of a window)."""
    n = 2 * _TAPS_PER_PHASE - 1
    rate = IN_RATE * _UP
    t = np.arange(n) - (n - 1) / 2
    h = 2 * _CUTOFF_HZ / rate * np.sinc(2 * _CUTOFF_HZ / rate * t) * np.kaiser(n, _KAISER_BETA)
    h *= _UP / h.sum()  # unity gain at DC after the zeros inserted by upsampling
    even = h[0::2]
    odd = np.concatenate([h[1::2], [0.0]])
    return even[::-1].astype(np.float32), odd[::-1].astype(np.float32)


_EVEN, _ODD = _phases()


class Resampler24kTo16k:
    """Streaming 24 kHz -> 16 kHz for mono PCM16. Not thread-safe: one per stream."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._history = np.zeros(_TAPS_PER_PHASE - 1, np.float32)  # the samples before, zeros at first
        self._received = 0  # input samples so far
        self._produced = 0  # output samples so far
        self._odd_byte = b""

    def process(self, pcm16: bytes) -> bytes:
        """Resample the next piece of the stream (any number of bytes); the output it completes."""
        data = self._odd_byte + bytes(pcm16)
        cut = len(data) - len(data) % 2
        self._odd_byte = data[cut:]
        if not cut:
            return b""
        samples = np.frombuffer(data[:cut], "<i2").astype(np.float32)
        buffer = np.concatenate([self._history, samples])
        first_in_buffer = self._received - (_TAPS_PER_PHASE - 1)  # stream index of buffer[0]
        self._received += samples.size
        total = -(-2 * self._received // 3)  # ceil(2K/3)
        n = np.arange(self._produced, total)
        self._produced = total
        self._history = buffer[-(_TAPS_PER_PHASE - 1):]
        # output n is centred on input sample floor(3n/2); its window ends there
        starts = (3 * n) // 2 - (_TAPS_PER_PHASE - 1) - first_in_buffer
        windows = np.lib.stride_tricks.sliding_window_view(buffer, _TAPS_PER_PHASE)
        out = np.empty(n.size, np.float32)
        even = n % 2 == 0
        out[even] = windows[starts[even]] @ _EVEN
        out[~even] = windows[starts[~even]] @ _ODD
        return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()


def resample_24k_to_16k(pcm16: bytes) -> bytes:
    """A whole 24 kHz PCM16 recording at 16 kHz (for a stream, keep a Resampler24kTo16k)."""
    return Resampler24kTo16k().process(pcm16)
