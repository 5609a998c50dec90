"""Replies that loop, at the LLM stage (docs/BENCHMARKS.md, "Replies that loop").

Generate: every question of scripts/loop_questions.txt goes through the LLM stage of the code tree
on PYTHONPATH (its handler, its model plan: SmolLM2-135M-Instruct, the registry weights, on the
CPU), as the worker runs it, a few replies at once; the spoken sentences and llm.done go to OUT.
    HF_HUB_OFFLINE=1 PYTHONPATH=TREE .venv/bin/python scripts/bench_loops.py --out OUT.json
Report (this tree's reply rules count the repeats):
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_loops.py --report before.json after.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

QUESTIONS = Path(__file__).resolve().parent / "loop_questions.txt"


def generate(out: Path, parallel: int) -> None:
    from proto import ChatMessage, LlmDone, LlmRequest, LlmSentence
    from services.llm.stage import LlmStage
    from services.runtime.settings import StageSettings
    from services.runtime.stage import InProcessStopCheck

    questions = [q.strip() for q in QUESTIONS.read_text().splitlines() if q.strip()]
    stage = LlmStage(StageSettings("llm", {"S2S_LLM_SOURCE": "registry", "S2S_LLM_DEVICE": "cpu"}))
    stage.load()
    replies: list[dict] = [{} for _ in questions]
    gate = threading.Semaphore(parallel)

    def ask(i: int) -> None:
        with gate:
            request = LlmRequest(session=f"q{i}", turn=1, persona="wildlife_expert",
                                 history=[ChatMessage("user", questions[i])])
            started = time.monotonic()
            out = [m for m, _ in stage.handle(request, [], InProcessStopCheck())]
            done = next(m for m in out if isinstance(m, LlmDone))
            replies[i] = {"question": questions[i], "sentences": [m.text for m in out if isinstance(m, LlmSentence)],
                          "tokens": done.tokens, "compute_s": done.compute_s, "wall_s": time.monotonic() - started,
                          "end_reason": getattr(done, "end_reason", "")}

    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write_text(json.dumps({"wall_s": time.monotonic() - started, "replies": replies}, indent=2) + "\n")


def report(paths: list[str]) -> None:
    from collections import Counter

    from services.llm.limits import repeated_sentences, split_sentences

    for path in paths:
        data = json.loads(Path(path).read_text())
        replies = data["replies"]
        texts = [" ".join(r["sentences"]) for r in replies]
        looping = sum(1 for t in texts if repeated_sentences(t))
        print(json.dumps({
            "file": path, "replies": len(replies), "with_a_repeated_sentence": looping,
            "share": round(looping / len(replies), 3),
            "median_sentences": statistics.median(len(split_sentences(t)) for t in texts),
            "median_words": statistics.median(len(t.split()) for t in texts),
            "median_pieces": statistics.median(r["tokens"] for r in replies),
            "median_compute_s": round(statistics.median(r["compute_s"] for r in replies), 2),
            "end_reasons": dict(Counter(r["end_reason"] or "unknown" for r in replies)),
            "wall_s": round(data["wall_s"], 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="generate: write the replies here")
    parser.add_argument("--parallel", type=int, default=4, help="replies decoded at once (one shared batch)")
    parser.add_argument("--report", nargs="+", help="count repeats in these files")
    args = parser.parse_args()
    if args.report:
        report(args.report)
    elif args.out:
        generate(args.out, args.parallel)
    else:
        parser.error("give --out or --report")


if __name__ == "__main__":
    main()
