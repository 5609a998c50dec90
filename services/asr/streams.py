"""Utterances streamed to the ASR stage while they are spoken, transcribed as they grow.

The worker's compute thread takes a stream's messages in order (one inbox, one thread for a
Whisper backend). Each audio frame may trigger a decode of the utterance so far, which goes out
as asr.partial (unless the stream asked for none: `paced` false); decodes are spaced so that
they take at most about two thirds of real time (`PACE`), so the stage stays ahead of the
speaker instead of queueing behind them. At the end, the last decode stands when it already
covered all the speech; only a tail it has not seen is decoded then. To have that decode ready,
a pause is a cue: once 0.2 s of silence follows speech the last decode has not seen, the
utterance is decoded at once, during the silence the turn detector waits out (typically 0.5 s)
before it ends the turn.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from proto import AsrFinal, AsrPartial, AsrStreamAudio, AsrStreamEnd, AsrStreamStart
from services.runtime.audio import pcm16_to_float
from services.runtime.errors import BadRequest

SAMPLE_RATE = 16000
MIN_STEP_S = 0.5  # never decode again for less new audio than this
FIRST_DECODE_S = 0.8  # nor before the utterance is this long (too little for a useful partial)
PACE = 1.5  # the next decode waits for 1.5x the last decode's time of new audio
PAUSE_S = 0.2  # silence after speech that triggers a decode (the turn may be ending)
PAUSE_MIN_SPEECH_S = 0.3  # ... when at least this much speech came since the last decode
SILENT_RMS = 0.01  # a frame quieter than this (-40 dBFS) is silence
MAX_STREAMS = 32  # open utterances kept (the least recently fed goes first)
MAX_UTTERANCE_S = 120.0
STALE_S = 60.0  # an utterance fed nothing for this long is forgotten (its gateway went away)


@dataclass
class _Stream:
    paced: bool = True  # decodes as it grows (else only at pauses and the end)
    chunks: list = field(default_factory=list)
    samples: int = 0
    frames: int = 0
    decoded: int = 0  # samples the last decode covered
    voiced_until: int = 0  # samples up to the end of the last frame with speech in it
    text: str = ""
    last_decode_s: float = 0.0
    compute_s: float = 0.0
    fed: float = field(default_factory=time.monotonic)  # when it last got a message

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, np.float32)


class Streams:
    def __init__(self, transcribe: Callable[[np.ndarray], str]):
        self.transcribe = transcribe
        self.open: OrderedDict[tuple[str, int], _Stream] = OrderedDict()

    def handle(self, request, payload: list[bytes], stop) -> Iterator:
        key = (request.session, request.turn)
        if isinstance(request, AsrStreamStart):
            if request.sample_rate != SAMPLE_RATE:
                raise BadRequest(f"ASR takes {SAMPLE_RATE} Hz audio, got {request.sample_rate} Hz")
            self._forget_stale(stop)
            self.open[key] = _Stream(paced=request.paced)
            while len(self.open) > MAX_STREAMS:
                self.open.popitem(last=False)
            return
        stream = self.open.get(key)
        if stream is None:
            raise BadRequest("no open utterance for this turn (asr.stream.start missing, or it was evicted)")
        if stop.should_stop():  # cancelled: forget it; nothing more will come for it
            self.open.pop(key, None)
            return
        self.open.move_to_end(key)
        stream.fed = time.monotonic()
        if isinstance(request, AsrStreamAudio):
            yield from self._audio(key, stream, request, payload[0])
        elif isinstance(request, AsrStreamEnd):
            del self.open[key]
            yield from self._end(stream, request)

    def _forget_stale(self, stop) -> None:
        """Utterances whose turn was cancelled (a closed socket, a cleared buffer) or that nothing
        fed for STALE_S: no more messages will come for them."""
        cutoff = time.monotonic() - STALE_S
        is_live = getattr(stop, "is_live", lambda session, number: True)  # in-process: no cancels
        for key in [k for k, s in self.open.items() if s.fed < cutoff or not is_live(*k)]:
            del self.open[key]

    def _audio(self, key, stream: _Stream, request: AsrStreamAudio, pcm: bytes) -> Iterator:
        if request.index != stream.frames:
            del self.open[key]
            raise BadRequest(f"audio frame {request.index} of the utterance, expected {stream.frames}")
        try:
            audio = pcm16_to_float(pcm)
        except ValueError as exc:
            del self.open[key]
            raise BadRequest(str(exc)) from None
        stream.frames += 1
        stream.chunks.append(audio)
        stream.samples += len(audio)
        if len(audio) and float(np.sqrt(np.mean(audio ** 2))) >= SILENT_RMS:
            stream.voiced_until = stream.samples
        if stream.samples > MAX_UTTERANCE_S * SAMPLE_RATE:
            del self.open[key]
            raise BadRequest(f"an utterance is at most {MAX_UTTERANCE_S:.0f} s")
        new_s = (stream.samples - stream.decoded) / SAMPLE_RATE
        paced = stream.paced and stream.samples >= FIRST_DECODE_S * SAMPLE_RATE and new_s >= max(MIN_STEP_S, PACE * stream.last_decode_s)
        pause = (stream.samples - stream.voiced_until >= PAUSE_S * SAMPLE_RATE
                 and stream.voiced_until - stream.decoded >= PAUSE_MIN_SPEECH_S * SAMPLE_RATE)
        if paced or pause:
            self._decode(stream)
            yield AsrPartial(text=stream.text, audio_s=round(stream.decoded / SAMPLE_RATE, 3),
                             compute_s=round(stream.last_decode_s, 4)), ()

    def _end(self, stream: _Stream, request: AsrStreamEnd) -> Iterator:
        if request.frames != stream.frames:
            raise BadRequest(f"the utterance ended after {request.frames} frames, {stream.frames} arrived")
        # the speech to cover: up to the turn detector's end of speech, else to the last voiced frame
        speech_end = request.speech_end_s * SAMPLE_RATE if request.speech_end_s >= 0 else stream.voiced_until
        started = time.monotonic()
        if stream.decoded < min(speech_end, stream.samples) or (stream.samples and not stream.decoded):
            self._decode(stream)
        yield AsrFinal(text=stream.text, compute_s=round(time.monotonic() - started, 4),
                       audio_s=round(stream.samples / SAMPLE_RATE, 3)), ()

    def _decode(self, stream: _Stream) -> None:
        started = time.monotonic()
        audio = stream.audio()
        stream.text = self.transcribe(audio).strip()
        stream.decoded = len(audio)
        stream.last_decode_s = time.monotonic() - started
        stream.compute_s += stream.last_decode_s
