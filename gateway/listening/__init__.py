"""Listening: when does the person speak, and when have they finished (Realtime turn detection).

    models = ListeningModels.load(semantic=True)     # once per gateway process, shared by sessions
    detector = TurnDetector(models, session["turn_detection"])   # ValueError on a bad object
    detector.effective                                # what took effect, for session.updated
    events = detector.feed(pcm16_16k)                 # in a worker thread: SpeechStarted / SpeechStopped
    resampler = Resampler24kTo16k()                   # one per stream: the client's 24 kHz to 16 kHz

Where it runs: in threads beside the gateway, not as a worker on the bus. The models are small
(Silero VAD about 0.25 ms of CPU a 32 ms frame, Smart Turn about 90 ms a pause, on one core here;
docs/BENCHMARKS.md), the decision sits on the path from the person's last word to the answer and
to barge-in, and a bus hop per 32 ms frame per session would cost more than the model. A
detector's state is one session's, so nothing needs routing. The gateway's event loop never runs
inference: it hands `feed` to a thread (e.g. `await asyncio.to_thread(detector.feed, chunk)`),
one call at a time per session, in stream order. onnxruntime releases the GIL while it computes,
and each model session uses one core (intra_op_num_threads=1).

For the caller: positions are milliseconds of the stream fed (16 kHz here, the same durations as
the client's 24 kHz; the resampler delays by about 2 ms). SpeechStarted comes back once
`min_speech_ms` of speech is heard (TurnDetector keyword, default MIN_SPEECH_MS = 250 ms), and
its `audio_start_ms` lies earlier still by the prefix padding: keep the buffered audio. A model
that cannot be fetched or verified raises services.models' ModelError from ListeningModels.load.
"""

from gateway.listening.config import EAGERNESS_WAIT_MS, PAUSE_MS, SERVER_VAD_DEFAULTS, parse_turn_detection
from gateway.listening.detector import MIN_SPEECH_MS, SpeechStarted, SpeechStopped, TurnDetector
from gateway.listening.models import ListeningModels
from gateway.listening.resample import Resampler24kTo16k, resample_24k_to_16k

__all__ = [
    "EAGERNESS_WAIT_MS", "MIN_SPEECH_MS", "PAUSE_MS", "SERVER_VAD_DEFAULTS", "ListeningModels", "Resampler24kTo16k",
    "SpeechStarted", "SpeechStopped", "TurnDetector", "parse_turn_detection", "resample_24k_to_16k",
]
