"""Replies that loop, through the whole product (docs/BENCHMARKS.md, "Replies that loop").

Starts the product of the code tree CODE (its supervisord.conf, its stages: PYTHONPATH=CODE) on
the registry weights (Whisper base, SmolLM2-135M-Instruct, Kokoro-82M int8 ONNX; the hub is
offline), runs this tree's s2s-loadtest over the spoken questions at concurrency 1 with a new
conversation per turn, keeps the report and the stages' logs in OUT, and stops the product.
    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD .venv/bin/python scripts/bench_replies.py \\
        --code /path/to/tree --out OUT QUESTIONS_DIR
The load tester's report counts replies with a repeated sentence, sentences, audio seconds,
whole-turn time (done_s) and why each reply ended.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

import tests.product as product_module  # noqa: E402
from services.models import store  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("questions", help="a folder of spoken questions (scripts/speak_questions.sh)")
    parser.add_argument("--code", default=str(HERE), help="the code tree whose product runs (default: this one)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--turns", type=int, default=36)
    parser.add_argument("--max-seconds", type=int, default=7200, help="the load tester's time limit")
    args = parser.parse_args()

    for name in ("whisper-base-ct2", "smollm2-135m-instruct", "kokoro-82m-onnx"):
        store.fetch(name)
    code = Path(args.code).resolve()
    product_module.ROOT = code  # its supervisord.conf and scripts; its stages import its code
    env = {"PYTHONPATH": str(code), "S2S_MODELS_DIR": str(store.models_dir()), "S2S_ASR_MODEL": "base",
           "S2S_LLM_MODEL": "Qwen/Qwen2.5-1.5B-Instruct", "S2S_TTS_BACKEND": "kokoro"}
    running = product_module.Product(env)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        running.start(ready_timeout=900)
        _, stages = running.get_json("/api/stages")
        (args.out / "stages.json").write_text(json.dumps(stages, indent=2) + "\n")
        command = [sys.executable, "-m", "tools.loadtest", "--url", running.url, "--turns", str(args.turns),
                   "--concurrency", "1", "--fresh", "--quiet", "--turn-timeout", "600", "--max-seconds", str(args.max_seconds),
                   "--out", str(args.out), args.questions]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(HERE)})
    finally:
        shutil.copytree(running.var / "log", args.out / "logs", dirs_exist_ok=True)
        running.stop()
    run = json.loads((args.out / "report.json").read_text())["runs"][0]
    print(json.dumps({k: run[k] for k in ("ok_turns", "errors", "replies_with_a_repeat", "repeat_share",
                                          "end_reasons", "sentences", "audio_s")}
                     | {"done_s": run["latency"]["done_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
