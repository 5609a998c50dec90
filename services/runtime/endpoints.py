"""Where the bus lives: ipc sockets in a private run directory, one inbox per worker plus events."""

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


def inbox_endpoint(instance: str, environ: dict[str, str] | None = None) -> str:
    """A worker's own inbox by default: an ipc socket in the run dir named after the worker
    instance. The worker binds it and announces it in its hello; the gateway connects one PUSH to
    each worker's inbox. `S2S_<STAGE>_INBOX_ENDPOINT` replaces it for a worker on another host."""
    return f"ipc://{run_dir(environ)}/{instance}.in"


def events_endpoint(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("S2S_EVENTS_ENDPOINT") or f"ipc://{run_dir(env)}/events"
