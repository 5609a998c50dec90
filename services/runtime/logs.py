"""Logging for every s2s process: one JSON object per line (or plain text), configured once.

Each line carries ts, level, logger, msg, process (gateway | asr | llm | tts), pid, and, when the
line is about a turn, `session` and `turn`. `session` is a short digest of the bus session id (the
conversation id, which is also the browser's cookie, so it is never written as is); the gateway
and every worker compute the same digest, so

    grep <session> var/log/*.log

follows one conversation's turns through the gateway, asr, llm and tts logs, and `"turn": N`
picks one turn out of it.

Settings (environment): S2S_LOG_FORMAT=json|text (default json), S2S_LOG_LEVEL (default INFO).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from typing import Any

from services.runtime.settings import Setting, project_value

FORMATS = ("json", "text")
# Attributes every LogRecord has: anything else on a record came from `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_CORE = ("ts", "level", "logger", "msg", "process", "pid", "session", "turn")


def session_tag(session: str | None) -> str | None:
    """The digest of a bus session id that logs carry instead of the id itself."""
    if not session:
        return None
    return hashlib.sha256(session.encode()).hexdigest()[:12]


def turn_fields(session: str | None = None, turn: int | None = None, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call about a turn: logger.info("...", extra=turn_fields(s, t, k=v))."""
    # a name LogRecord already has (name, process, msg...) would make logging raise: renamed
    out: dict[str, Any] = {(f"field_{k}" if k in _STANDARD or k in _CORE else k): v for k, v in fields.items()}
    if session:
        out["session"] = session_tag(session)
    if turn is not None:
        out["turn"] = turn
    return out


def log_turn(logger: logging.Logger, msg: str, session: str | None = None, turn: int | None = None,
             level: int = logging.INFO, exc_info: Any = None, **fields: Any) -> None:
    """One structured line about a turn; fields become keys of the JSON object."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, exc_info=exc_info, extra=turn_fields(session, turn, **fields), stacklevel=2)


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on a value JSON cannot hold (it is written as str)."""

    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "process": self.process,
            "pid": record.process,
        }
        extra = _extra(record)
        for key in ("session", "turn"):
            if extra.get(key) is not None:
                line[key] = extra.pop(key)
        for key, value in extra.items():
            line.setdefault(key if key not in _CORE else f"field_{key}", value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic one-line format, with a turn's fields appended as key=value."""

    def __init__(self, process: str):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = _extra(record)
        if not extra:
            return text
        head, sep, tail = text.partition("\n")  # a traceback stays below the fields
        fields = " ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        return f"{head} [{fields}]{sep}{tail}"


# Project-wide: every process reads S2S_<KEY> from its environment (before any settings file).
LOG_LEVEL = Setting("LOG_LEVEL", str, "INFO", "log level of every process")
LOG_FORMAT = Setting("LOG_FORMAT", str, "json", "`json`: one JSON object per line (`ts`, `level`, `logger`, `msg`, "
                     "`process`, `pid`, and `session`, `turn` on a turn's lines); `text`: the classic line with the "
                     "fields appended")


def configure_logging(process: str, level: str | None = None, fmt: str | None = None, stream=None) -> None:
    """Send every logger's records to stderr (supervisor writes it to var/log/<process>.log), once
    per process; a second call replaces the handler instead of adding one."""
    fmt = (fmt or project_value(None, LOG_FORMAT.key) or LOG_FORMAT.default).strip().lower()
    bad_format = fmt not in FORMATS
    if bad_format:
        fmt = "json"
    level = (level or project_value(None, LOG_LEVEL.key) or LOG_LEVEL.default).strip().upper()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(level)
    except ValueError:
        root.setLevel(logging.INFO)
        logging.getLogger("s2s.logs").error("S2S_LOG_LEVEL=%r is not a level: logging at INFO", level)
    logging.captureWarnings(True)  # warnings.warn(...) becomes a log line too
    if fmt == "json":
        # progress bars drawn on stderr would break the one-object-per-line log (model loading);
        # honoured by libraries imported after this point
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    if bad_format:
        logging.getLogger("s2s.logs").error("S2S_LOG_FORMAT must be json or text: logging json")
