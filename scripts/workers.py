"""Set how many workers one stage runs, and apply it to the running product:

    .venv/bin/python scripts/workers.py tts 2      # two TTS workers; the other stages keep serving

It rewrites that stage's section of supervisord.conf (numprocs; with several workers each gets its
own process name, tts_0, tts_1, ..., and its own log, var/log/tts_0.log, ...), then runs
`supervisorctl update <stage>`, which restarts that stage alone. A turn whose request the old
workers held gets it again from the new ones (docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("asr", "llm", "tts")


def set_workers(conf: str, program: str, count: int) -> str:
    """supervisord.conf's text with `count` workers for [program:<program>]."""
    head, sep, rest = conf.partition(f"[program:{program}]\n")
    if not sep:
        raise ValueError(f"no [program:{program}] section")
    section, nxt, tail = rest.partition("\n[")
    suffix = "_%(process_num)d" if count > 1 else ""  # several: a name and a log file each
    for pattern, line in ((r"^process_name=.*$", "process_name=%(program_name)s" + suffix),
                          (r"^numprocs=.*$", f"numprocs={count}"),
                          (r"^stdout_logfile=(.*)/%\(program_name\)s(?:_%\(process_num\)d)?\.log$",
                           r"stdout_logfile=\1/%(program_name)s" + suffix + ".log")):
        section, n = re.subn(pattern, line, section, flags=re.M)
        if n != 1:
            raise ValueError(f"[program:{program}] lacks a line matching {pattern!r}")
    return head + sep + section + nxt + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("count", type=int, help="workers for the stage (1 or more)")
    parser.add_argument("--conf", type=Path, default=ROOT / "supervisord.conf")
    parser.add_argument("--no-update", action="store_true", help="only rewrite the config file")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("count must be at least 1")
    args.conf.write_text(set_workers(args.conf.read_text(), args.stage, args.count))
    print(f"{args.conf}: {args.stage} runs {args.count} worker(s)")
    if args.no_update:
        return 0
    ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(args.conf)]
    return subprocess.run([*ctl, "update", args.stage]).returncode


if __name__ == "__main__":
    sys.exit(main())
