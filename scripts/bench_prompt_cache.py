"""The LLM stage's time to its first chunk across one conversation, with and without the prompt
cache (services/llm/prompt_cache.py), on the registry weights (SmolLM2-135M-Instruct, one thread
as config/llm.env runs it). Before: only the system prompt is cached, as before the cache kept
conversations. Each turn's history is what the stage sends the model: the persona's system
prompt, the last HISTORY_MESSAGES messages, the question.
    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD .venv/bin/python scripts/bench_prompt_cache.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from services.llm.backends import TransformersBackend  # noqa: E402
from services.llm.chunker import iter_fast_chunks  # noqa: E402
from services.llm.prompt_cache import PromptCache  # noqa: E402
from services.models.resolve import plan_llm  # noqa: E402
from services.personas import DEFAULT_PERSONA, HISTORY_MESSAGES, system_prompt  # noqa: E402
from services.runtime.settings import StageSettings  # noqa: E402

# the benchmarks' eight questions, as scripts/speak_questions.sh speaks them
QUESTIONS = (Path(__file__).parent / "speak_questions.sh").read_text().split("<<'LIST'\n")[1].split("\nLIST")[0].splitlines()


def conversation(backend: TransformersBackend, keep_conversations: bool) -> list[dict]:
    system = system_prompt(DEFAULT_PERSONA)
    system_ids = len(backend.tokenizer(backend.tokenizer.apply_chat_template(
        [{"role": "system", "content": system}], tokenize=False), add_special_tokens=False)["input_ids"])
    backend.prompts = PromptCache()
    if not keep_conversations:  # as before: the system prompt's entry only
        add = backend.prompts.add
        backend.prompts.add = lambda ids, cache: add(ids, cache) if len(ids) == system_ids else None
    history, turns = [], []
    for question in QUESTIONS:
        messages = [{"role": "system", "content": system}, *history[-HISTORY_MESSAGES:],
                    {"role": "user", "content": question}]
        reused = backend.prompts.reused_tokens
        started = time.perf_counter()
        first, chunks = None, []
        for chunk in iter_fast_chunks(backend.stream(messages, max_new_tokens=220)):
            if first is None:
                first = time.perf_counter() - started
            chunks.append(chunk)
        answer = " ".join(chunks)
        prompt = backend.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        turns.append({"prompt_tokens": len(backend.tokenizer(prompt, add_special_tokens=False)["input_ids"]),
                      "cached_tokens": backend.prompts.reused_tokens - reused,
                      "first_chunk_s": round(first, 3), "reply_s": round(time.perf_counter() - started, 3),
                      "answer": answer})
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(int(os.environ.get("S2S_LLM_THREADS", "1")))
    plan = plan_llm(StageSettings("llm", {"S2S_LLM_SOURCE": "registry"}))
    backend = TransformersBackend(**plan.options)
    backend.load()
    conversation(backend, True)  # warm-up
    report = {}
    for label, keep in (("system prompt only", False), ("conversations", True)):
        turns = conversation(backend, keep)
        firsts = [t["first_chunk_s"] for t in turns]
        report[label] = {"first_chunk_s_p50": round(statistics.median(firsts), 3),
                         "first_chunk_s_turns": firsts,
                         "prompt_tokens": [t["prompt_tokens"] for t in turns],
                         "cached_tokens": [t["cached_tokens"] for t in turns],
                         "same_answers": None}
        report[label]["answers"] = [t["answer"] for t in turns]
    before, after = report["system prompt only"], report["conversations"]
    after["same_answers"] = sum(a == b for a, b in zip(before.pop("answers"), after.pop("answers")))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
