"""A stage with a scripted 'model', run by the real worker runtime (tests of the runtime only).

The request text is a script: "parts=N delay=S" yields N audio parts S seconds apart; "hold=S"
waits up to S seconds before its first part, less if the turn is stopped meanwhile (a request a
test keeps in progress until it stops it); "boom" raises inside the model; "bad" is a bad request.
"""

from __future__ import annotations

import os
import time

from proto import TtsAudio, TtsDone, TtsRequest
from services.runtime.errors import BadRequest, ConfigError
from services.runtime.worker import StageDefaults, StageInfo, main


class ScriptedStage(StageDefaults):
    name = "tts"
    request_type = TtsRequest

    def __init__(self, settings):
        self.settings = settings

    def describe(self):
        return StageInfo("scripted", "script", "cpu")

    def load(self):
        time.sleep(float(os.environ.get("FAKE_LOAD_S", "0")))
        if os.environ.get("FAKE_LOAD_FAIL"):
            raise ConfigError("model file /nonexistent is missing")
        return StageInfo("scripted", "script", "cpu")

    def handle(self, request, payload, stop):
        if request.text == "boom":
            raise RuntimeError("the model exploded")
        if request.text == "bad":
            raise BadRequest("that request makes no sense")
        script = dict(item.split("=") for item in request.text.split())
        parts, delay = int(script.get("parts", 1)), float(script.get("delay", 0))
        held_until = time.monotonic() + float(script.get("hold", 0))
        while time.monotonic() < held_until and not stop.should_stop():
            time.sleep(0.01)
        for part in range(parts):
            time.sleep(delay)
            yield TtsAudio(index=request.index, part=part, text="", sample_rate=24000, compute_s=delay), (
                b"\x00\x00" * 4,)
        yield TtsDone(index=request.index, parts=parts, compute_s=0.0, audio_s=0.0), ()


if __name__ == "__main__":
    main(ScriptedStage)
