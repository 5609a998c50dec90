"""Soak run of docs/RELIABILITY.md: many turns through s2s-loadtest, bad inputs mixed in, while
every process of the running product is watched for growth.

    .venv/bin/python scripts/soak.py --turns 300 --concurrency 2 --out loadtest-results/soak

The product must be running (scripts/run.sh). Spoken questions are made with espeak-ng; the bad
inputs (empty, noise bytes, a truncated webm, an over-long recording) sit in the same folder, so
the harness sends them like any file and counts their 4xx answers. Before the run (after a few
warm-up turns) and after it, for each program that supervisord runs: resident memory, open file
descriptors, threads; and for the machine: temp files the product left, zombie processes.
Exit 1 when something grew past its allowance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is the capital of France?",
    "How far away is the moon?",
    "Why do cats purr when they are happy?",
    "Can you tell me a fun fact about elephants?",
    "What should I cook for dinner tonight?",
    "How do airplanes stay up in the sky?",
]
RSS_ALLOWANCE = 0.10  # growth after warm-up beyond this fraction is a leak, not noise
FD_ALLOWANCE = 4


def make_inputs(folder: Path) -> None:
    for i, question in enumerate(QUESTIONS):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(folder / f"q{i}.wav"), question],
                       check=True, timeout=30)
    (folder / "bad-empty.wav").write_bytes(b"")
    (folder / "bad-noise.wav").write_bytes(os.urandom(4096))
    webm = folder / "full.webm"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=2",
                    "-c:a", "libopus", str(webm)], check=True, timeout=60)
    data = webm.read_bytes()
    (folder / "bad-truncated.webm").write_bytes(data[: len(data) // 3])
    webm.unlink()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=d=75:a=0.05",
                    "-ar", "16000", "-ac", "1", str(folder / "bad-too-long.wav")], check=True, timeout=60)


def program_pids(conf: Path) -> dict[str, int]:
    out = subprocess.run([str(ROOT / ".venv/bin/supervisorctl"), "-c", str(conf), "status"],
                         capture_output=True, text=True, timeout=30).stdout
    pids = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "RUNNING":
            pids[parts[0]] = int(parts[3].rstrip(","))
    return pids


def process_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "open_files": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"])}


def zombies() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state = stat.rsplit(")", 1)[1].split()[0]
            if state == "Z":
                found.append(stat.split(")")[0] + ")")
    return found


def temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def snapshot(conf: Path) -> dict:
    return {name: {"pid": pid, **process_figures(pid)} for name, pid in program_pids(conf).items()}


def loadtest(url: str, inputs: Path, turns: int, concurrency: int, out: Path) -> dict:
    subprocess.run([str(ROOT / ".venv/bin/s2s-loadtest"), "--url", url, "--turns", str(turns),
                    "--concurrency", str(concurrency), "--fresh", "--turn-timeout", "300",
                    "--max-seconds", "14400", "--quiet", "--out", str(out), str(inputs)], check=True)
    return json.loads((out / "report.json").read_text())["runs"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--conf", type=Path, default=ROOT / "supervisord.conf")
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest-results" / "soak")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="s2s-soak-inputs-") as folder:
        inputs = Path(folder)
        make_inputs(inputs)
        loadtest(args.url, inputs, args.warmup, args.concurrency, args.out / "warmup")
        temp_before, before = temp_entries(), snapshot(args.conf)
        started = time.monotonic()
        report = loadtest(args.url, inputs, args.turns, args.concurrency, args.out / "run")
        minutes = (time.monotonic() - started) / 60
        time.sleep(5)  # let the last uploads expire from pipes and the stages go idle
        after, temp_after = snapshot(args.conf), temp_entries()
    left = sorted(temp_after - temp_before - {Path(folder).name})
    problems = []
    for name, figures in after.items():
        old = before.get(name)
        if old is None or old["pid"] != figures["pid"]:
            problems.append(f"{name} restarted during the run")
            continue
        if figures["rss_mb"] > old["rss_mb"] * (1 + RSS_ALLOWANCE):
            problems.append(f"{name} RSS grew {old['rss_mb']} -> {figures['rss_mb']} MB")
        if figures["open_files"] > old["open_files"] + FD_ALLOWANCE:
            problems.append(f"{name} open files grew {old['open_files']} -> {figures['open_files']}")
    if left:
        problems.append(f"temp files left: {left}")
    if zombie_list := zombies():
        problems.append(f"zombie processes: {zombie_list}")
    result = {"turns": args.turns, "concurrency": args.concurrency, "minutes": round(minutes, 1),
              "before": before, "after": after, "temp_files_left": left, "zombies": zombie_list,
              "ok_turns": report["ok_turns"], "errors_by_detail": report["errors_by_detail"],
              "problems": problems}
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    print("| process | RSS MB before / after | open files before / after | threads before / after |")
    print("|---|---|---|---|")
    for name in sorted(after):
        b, a = before.get(name, {}), after[name]
        print(f"| {name} | {b.get('rss_mb')} / {a['rss_mb']} | {b.get('open_files')} / {a['open_files']} "
              f"| {b.get('threads')} / {a['threads']} |")
    print(f"turns: {args.turns} in {minutes:.1f} min; report: {args.out / 'run' / 'report.json'}")
    print(f"temp files left: {len(left)}; zombies: {len(zombie_list)}")
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
