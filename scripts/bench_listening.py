#!/usr/bin/env python
"""What turn detection costs (gateway/listening): Silero VAD per 32 ms frame, Smart Turn per
pause (features + inference), the 24 -> 16 kHz resampler per second of audio, and model loading;
and how far server_vad's speech start and end land from the true ones.

    .venv/bin/python scripts/bench_listening.py [--repeat 30]

Wall and CPU (process) milliseconds, medians; everything on one thread, as a session's detector
runs. Endpoints: the benchmark questions (scripts/speak_questions.sh, espeak-ng) each placed at
11 offsets 3 ms apart (so the 32 ms frames fall differently), over a quiet noise floor.
Prints Markdown tables and the figures as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.listening import ListeningModels, Resampler24kTo16k, TurnDetector  # noqa: E402
from gateway.listening.features import fit_window, log_mel  # noqa: E402
from gateway.listening.models import FRAME_MS, FRAME_SAMPLES, VadState  # noqa: E402
from tests.audio import spoken_pcm16  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of `fn()` over `repeat` runs (after one warm-up)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(walls), statistics.median(cpus)


def questions() -> list[str]:
    """The eight benchmark questions, as scripts/speak_questions.sh lists them."""
    script = (ROOT / "scripts" / "speak_questions.sh").read_text()
    return script.split("<<'LIST'\n", 1)[1].split("\nLIST", 1)[0].splitlines()


def endpoint_errors(models: ListeningModels) -> dict[str, list[float]]:
    """speech_start_ms and speech_end_ms minus the true start and end, for every question and offset."""
    rng = np.random.default_rng(1)
    errors: dict[str, list[float]] = {"start": [], "end": []}
    for text in questions():
        speech = spoken_pcm16(text)
        for lead_ms in range(1000, 1033, 3):
            x = np.concatenate([np.zeros(lead_ms * 16), speech, np.zeros(1000 * 16)])
            pcm = np.clip(np.rint(x + rng.normal(0, 20, x.size)), -32768, 32767).astype("<i2").tobytes()
            started, stopped = TurnDetector(models, {"type": "server_vad", "silence_duration_ms": 300}).feed(pcm)
            errors["start"].append(started.speech_start_ms - lead_ms)
            errors["end"].append(stopped.speech_end_ms - (lead_ms + speech.size / 16))
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    started = time.perf_counter()
    models = ListeningModels.load(semantic=True)
    load_ms = (time.perf_counter() - started) * 1000

    question = spoken_pcm16("Could you explain how bees make honey from the flowers they visit?")
    rng = np.random.default_rng(0)
    stream = np.concatenate([np.zeros(16000), question, np.zeros(16000)]) + rng.normal(0, 20, question.size + 32000)
    pcm = np.clip(np.rint(stream), -32768, 32767).astype("<i2").tobytes()
    frames = len(pcm) // (2 * FRAME_SAMPLES)
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768

    state = VadState()
    frame = samples[16000:16000 + FRAME_SAMPLES]
    vad = timed(lambda: models.speech_probability(frame, state), args.repeat * 20)
    detector_wall, detector_cpu = timed(lambda: TurnDetector(models, {"type": "server_vad"}).feed(pcm), args.repeat // 5 or 1)
    per_frame = (detector_wall / frames, detector_cpu / frames)

    turn_audio = samples[16000 - 4800: 16000 + question.size + 3200]  # the turn as the detector hands it over
    features = timed(lambda: log_mel(fit_window(turn_audio)), args.repeat)
    smart_turn = timed(lambda: models.turn_complete_probability(turn_audio), args.repeat)

    pcm24 = (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)).astype("<i2").tobytes()
    resampler = Resampler24kTo16k()
    chunks = [pcm24[i:i + 960] for i in range(0, len(pcm24), 960)]  # 20 ms chunks, as clients send
    resample = timed(lambda: [resampler.process(c) for c in chunks], args.repeat)

    rows = [
        ("Silero VAD, one 32 ms frame (model call)", vad),
        (f"TurnDetector.feed per frame (server_vad, {frames} frames of speech and silence)", per_frame),
        (f"Smart Turn features (log-mel of 8 s), {turn_audio.size / 16000:.2f} s turn", features),
        ("Smart Turn, one pause (features + inference)", smart_turn),
        ("24 -> 16 kHz resampler, 1 s of audio in 20 ms chunks", resample),
    ]
    print(f"load average {os.getloadavg()[0]:.2f}; models loaded in {load_ms:.0f} ms\n")
    print("| work | wall ms | CPU ms |\n|---|---|---|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} |")
    print(f"\nVAD share of one core in real time: {100 * per_frame[1] / FRAME_MS:.2f} %")

    errors = endpoint_errors(models)
    print(f"\n| server_vad, {len(errors['start'])} placements | min ms | median ms | max ms | within 100 ms |")
    print("|---|---|---|---|---|")
    for which, values in errors.items():
        inside = sum(abs(v) <= 100 for v in values)
        print(f"| speech {which} - true {which} | {min(values):.0f} | {statistics.median(values):.0f} | "
              f"{max(values):.0f} | {inside}/{len(values)} |")
    print(json.dumps({"load_ms": round(load_ms), "loadavg": os.getloadavg()[0],
                      **{name: {"wall_ms": round(w, 4), "cpu_ms": round(c, 4)} for name, (w, c) in rows},
                      "endpoint_errors_ms": errors}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
