"""Where the bus lives: ipc sockets in a private run directory, one per stage plus events."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

STAGES = ("asr", "llm", "tts")


def run_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    default = Path(env.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"s2s-{os.getuid()}"
    return Path(env.get("S2S_RUN_DIR") or default)


def ensure_run_dir(path: Path) -> Path:
    """Create the run dir owner-only (0700): ipc sockets inherit its protection."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def stage_endpoint(stage: str, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(f"S2S_{stage.upper()}_ENDPOINT") or f"ipc://{run_dir(env)}/{stage}.in"


def events_endpoint(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("S2S_EVENTS_ENDPOINT") or f"ipc://{run_dir(env)}/events"


def control_endpoint(environ: dict[str, str] | None = None) -> str:
    """The gateway's broadcast to every worker (turn cancels): each worker of each stage hears it,
    so a cancel reaches whichever worker holds the turn."""
    env = os.environ if environ is None else environ
    return env.get("S2S_CONTROL_ENDPOINT") or f"ipc://{run_dir(env)}/control"
