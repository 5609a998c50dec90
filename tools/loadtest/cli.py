"""s2s-loadtest: drive a running gateway with recorded questions and measure every turn.

Usage:
    s2s-loadtest [options] AUDIO [AUDIO ...]
    python -m tools.loadtest [options] AUDIO [AUDIO ...]

AUDIO is a .wav, .ogg or .webm file, or a folder of them; the inputs are used in turn, cycling.
Each simulated user is its own aiohttp client session with its own cookie jar, so conversations
stay separate, and talks to the gateway exactly as the page does: POST /upload?persona=KEY with
the recording as the body, then GET /stream/<upload id> (SSE: transcript, chunk..., done | error).

Modes (all bounded by --turns and --max-seconds):
    --concurrency C        C users, each doing turns back to back until N turns are done (default 1)
    --rate R               open loop: a new user arrives every 1/R s, whatever the others are doing
    --sweep 1,2,4,8        the concurrency mode once per level, N turns each; also writes sweep.png

Options:
    --url URL              the gateway (default http://127.0.0.1:7860); a non-loopback host is
                           refused unless --allow-remote is given
    --allow-remote         allow a gateway that is not on this machine
    --turns N              turns per run (per level in a sweep; default 20)
    --max-seconds S        time limit for the whole run, sweep included (default 600); no turn starts
                           after it and a turn still running is cut (error kind "deadline")
    --turn-timeout S       per-turn limit from upload to done (default 120; error kind "timeout")
    --persona KEY          wildlife_expert (default), friendly_teacher, casual_chat, astronaut
    --fresh                a new conversation for every turn (default: each user keeps one conversation,
                           so its history grows as a person's would)
    --compare URL          side by side: at each level, the same turns against --url and then against
                           URL (an `s2s-original` server: the original app's flow, one global lock);
                           writes product/ and original/ reports and comparison.json with the ratios
    --out DIR              where the results go (default loadtest-results/<YYYYmmdd-HHMMSS>/)
    --quiet                no progress bar and no table (the path of report.json is still printed)

Realtime (--realtime): conversations over /v1/realtime instead of uploads: --concurrency N
sessions at once, --turns turns in each, every .wav input spoken at real-time pace as a
microphone would (tools/loadtest/realtime.py). Reports speech end to first audio, speech end
to final transcript, the turn detector's end to that transcript, false endpoints and, with --barge-in (the next question interrupts each
answer as soon as its audio starts), barge-in to the last audio byte of the cancelled answer:
realtime.json, realtime_turns.csv, realtime.png.
    --realtime             the mode above
    --turn-detection T     server_vad (default) or semantic_vad
    --silence-ms MS        server_vad's silence_duration_ms (default 500)
    --barge-in             interrupt every answer but the last

Per turn (turns.csv): upload_s (request start to upload id), transcript_s, ttfa_s (time to first
audio) and done_s (each from the end of the upload), the stages' compute times from done.timing
(asr, llm, llm_first_sentence, tts, tts_first_chunk), chunks, audio_s (sum of the chunk WAV
durations), the error (kind http_4xx / http_5xx with its status, sse_error with its stage, timeout,
connection, deadline) and overhead_s = ttfa_s - (asr + llm_first_sentence + tts_first_chunk):
what the bus, the gateway and queueing add to the time to first audio.

Summary (printed, and report.json): p50, p95, p99, max of every latency field, ok turns per
minute, error rate, error counts by kind and by kind plus status/stage, overhead p50/p95.
latency.png holds the histogram and CDF of ttfa_s and done_s.

Exit status: 0 when the run completed (turn errors are reported, not fatal); 2 on bad arguments,
unreadable inputs, or a gateway that does not answer GET /healthz.

Examples:
    s2s-loadtest --turns 20 --concurrency 2 question.wav
    s2s-loadtest --rate 0.5 --turns 30 --max-seconds 120 recordings/
    s2s-loadtest --sweep 1,2,4,8 --turns 16 --out results/sweep recordings/
    s2s-loadtest --sweep 1,4 --turns 8 --fresh --compare http://127.0.0.1:7861 recordings/
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from tools.loadtest.client import check_health, load_inputs
from tools.loadtest.report import compare, format_comparison, format_table, write_all, write_json
from tools.loadtest.runner import RunConfig, run, run_compare
from services.personas import PERSONAS

DEFAULT_URL = "http://127.0.0.1:7860"
EXIT_OK, EXIT_USAGE = 0, 2


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_remote: bool) -> str:
    """The URL without a trailing slash; ValueError for a bad or (without allow_remote) non-loopback one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if not allow_remote and not is_loopback_url(url):
        raise ValueError(f"{parts.hostname!r} is not a loopback address; pass --allow-remote to load-test "
                         "a gateway on another machine")
    return url.rstrip("/")


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sweep wants comma-separated integers, not {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("--sweep levels must be integers >= 1")
    return levels


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2s-loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="AUDIO", help=".wav/.ogg/.webm files or folders of them")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--allow-remote", action="store_true")
    parser.add_argument("--turns", type=_positive(int), default=20)
    parser.add_argument("--max-seconds", type=_positive(float), default=600.0)
    parser.add_argument("--turn-timeout", type=_positive(float), default=120.0)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=_positive(int), default=None)
    mode.add_argument("--rate", type=_positive(float), default=None, help="turns per second (open loop)")
    mode.add_argument("--sweep", type=parse_levels, default=None, help="e.g. 1,2,4,8")
    parser.add_argument("--persona", default="wildlife_expert", choices=sorted(PERSONAS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--compare", default=None, metavar="URL")
    parser.add_argument("--realtime", action="store_true")
    parser.add_argument("--turn-detection", default="server_vad", choices=("server_vad", "semantic_vad"))
    parser.add_argument("--silence-ms", type=_positive(int), default=500)
    parser.add_argument("--barge-in", action="store_true")
    return parser


def default_out_dir() -> Path:
    return Path("loadtest-results") / time.strftime("%Y%m%d-%H%M%S")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on errors, 0 for --help
        return int(exc.code or 0)
    try:
        url = check_url(args.url, args.allow_remote)
        baseline = check_url(args.compare, args.allow_remote) if args.compare else None
        inputs = load_inputs(args.inputs)
        if baseline and args.rate:
            raise ValueError("--compare runs concurrency levels (--concurrency or --sweep), not --rate")
    except (ValueError, OSError) as exc:
        print(f"s2s-loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for target in filter(None, (url, baseline)):
        problem = asyncio.run(check_health(target))
        if problem is not None:
            print(f"s2s-loadtest: error: the gateway at {target} is not reachable: {problem}", file=sys.stderr)
            return EXIT_USAGE
    if args.realtime:
        return _realtime(url, inputs, args)
    config = RunConfig(url=url, inputs=inputs, turns=args.turns, concurrency=args.concurrency or 1, rate=args.rate,
                       max_seconds=args.max_seconds, turn_timeout=args.turn_timeout, persona=args.persona,
                       quiet=args.quiet, fresh=args.fresh)
    out_dir = args.out or default_out_dir()
    described = {k: v for k, v in asdict(config).items() if k != "inputs"}
    described.update(inputs=[i.name for i in inputs], sweep=args.sweep,
                     mode="sweep" if args.sweep else ("rate" if args.rate else "concurrency"))
    if baseline:
        return _side_by_side(config, baseline, args, described, out_dir)
    runs = asyncio.run(run(config, args.sweep))
    report = _write(runs, described, args.sweep, out_dir, args.quiet)
    print(f"report: {report['files']['report']}")
    return EXIT_OK


def _realtime(url: str, inputs, args) -> int:
    from tools.loadtest.realtime import format_realtime, run_realtime, summarize_realtime, write_realtime

    detection = {"type": args.turn_detection}
    if args.turn_detection == "server_vad":
        detection["silence_duration_ms"] = args.silence_ms
    sessions = args.concurrency or 1
    try:
        turns, wall = asyncio.run(run_realtime(url, inputs, sessions, args.turns, args.barge_in, detection,
                                               args.turn_timeout, args.max_seconds))
    except ValueError as exc:  # an input that cannot be streamed
        print(f"s2s-loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = {"url": url, "sessions": sessions, "turns_per_session": args.turns, "barge_in": args.barge_in,
              "turn_detection": detection, "inputs": [i.name for i in inputs]}
    summary = summarize_realtime(turns, wall, config)
    files = write_realtime(turns, summary, args.out or default_out_dir())
    if not args.quiet:
        print(format_realtime(summary))
    print(f"report: {files['report']}")
    return EXIT_OK


def _write(runs, described: dict, levels: list[int] | None, out_dir: Path, quiet: bool) -> dict:
    described = dict(described)
    if levels and len(runs) < len(levels):
        described["skipped_levels"] = levels[len(runs):]
    report = write_all(runs, described, out_dir, sweep=bool(levels))
    if not quiet:
        for summary in report["runs"]:
            print(format_table(summary))
            print()
        if described.get("skipped_levels"):
            print(f"levels not run (--max-seconds reached): {described['skipped_levels']}")
    return report


def _side_by_side(config: RunConfig, baseline: str, args, described: dict, out_dir: Path) -> int:
    levels = args.sweep or [config.concurrency]
    product_runs, original_runs = asyncio.run(run_compare(config, baseline, levels))
    sweep = levels if len(levels) > 1 else None
    product = _write(product_runs, described, sweep, out_dir / "product", args.quiet)
    original = _write(original_runs, {**described, "url": baseline}, sweep, out_dir / "original", args.quiet)
    rows = compare(product["runs"], original["runs"])
    path = write_json({"product_url": config.url, "original_url": baseline, "levels": levels, "rows": rows,
                       "product_report": product["files"]["report"],
                       "original_report": original["files"]["report"]}, out_dir / "comparison.json")
    print(format_comparison(rows))
    print(f"report: {path}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
