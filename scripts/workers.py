"""Set how many workers one stage runs, and apply it to the running product:

    .venv/bin/python scripts/workers.py tts 2      # two TTS workers; the other stages keep serving

Worker counts are the operator's state, so they live outside the tracked files: in
var/workers.conf (ignored by git), which supervisord.conf includes. For each stage with several
workers it sets numprocs, and a process name and a log file per worker (tts_0, tts_1, ...:
var/log/tts_0.log, ...); with 1 the stage's entry goes, and supervisord.conf's own section applies.
Then `supervisorctl update <stage>` restarts that stage alone. A turn whose requests the old
workers held gets them again from the new ones (docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("asr", "llm", "tts")
LOCAL_CONF = Path("var") / "workers.conf"  # beside supervisord.conf, which includes it
_COUNT = re.compile(r"^\[program:(\w+)\]\n(?:[^\[\n][^\n]*\n)*?numprocs=(\d+)$", re.M)


def worker_counts(text: str) -> dict[str, int]:
    """The counts an included workers file sets: program -> numprocs."""
    return {program: int(count) for program, count in _COUNT.findall(text)}


def workers_conf(counts: dict[str, int]) -> str:
    """The included file's text: a section for each stage that runs more than one worker. Its
    %(here)s is the file's own folder, var/."""
    sections = [f"[program:{program}]\nprocess_name=%(program_name)s_%(process_num)d\nnumprocs={count}\n"
                f"stdout_logfile=%(here)s/log/%(program_name)s_%(process_num)d.log\n"
                for program, count in sorted(counts.items()) if count > 1]
    return "; The operator's worker counts, written by scripts/workers.py (included by supervisord.conf).\n" + (
        "\n".join(sections))


def set_workers(path: Path, program: str, count: int) -> None:
    """Write `count` workers for [program:<program>] into the included file at `path`."""
    counts = worker_counts(path.read_text()) if path.exists() else {}
    counts[program] = count
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(workers_conf(counts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("count", type=int, help="workers for the stage (1 or more)")
    parser.add_argument("--conf", type=Path, default=ROOT / "supervisord.conf",
                        help="the supervisord config (it is not changed; the counts go to var/workers.conf beside it)")
    parser.add_argument("--no-update", action="store_true", help="only write the counts")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("count must be at least 1")
    local = args.conf.parent / LOCAL_CONF
    set_workers(local, args.stage, args.count)
    print(f"{local}: {args.stage} runs {args.count} worker(s)")
    if args.no_update:
        return 0
    ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(args.conf)]
    return subprocess.run([*ctl, "update", args.stage]).returncode


if __name__ == "__main__":
    sys.exit(main())
