"""Probe: Whisper base (openai-whisper, registry weights) on clips padded to 30 s (as trained) or
only to 10, 6 or 4 s (encoder positional embeddings cut to match): time and transcript.

    .venv/bin/python scripts/probes/asr_window.py QUESTIONS_DIR

Finding (docs/BENCHMARKS.md): a 10 s window is 2.5x faster but mishears ("the capital on
France"), and 4 s loops; the 30 s window stays.
"""
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import whisper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import asyncio  # noqa: E402

from gateway.media import decode_to_pcm  # noqa: E402
from services.runtime.audio import pcm16_to_float  # noqa: E402
from services.models import store  # noqa: E402

clips = [pcm16_to_float(asyncio.run(decode_to_pcm(p.read_bytes(), 60.0))) for p in sorted(Path(sys.argv[1]).glob("*.wav"))]
model = whisper.load_model(str(store.fetch("whisper-base-openai") / "whisper-base.pt"), device="cpu")


def short_forward(self, x):  # AudioEncoder.forward without the 1500-frame assertion
    x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).permute(0, 2, 1)
    x = (x + self.positional_embedding[: x.shape[1]]).to(x.dtype)
    for block in self.blocks:
        x = block(x)
    return self.ln_post(x)


model.encoder.forward = types.MethodType(short_forward, model.encoder)
options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
for window_s in (30, 10, 6, 4):
    times, texts = [], []
    for clip in clips:
        padded = np.zeros(max(len(clip), window_s * 16000), np.float32)
        padded[: len(clip)] = clip
        started = time.time()
        mel = whisper.log_mel_spectrogram(torch.from_numpy(padded))[:, : len(padded) // 320 * 2]
        texts.append(whisper.decode(model, mel, options).text)
        times.append(time.time() - started)
    print(f"{window_s:>2} s window: median {np.median(times):.3f} s", texts)
