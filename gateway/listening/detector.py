"""Turn detection for one Realtime session: 16 kHz PCM16 in, speech started / stopped out.

Every position is in milliseconds of audio fed so far (plus `start_ms`), counted in Silero frames
of 32 ms, so the events do not depend on how the audio was chunked, nor on the wall clock: a
client that stops sending audio in a pause gets no SpeechStopped until more audio arrives.

Per frame: Silero's speech probability. A frame at or above `threshold` is speech. While a turn
is on, a frame down to threshold - 0.15 does not count as silence either (Silero's own
hysteresis), so a soft syllable does not end the turn; but the reported end of speech is the end
of the last frame at or above `threshold` (the softer frames after it are mostly Silero lagging
behind the end of the word).

- Start: speech must add up to `min_speech_ms` (250 ms by default; a gap over 100 ms before
  that drops it) before SpeechStarted is sent, so a cough, a click or a short "mm" never starts a
  turn (nor interrupts an answer). The event is backdated: `speech_start_ms` is the first speech
  frame, `audio_start_ms` that minus `prefix_padding_ms` (never before the end of the previous
  turn or the last reset).
- End, server_vad: `silence_duration_ms` of silence (frames below threshold - 0.15) after the
  last speech.
- End, semantic_vad: at each pause of 200 ms, Smart Turn hears the turn so far (its last 8 s).
  Complete: the turn ends there. Not complete: the turn ends only after the eagerness wait of
  silence (high 2 s, medium and auto 4 s, low 8 s; OpenAI's documented maxima), unless speech
  resumes, and then the next pause asks again.

SpeechStopped.audio_end_ms is where the turn was declared over (the audio to commit ends there,
as in the protocol, whose audio_end_ms includes the silence); speech_end_ms is where the speech
ended, so audio_end_ms - speech_end_ms is the silence waited for (at least silence_duration_ms,
more by the softer frames that followed the speech).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from gateway.listening.config import MAX_MS, PAUSE_MS, TURN_COMPLETE_PROBABILITY, parse_turn_detection
from gateway.listening.models import FRAME_MS, FRAME_SAMPLES, ListeningModels, VadState

MIN_SPEECH_MS = 250  # speech needed before a turn starts (a cough or an "mm" is shorter)
START_GAP_MS = 100  # silence that drops a start still short of MIN_SPEECH_MS
HYSTERESIS = 0.15  # in a turn, frames down to threshold - this are not silence (Silero's own rule)
# Silero's recurrent state drifts in long non-speech and then under-reports the next speech (seen
# by pipecat): it is cleared every 2 s of audio, only while quiet and after 5 clearly silent frames.
STATE_RESET_MS = 2000
STATE_RESET_QUIET_FRAMES = 5
STATE_RESET_MAX_PROBABILITY = 0.1
TURN_AUDIO_FRAMES = 8000 // FRAME_MS  # Smart Turn hears the last 8 s

_QUIET, _STARTING, _SPEAKING = "quiet", "starting", "speaking"
_BYTES_PER_FRAME = FRAME_SAMPLES * 2


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # where the turn's audio begins: speech_start_ms less the prefix padding
    speech_start_ms: int | None = None  # the first speech frame (None only when made by hand)


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # where the turn was declared over
    speech_end_ms: int | None = None  # the end of the last frame at or above threshold (None: made by hand)
    reason: str = "silence"  # silence (server_vad) | complete | timeout (semantic_vad)


Event = SpeechStarted | SpeechStopped


class TurnDetector:
    """One session's turn detection. `feed` blocks on CPU: call it from a worker thread, one
    call at a time per detector, in stream order (a detector is not thread-safe; the shared
    ListeningModels is)."""

    def __init__(self, models: ListeningModels, turn_detection: dict, *, min_speech_ms: int = MIN_SPEECH_MS,
                 start_ms: int = 0):
        self.config = parse_turn_detection(turn_detection)
        if self.config.semantic and not models.semantic:
            raise ValueError("semantic_vad needs the Smart Turn model, which this gateway did not load")
        if isinstance(min_speech_ms, bool) or not isinstance(min_speech_ms, int) or not 0 <= min_speech_ms <= MAX_MS:
            raise ValueError(f"min_speech_ms must be a whole number from 0 to {MAX_MS}, got {min_speech_ms!r}")
        if isinstance(start_ms, bool) or not isinstance(start_ms, int) or start_ms < 0:
            raise ValueError(f"start_ms must be a whole number of milliseconds from 0, got {start_ms!r}")
        self.models = models
        self.min_speech_ms = min_speech_ms
        self._start_ms = start_ms
        self._low = min(self.config.threshold, max(self.config.threshold - HYSTERESIS, 0.01))
        self._frames = 0  # frames processed, never reset: positions are the stream's
        self._pending = bytearray()  # the tail that does not fill a frame yet
        self._recent: deque[np.ndarray] = deque(maxlen=TURN_AUDIO_FRAMES)  # semantic_vad only
        self._floor_ms = self._start_ms  # no turn's audio starts before this
        self.reset()

    @property
    def effective(self) -> dict:
        """The turn_detection object that took effect, defaults filled in."""
        return dict(self.config.effective)

    @property
    def position_ms(self) -> int:
        """How far the stream has been analysed (whole frames)."""
        return self._ms(self._frames)

    def reset(self) -> None:
        """Forget the turn in progress and the VAD's state (positions keep counting; a turn
        found later never starts before this point)."""
        self._vad = VadState()
        self._frames_since_state_reset = 0
        self._quiet_run = 0
        self._phase = _QUIET
        self._candidate = 0  # first frame of the speech being confirmed or in progress
        self._candidate_speech = 0  # its speech frames so far
        self._gap = 0  # its silent frames since its last speech frame
        self._speech_end = 0  # frame after the last frame at or above threshold
        self._voiced_end = 0  # frame after the last frame that was not silence (hysteresis)
        self._turn_start_frame = 0  # first frame of the turn's audio (prefix padding included)
        self._asked = False  # Smart Turn already heard this pause
        self._recent.clear()
        self._floor_ms = max(self._floor_ms, self.position_ms)

    def feed(self, pcm16: bytes) -> list[Event]:
        """Analyse more of the stream (16 kHz mono PCM16, any length); the events it completes."""
        self._pending += pcm16
        whole = len(self._pending) // _BYTES_PER_FRAME * _BYTES_PER_FRAME
        if not whole:
            return []
        samples = np.frombuffer(bytes(self._pending[:whole]), "<i2").astype(np.float32) / 32768.0
        del self._pending[:whole]
        events = []
        for frame in samples.reshape(-1, FRAME_SAMPLES):
            event = self._step(frame)
            if event is not None:
                events.append(event)
        return events

    # --- one frame ------------------------------------------------------------------------------

    def _ms(self, frame: int) -> int:
        return self._start_ms + frame * FRAME_MS

    def _step(self, frame: np.ndarray) -> Event | None:
        index = self._frames
        self._frames += 1
        probability = self.models.speech_probability(frame, self._vad)
        self._frames_since_state_reset += 1
        self._quiet_run = self._quiet_run + 1 if probability < STATE_RESET_MAX_PROBABILITY else 0
        if self.config.semantic:
            self._recent.append(frame)
        if self._phase == _QUIET:
            if probability < self.config.threshold:
                self._maybe_reset_state()
                return None
            self._phase, self._candidate, self._candidate_speech, self._gap = _STARTING, index, 0, 0
        if self._phase == _STARTING:
            return self._starting(index, probability)
        return self._speaking(index, probability)

    def _starting(self, index: int, probability: float) -> Event | None:
        if probability >= self.config.threshold:
            self._candidate_speech += 1
            self._gap = 0
            self._speech_end = index + 1
        elif probability < self._low:
            self._gap += 1
            if self._gap * FRAME_MS > START_GAP_MS:
                self._phase = _QUIET
                return None
        if self._candidate_speech * FRAME_MS < self.min_speech_ms:
            return None
        self._phase = _SPEAKING
        self._voiced_end = self._speech_end
        self._asked = False
        speech_start = self._ms(self._candidate)
        audio_start = max(self._floor_ms, speech_start - self.config.prefix_padding_ms)
        self._turn_start_frame = (audio_start - self._start_ms) // FRAME_MS
        return SpeechStarted(audio_start_ms=audio_start, speech_start_ms=speech_start)

    def _speaking(self, index: int, probability: float) -> Event | None:
        if probability >= self.config.threshold:
            self._speech_end = index + 1
        if probability >= self._low:
            self._voiced_end = index + 1
            self._asked = False
            return None
        silence_ms = (index + 1 - self._voiced_end) * FRAME_MS
        if not self.config.semantic:
            return self._stop(index, "silence") if silence_ms >= self.config.silence_duration_ms else None
        if silence_ms >= PAUSE_MS and not self._asked:
            self._asked = True
            if self.models.turn_complete_probability(self._turn_audio()) > TURN_COMPLETE_PROBABILITY:
                return self._stop(index, "complete")
        return self._stop(index, "timeout") if silence_ms >= self.config.turn_wait_ms else None

    def _stop(self, index: int, reason: str) -> SpeechStopped:
        self._phase = _QUIET
        end = self._ms(index + 1)
        self._floor_ms = end
        return SpeechStopped(audio_end_ms=end, speech_end_ms=self._ms(self._speech_end), reason=reason)

    def _turn_audio(self) -> np.ndarray:
        """The turn so far, from its audio start (at most the last 8 s), as float32."""
        first_kept = self._frames - len(self._recent)
        skip = max(0, self._turn_start_frame - first_kept)
        return np.concatenate(list(self._recent)[skip:])

    def _maybe_reset_state(self) -> None:
        if (self._frames_since_state_reset * FRAME_MS >= STATE_RESET_MS
                and self._quiet_run >= STATE_RESET_QUIET_FRAMES):
            self._vad = VadState()
            self._frames_since_state_reset = 0
