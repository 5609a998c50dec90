"""The real product in tests: the project's supervisord.conf, four real processes, real sockets.

The config is the repository's own, with only its paths moved into a temp dir, so a test
exercises exactly what `scripts/run.sh` starts.
"""

from __future__ import annotations

import json
import contextlib
import os
from contextlib import contextmanager
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.workers import set_workers

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("gateway", "asr", "llm", "tts")


def tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro) -> dict[str, str]:
    """Settings that run the product on the tiny random-weight models of tests/conftest.py."""
    return {
        "S2S_ASR_BACKEND": "openai-whisper", "S2S_ASR_MODEL": str(tiny_whisper),
        "S2S_LLM_MODEL": str(tiny_qwen2),
        "S2S_LLM_DEVICE": "cpu",
        "S2S_TTS_MODEL_PATH": str(tiny_kokoro["model_path"]),
        "S2S_TTS_CONFIG_PATH": str(tiny_kokoro["config_path"]),
        "S2S_TTS_VOICES_DIR": str(tiny_kokoro["voices_dir"]),
        "S2S_ASR_THREADS": "1", "S2S_LLM_THREADS": "1", "S2S_TTS_THREADS": "1",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Product:
    def __init__(self, env: dict[str, str], workers: dict[str, int] | None = None):
        self.home = Path(tempfile.mkdtemp(prefix="s2s-p-"))
        self.var = self.home / "var"
        (self.var / "log").mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bin_dir = Path(sys.executable).parent
        conf = (ROOT / "supervisord.conf").read_text()
        conf = conf.replace("%(here)s/var", str(self.var)).replace("%(here)s/.venv/bin", str(bin_dir))
        for program, count in (workers or {}).items():
            set_workers(self.var / "workers.conf", program, count)  # as an operator sets it (docs/OPERATIONS.md)
        self.conf = self.home / "supervisord.conf"
        self.conf.write_text(conf.replace("%(here)s", str(ROOT)))
        self.env = {**os.environ, "S2S_RUN_DIR": str(self.home / "run"), "S2S_GATEWAY_PORT": str(self.port),
                    "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    # no worker metrics port: a product someone runs on this machine may hold the defaults
                    "S2S_ASR_METRICS_PORT": "0", "S2S_LLM_METRICS_PORT": "0", "S2S_TTS_METRICS_PORT": "0", **env}
        self.bin = bin_dir

    def ctl(self, *args: str, check: bool = True) -> str:
        out = subprocess.run([str(self.bin / "supervisorctl"), "-c", str(self.conf), *args], env=self.env,
                             capture_output=True, text=True, timeout=60)
        if check and out.returncode not in (0,):
            raise RuntimeError(f"supervisorctl {' '.join(args)} failed: {out.stdout}{out.stderr}")
        return out.stdout

    def start(self, ready_timeout: float = 240) -> "Product":
        subprocess.run([str(self.bin / "supervisord"), "-c", str(self.conf)], env=self.env, check=True, timeout=30)
        self.wait_ready(ready_timeout)
        return self

    def get_json(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                status, last = self.get_json("/readyz")
                if status == 200:
                    return
            except OSError as exc:
                last = exc
            status = self.ctl("status", check=False)
            if "FATAL" in status or "EXITED" in status:  # a program gave up: waiting will not help
                break
            time.sleep(0.5)
        raise AssertionError(f"not ready: {last}\n{self.ctl('status', check=False)}\n{self.logs()}")

    def pids(self) -> dict[str, int]:
        pids = {}
        for line in self.ctl("status", check=False).splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "RUNNING":
                pids[parts[0]] = int(parts[3].rstrip(","))
        return pids

    def log_size(self, program: str) -> int:
        log = self.var / "log" / f"{program}.log"
        return log.stat().st_size if log.exists() else 0

    def log_records(self, program: str, since: int = 0, msg: str | None = None) -> list[dict]:
        """The JSON log lines of a program (from byte offset `since`), those saying `msg` if given."""
        with open(self.var / "log" / f"{program}.log", "rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # supervisor's own lines, a traceback
                continue
            if isinstance(record, dict) and (msg is None or record.get("msg") == msg):
                records.append(record)
        return records

    def logs(self, lines: int = 30) -> str:
        out = []
        for program in PROGRAMS:  # tts.log, or tts_0.log, tts_1.log ... for several workers
            for log in sorted((self.var / "log").glob(f"{program}*.log")):
                out.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-lines:]))
        return "\n".join(out)

    def stop(self) -> None:
        pid_file = self.var / "supervisord.pid"
        children = list(self.pids().values()) if pid_file.exists() else []
        self.ctl("shutdown", check=False)
        deadline = time.monotonic() + 30
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_file.exists():  # supervisord did not stop: make sure nothing is left behind
            try:
                os.killpg(int(pid_file.read_text()), 9)
            except (ProcessLookupError, ValueError, PermissionError):
                pass
        # a program still shutting down when supervisord gave up on it (a loaded machine) is its own
        # process group's leader, not supervisord's: kill it by pid, once it is surely no one else's
        for pid in children:
            if self.home.as_posix() in _environ_of(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        shutil.rmtree(self.home, ignore_errors=True)


def _environ_of(pid: int) -> str:
    """A live process's environment (empty when it is gone): ours name this product's home."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@contextmanager
def running(env: dict[str, str], workers: dict[str, int] | None = None):
    """The product started with these settings (and `workers` per stage, default one), stopped
    (with everything it started) afterwards."""
    product = Product(env, workers)
    try:
        yield product.start()
    finally:
        product.stop()
