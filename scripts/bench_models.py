#!/usr/bin/env python
"""Per-stage model benchmark: what each stage loads with the current settings, timed through the
stage's own request handler, one fresh process per stage (so peak memory is that stage's alone).

    .venv/bin/python scripts/bench_models.py                 # all three stages, 5 runs each
    .venv/bin/python scripts/bench_models.py --stages asr --repeat 3
    S2S_ASR_BACKEND=faster-whisper .venv/bin/python scripts/bench_models.py --stages asr

Reports load time, ASR seconds for a ~3 s clip, LLM time to first sentence and tokens per
second, TTS seconds per sentence and real-time factor, and peak RSS per stage (medians).
Prints a Markdown table, and the raw figures as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# At the top, not in the child's code path only: a name that moved fails `--help` (tests/test_scripts.py).
from proto import AsrRequest, ChatMessage, LlmDone, LlmRequest, LlmSentence, TtsDone, TtsRequest  # noqa: E402
from services.runtime.settings import StageSettings  # noqa: E402
from services.runtime.worker import TurnBook, StopCheck, apply_cpu_settings  # noqa: E402

QUESTION = "Tell me why Paris is the capital of France."  # about 3 s at 140 words per minute
TTS_SENTENCES = (
    ("af_heart", "Elephants can recognize themselves in a mirror, which is a rare ability among animals."),
    ("am_michael", "Think of electricity like water flowing through a pipe, where voltage is the pressure."),
    ("af_bella", "Honestly, I would grab a coffee first and then take a long walk in the park."),
    ("am_adam", "Houston, we have a problem: oxygen levels are dropping fast in the command module."),
    ("af_heart", "The capital of France is Paris, famous for the Eiffel Tower and the Louvre museum."),
)


def _turn(request):
    return StopCheck(request, TurnBook(), threading.Event())


def _outputs(stage, request, payload=()):
    return [message for message, _ in stage.handle(request, list(payload), _turn(request))]


def _spoken_pcm(text: str) -> bytes:
    """espeak-ng speech as 16 kHz mono PCM, the way the gateway hands it to the ASR stage."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text], check=True)
        return subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-ac", "1", "-ar", "16000",
                               "-f", "s16le", "pipe:1"], check=True, capture_output=True).stdout


def bench_asr(stage, repeat: int) -> dict:
    pcm = _spoken_pcm(QUESTION)
    runs = [_outputs(stage, AsrRequest(), [pcm])[0] for _ in range(repeat + 1)][1:]  # first run is warm-up
    return {"clip_s": round(len(pcm) / 32000, 2), "asr_s": statistics.median(r.compute_s for r in runs),
            "transcript": runs[0].text}


def bench_llm(stage, repeat: int) -> dict:
    tokenizer = stage.backend.tokenizer
    request = LlmRequest(persona="wildlife_expert", history=[ChatMessage("user", QUESTION)])
    first, rates, replies = [], [], []
    for i in range(repeat + 1):
        outputs = _outputs(stage, request)
        done = next(m for m in outputs if isinstance(m, LlmDone))
        sentences = [m for m in outputs if isinstance(m, LlmSentence)]
        tokens = len(tokenizer.encode(done.full_text, add_special_tokens=False))
        if i == 0:
            continue  # warm-up
        first.append(sentences[0].elapsed_s if sentences else float("nan"))
        rates.append(tokens / done.compute_s)
        replies.append(done.full_text)
    return {"first_sentence_s": statistics.median(first), "tokens_per_s": round(statistics.median(rates), 1),
            "reply": replies[0]}


def bench_tts(stage, repeat: int) -> dict:
    per_sentence, rtf = [], []
    for voice, text in TTS_SENTENCES:
        request = TtsRequest(index=0, text=text, voice=voice)
        _outputs(stage, request)  # warm-up, and the voice pack is read once
        runs = [next(m for m in _outputs(stage, request) if isinstance(m, TtsDone)) for _ in range(repeat)]
        compute = statistics.median(r.compute_s for r in runs)
        per_sentence.append(compute)
        rtf.append(compute / runs[0].audio_s)
    return {"sentence_s": round(statistics.median(per_sentence), 3), "rtf": round(statistics.median(rtf), 3),
            "sentences": len(TTS_SENTENCES)}


BENCHES = {"asr": bench_asr, "llm": bench_llm, "tts": bench_tts}


def run_one(name: str, repeat: int) -> dict:
    """In this process: load the stage as its worker would, then time its handler."""

    stage_class = {"asr": "services.asr.stage:AsrStage", "llm": "services.llm.stage:LlmStage",
                   "tts": "services.tts.stage:TtsStage"}[name]
    module, _, cls = stage_class.partition(":")
    settings = StageSettings.load(name)
    apply_cpu_settings(settings)  # THREADS and NICE, as the worker applies them
    stage = getattr(__import__(module, fromlist=[cls]), cls)(settings)
    started = time.monotonic()
    info = stage.load()
    result = {"stage": name, "backend": info.backend, "model": info.model, "source": info.source,
              "device": info.device, "load_s": round(time.monotonic() - started, 2)}
    result.update(BENCHES[name](stage, repeat))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
    return result


def table(results: list[dict]) -> str:
    rows = ["| stage | backend / model (source) | load s | figure | peak RSS MB |", "|---|---|---|---|---|"]
    for r in results:
        if r["stage"] == "asr":
            figure = f"{r['asr_s']:.2f} s for a {r['clip_s']} s clip"
        elif r["stage"] == "llm":
            figure = f"first sentence {r['first_sentence_s']:.2f} s, {r['tokens_per_s']} tokens/s"
        else:
            figure = f"{r['sentence_s']:.2f} s per sentence, real-time factor {r['rtf']:.2f}"
        rows.append(f"| {r['stage']} | {r['backend']} / {r['model']} ({r['source']}, {r['device']}) | "
                    f"{r['load_s']:.1f} | {figure} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="asr,llm,tts")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs after one warm-up; medians reported")
    parser.add_argument("--one", choices=sorted(BENCHES), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.repeat)))
        return 0
    results = []
    for name in args.stages.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--repeat", str(args.repeat)],
                             capture_output=True, text=True, env={**os.environ, "S2S_LOG_LEVEL": "WARNING"})
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(table(results))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
