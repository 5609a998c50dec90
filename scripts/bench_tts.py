#!/usr/bin/env python
"""Time the kokoro-onnx TTS backend: load, warm-up, and typical reply sentences.

    .venv/bin/python scripts/bench_tts.py --model-dir /path/to/kokoro-onnx --threads 1

Prints one line per sentence (compute seconds, audio seconds, real-time factor = compute / audio;
below 1 is faster than real time) and a JSON summary as the last line. Each sentence is synthesized
--repeat times and the median is reported (the first call per voice reads the voice pack).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Typical assistant sentences, 8-20 words, each in one persona's voice.
SENTENCES = (
    ("af_heart", "Elephants can recognize themselves in a mirror, which is a rare ability among animals."),
    ("am_michael", "Think of electricity like water flowing through a pipe, where voltage is the pressure."),
    ("af_bella", "Honestly, I would grab a coffee first and then take a long walk in the park."),
    ("am_adam", "Houston, we have a problem: oxygen levels are dropping fast in the command module."),
    ("af_heart", "The capital of France is Paris, famous for the Eiffel Tower and the Louvre museum."),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="dir with kokoro-v1.0.int8.onnx, vocab.json, voices/")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="runs per sentence; the median is reported")
    parser.add_argument("--speed", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from services.tts.onnx_backend import KokoroOnnxBackend

    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    started = time.monotonic()
    backend = KokoroOnnxBackend(args.model_dir, device=args.device, threads=args.threads)
    backend.load()
    total_load = time.monotonic() - started
    print(f"model {backend.model_label}  device {backend.device}  g2p {backend.g2p}  threads {args.threads or 'default'}"
          f"  cpus {os.cpu_count()}  loadavg(1m) {load1:.2f}")
    print(f"load {backend.load_s:.2f} s (imports, session, G2P)  warm-up {backend.warmup_s:.2f} s  "
          f"load() total {total_load:.2f} s")

    rows = []
    for voice, text in SENTENCES:
        runs, audio_s, parts = [], 0.0, 0
        for _ in range(max(1, args.repeat)):
            t0 = time.monotonic()
            chunks = list(backend.synthesize(text, voice, args.speed))
            runs.append(time.monotonic() - t0)
            audio_s = sum(len(c) for c in chunks) / backend.sample_rate
            parts = len(chunks)
        compute = statistics.median(runs)
        rows.append(dict(voice=voice, words=len(text.split()), parts=parts, compute_s=round(compute, 3),
                         first_s=round(runs[0], 3), audio_s=round(audio_s, 3), rtf=round(compute / audio_s, 3)))
        r = rows[-1]
        print(f"{voice:<11} {r['words']:>2} words  {r['compute_s']:6.2f} s (first {r['first_s']:.2f})  "
              f"audio {r['audio_s']:5.2f} s  RTF {r['rtf']:.2f}  {text[:40]}...")
    mean_s = statistics.mean(r["compute_s"] for r in rows)
    rtf = sum(r["compute_s"] for r in rows) / sum(r["audio_s"] for r in rows)
    print(f"mean {mean_s:.2f} s per sentence, overall RTF {rtf:.2f}")
    print(json.dumps(dict(threads=args.threads, device=backend.device, g2p=backend.g2p, load_s=round(backend.load_s, 2),
                          warmup_s=round(backend.warmup_s, 2), mean_sentence_s=round(mean_s, 3), rtf=round(rtf, 3),
                          loadavg_1m=round(load1, 2), sentences=rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
