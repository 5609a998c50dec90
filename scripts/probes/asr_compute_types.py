"""Probe: faster-whisper base (registry CTranslate2 weights) as int8 or float32, on 1 or 2 threads:
median time per question and the transcripts.

    .venv/bin/python scripts/probes/asr_compute_types.py QUESTIONS_DIR

Finding (docs/BENCHMARKS.md): int8 on 2 threads is the fastest here, with the same words.
"""
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from gateway.media import decode_to_pcm  # noqa: E402
from services.models import store  # noqa: E402
from services.runtime.audio import pcm16_to_float  # noqa: E402

clips = [pcm16_to_float(asyncio.run(decode_to_pcm(p.read_bytes(), 60.0)))
         for p in sorted(Path(sys.argv[1]).glob("*.wav"))]
model_dir = str(store.fetch("whisper-base-ct2"))
for compute_type in ("int8", "float32"):
    for threads in (2, 1):
        model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)
        options = dict(language="en", beam_size=1, best_of=1, vad_filter=False)
        list(model.transcribe(clips[0], **options)[0])  # warm-up
        times, texts = [], []
        for clip in clips:
            started = time.time()
            texts.append("".join(s.text for s in model.transcribe(clip, **options)[0]).strip())
            times.append(time.time() - started)
        print(f"{compute_type} threads={threads}: median {np.median(times):.3f} s", texts)
