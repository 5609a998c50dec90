"""Where the bus lives: ipc sockets in a private run directory, one inbox per worker plus events.

Each function reads the project-wide settings from a source (services/runtime/settings.py): a
process's settings, so a worker's env file counts as it does for the CURVE keys, or a mapping.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from services.runtime.errors import ConfigError
from services.runtime.settings import Setting, Source, project_value

STAGES = ("asr", "llm", "tts")
# The largest frame any bus socket accepts (ZMQ_MAXMSGSIZE): libzmq drops a peer that announces a
# larger one instead of allocating it. Far above a real message: a 60 s recording is 1.9 MB of PCM,
# a long sentence of speech about 1.5 MB.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

RUN_DIR = Setting("RUN_DIR", str, None, "ipc sockets (mode 0700); a dir there that is a symlink or another "
                  "user's is refused (exit 78)", default_doc="`$XDG_RUNTIME_DIR/s2s-<uid>` or `/tmp/s2s-<uid>`")
EVENTS_ENDPOINT = Setting("EVENTS_ENDPOINT", str, None, "where the gateway binds the socket every worker sends its "
                          "results and lifecycle messages to; anything but `ipc://` (e.g. `tcp://`) requires the "
                          "CURVE keys below", default_doc="`ipc://$S2S_RUN_DIR/events`")


def run_dir(source: Source = None) -> Path:
    env = source if isinstance(source, Mapping) else os.environ  # XDG_RUNTIME_DIR is the system's, not ours
    default = Path(env.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"s2s-{os.getuid()}"
    return Path(project_value(source, RUN_DIR.key) or default)


def ensure_run_dir(path: Path) -> Path:
    """Create the run dir owner-only (0700): ipc sockets inherit its protection.

    A dir that is already there must be a real directory of this user's: in a shared /tmp anyone
    can create /tmp/s2s-<uid> (or a symlink by that name) first, to take or block the bus.
    ConfigError otherwise, which names the dir and what to do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    fix = "remove it, or set S2S_RUN_DIR to a directory of your own"
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"the run dir {path} is a symbolic link (to {os.readlink(path)}); {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"the run dir {path} is not a directory; {fix}")
    if info.st_uid != os.getuid():
        raise ConfigError(f"the run dir {path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}): "
                          f"another user may have made it to reach or block the bus; {fix}")
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def inbox_endpoint(instance: str, source: Source = None) -> str:
    """A worker's own inbox by default: an ipc socket in the run dir named after the worker
    instance. The worker binds it and announces it in its hello; the gateway connects one PUSH to
    each worker's inbox. `S2S_<STAGE>_INBOX_ENDPOINT` replaces it for a worker on another host."""
    return f"ipc://{run_dir(source)}/{instance}.in"


def events_endpoint(source: Source = None) -> str:
    return project_value(source, EVENTS_ENDPOINT.key) or f"ipc://{run_dir(source)}/events"
