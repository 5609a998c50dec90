"""Probe: SmolLM2-135M (registry weights, float32) decoding speed on 1 and 2 threads, one reply
or a batch of four: total tokens per second.

    .venv/bin/python scripts/probes/llm_batch.py

Finding (docs/BENCHMARKS.md): decoding is memory-bound; a second thread adds little, and a batch
of four yields about twice the tokens per second of one reply.
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from services.llm.stage import LlmStage  # noqa: E402
from services.models.resolve import plan_llm  # noqa: E402
from services.runtime.registry import backend_class  # noqa: E402
from services.runtime.settings import StageSettings  # noqa: E402

plan = plan_llm(StageSettings.load("llm"), prepare=True)
backend = backend_class("llm", plan.backend, LlmStage.BACKENDS)(**plan.options)
backend.load()
tok, model = backend.tokenizer, backend.model
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
messages = [{"role": "system", "content": "You are a helpful assistant. Answer in two sentences."},
            {"role": "user", "content": "Why do cats purr when they are happy?"}]
prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
for threads in (2, 1):
    torch.set_num_threads(threads)
    for batch in (1, 4):
        inputs = tok([prompt] * batch, return_tensors="pt", add_special_tokens=False, padding=True)
        model.generate(**inputs, max_new_tokens=5, do_sample=False)
        started = time.time()
        model.generate(**inputs, max_new_tokens=60, min_new_tokens=60, do_sample=False)
        elapsed = time.time() - started
        print(f"threads={threads} batch={batch}: {60 * batch / elapsed:.1f} tokens/s in all")
