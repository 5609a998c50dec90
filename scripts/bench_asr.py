#!/usr/bin/env python3
"""Time the ASR backends on one clip: load time and transcribe time, through the project's backends.

    espeak-ng -v en-us -s 110 -w /tmp/q3.wav "What is the capital of France?"   # ~2.9 s
    python -m services.models.whisper_ct2 models/whisper-base-ct2 /tmp/whisper-base.pt
    python scripts/bench_asr.py --ct2-dir models/whisper-base-ct2 --openai-pt /tmp/whisper-base.pt --wav /tmp/q3.wav

Runs, in one process: openai-whisper (the converted checkpoint, float32 on CPU), faster-whisper
int8, faster-whisper float32. Each backend is loaded --load-runs times (median; the files are
in the page cache after the first read) and transcribes the clip once to warm up, then --runs
times (median, min, max). Decoding is what the stage does: greedy, language from --language,
timestamps and temperature fallback as in openai-whisper's transcribe(). Threads: torch's count
(set with --threads), which FasterWhisperBackend also gives CTranslate2. Prints a table and,
with --json, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _timed_cpu(fn):
    """(wall seconds, CPU seconds of this process, all threads, result)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def bench(label: str, make_backend, audio, runs: int, load_runs: int) -> dict:
    loads, backend = [], None
    for _ in range(load_runs):
        backend = None  # drop the previous model before loading the next
        backend = make_backend()
        seconds, _ = _timed(backend.load)
        loads.append(seconds)
    warm_s, text = _timed(lambda: backend.transcribe(audio))
    times, cpu, texts = [], [], set()
    for _ in range(runs):
        seconds, cpu_s, t = _timed_cpu(lambda: backend.transcribe(audio))
        times.append(seconds)
        cpu.append(cpu_s)
        texts.add(t)
    result = {
        "backend": label,
        "load_s_median": statistics.median(loads),
        "load_s_all": loads,
        "warmup_s": warm_s,
        "transcribe_s_median": statistics.median(times),
        "transcribe_s_min": min(times),
        "transcribe_s_max": max(times),
        "transcribe_s_all": times,
        "transcribe_cpu_s_median": statistics.median(cpu),  # less sensitive to other processes
        "loadavg_1min": os.getloadavg()[0],
        "text": text,
        "stable_text": texts == {text},
    }
    print(f"{label:28s} load {result['load_s_median']:6.2f} s   transcribe median {result['transcribe_s_median']:6.3f} s "
          f"(min {result['transcribe_s_min']:.3f}, max {result['transcribe_s_max']:.3f}; "
          f"CPU {result['transcribe_cpu_s_median']:.2f} s)   {text!r}", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ct2-dir", required=True, type=Path, help="CTranslate2 Whisper directory (faster-whisper)")
    p.add_argument("--openai-pt", required=True, type=Path, help="openai-whisper checkpoint (.pt)")
    p.add_argument("--wav", required=True, type=Path, help="the clip (any format ffmpeg reads)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--load-runs", type=int, default=3)
    p.add_argument("--language", default="en")
    p.add_argument("--threads", type=int, default=0, help="torch / CTranslate2 threads (0: torch default)")
    p.add_argument("--only", choices=["openai", "fw-int8", "fw-float32"], action="append",
                   help="run only these (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)

    t_import, _ = _timed(lambda: (__import__("torch"), __import__("whisper"), __import__("faster_whisper")))
    import ctranslate2
    import faster_whisper
    import torch
    import whisper

    from services.asr.backends import FasterWhisperBackend, OpenAIWhisperBackend

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    audio = whisper.load_audio(str(a.wav))
    info = {
        "machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "faster_whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__,
        "clip": str(a.wav), "clip_s": round(len(audio) / 16000, 3), "imports_s": round(t_import, 2),
        "runs": a.runs, "load_runs": a.load_runs,
    }
    print(json.dumps(info), flush=True)

    chosen = a.only or ["openai", "fw-int8", "fw-float32"]
    results = []
    if "openai" in chosen:
        results.append(bench("openai-whisper fp32", lambda: OpenAIWhisperBackend(
            str(a.openai_pt), device="cpu", language=a.language), audio, a.runs, a.load_runs))
    for ct in ("int8", "float32"):
        if f"fw-{ct}" in chosen:
            results.append(bench(f"faster-whisper {ct}", lambda ct=ct: FasterWhisperBackend(
                str(a.ct2_dir), device="cpu", language=a.language, compute_type=ct), audio, a.runs, a.load_runs))
    if a.json:
        a.json.write_text(json.dumps({"info": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
