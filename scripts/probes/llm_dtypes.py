"""Probe: SmolLM2-135M (registry GGUF) as float32, int8 (torch dynamic quantization) and bfloat16 on
CPU: tokens per second and the answers, for two personas and four questions.

    .venv/bin/python scripts/probes/llm_dtypes.py

Finding (docs/BENCHMARKS.md): int8 is about 1.7x faster but visibly worse answers; bfloat16 is not
faster on a CPU without native bf16. The LLM stays float32 on CPU.
"""
import copy
import sys
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from services.models import store  # noqa: E402
from services.personas import system_prompt  # noqa: E402

warnings.filterwarnings("ignore")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
directory = store.fetch("smollm2-135m-instruct")
tok = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF)
fp32 = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF, dtype=torch.float32).eval()
int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
QUESTIONS = ["What is the capital of France?", "How far away is the moon?",
             "Can you tell me a fun fact about elephants?", "What should I cook for dinner tonight?"]
for persona in ("wildlife_expert", "casual_chat"):
    for question in QUESTIONS:
        messages = [{"role": "system", "content": system_prompt(persona)}, {"role": "user", "content": question}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
        for label, model in (("fp32", fp32), ("int8", int8), ("bf16", bf16)):
            started = time.time()
            out = model.generate(**inputs, max_new_tokens=50, do_sample=False)
            new = out.shape[1] - inputs.input_ids.shape[1]
            reply = tok.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
            print(f"{persona:<16} {label} {new / (time.time() - started):5.1f} tok/s  {reply[:110]!r}")
