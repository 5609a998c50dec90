"""Loops in the registry LLM's replies, text only, by decoding setting (docs/BENCHMARKS.md).

For each --decoding setting (repetition penalty/no-repeat n-gram size, e.g. 1.0/0 1.2/4), every
question of scripts/loop_questions.txt goes to SmolLM2-135M-Instruct (the registry weights) with
the default persona's system prompt, as the LLM stage sends it, and the raw reply, with the
stage's reply rules off, is checked for a sentence that repeats an earlier one (or nearly).
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_loops.py --decoding 1.0/0 1.2/4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.llm.limits import repeated_sentences, split_sentences  # noqa: E402
from services.personas import DEFAULT_PERSONA, system_prompt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decoding", nargs="+", default=["1.0/0"], help="PENALTY/NGRAM settings to compare")
    parser.add_argument("--questions", default=str(ROOT / "scripts" / "loop_questions.txt"))
    parser.add_argument("--max-new-tokens", type=int, default=220)
    parser.add_argument("--parallel", type=int, default=4, help="replies decoded at once (one shared batch)")
    parser.add_argument("--out", help="write every reply and the summary here as JSON")
    args = parser.parse_args()

    from services.llm.backends import TransformersBackend
    from services.models import store
    from services.models.resolve import SMOLLM2_GGUF

    questions = [q.strip() for q in Path(args.questions).read_text().splitlines() if q.strip()]
    path = store.fetch("smollm2-135m-instruct")
    results = {}
    for setting in args.decoding:
        penalty, ngram = setting.split("/")
        backend = TransformersBackend(model=str(path), gguf_file=SMOLLM2_GGUF, device="cpu",
                                      repetition_penalty=float(penalty), no_repeat_ngram_size=int(ngram),
                                      max_batch=args.parallel)
        backend.load()
        replies: list[str] = [""] * len(questions)
        gate = threading.Semaphore(args.parallel)

        def ask(i: int) -> None:
            with gate:
                messages = [{"role": "system", "content": system_prompt(DEFAULT_PERSONA)},
                            {"role": "user", "content": questions[i]}]
                replies[i] = "".join(backend.stream(messages, max_new_tokens=args.max_new_tokens))

        started = time.monotonic()
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        looping = [i for i, r in enumerate(replies) if repeated_sentences(r)]
        summary = {"replies": len(replies), "with_a_repeated_sentence": len(looping),
                   "share": round(len(looping) / len(replies), 3),
                   "median_sentences": statistics.median(len(split_sentences(r)) for r in replies),
                   "median_words": statistics.median(len(r.split()) for r in replies),
                   "wall_s": round(time.monotonic() - started, 1)}
        print(f"decoding {setting}: {json.dumps(summary)}", flush=True)
        results[setting] = {"summary": summary, "replies": dict(zip(questions, replies))}
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
