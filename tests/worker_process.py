"""A stage worker in its own process on a private ipc run dir, with a BusClient as its gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from proto import StageReady
from tests.busclient import BusClient

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def private_run_dir():
    """The environment of a worker whose bus lives in a fresh run dir, removed afterwards."""
    # ipc paths must stay short (about 100 bytes), so not under pytest's long tmp_path.
    run_dir = tempfile.mkdtemp(prefix="s2s-t-")
    try:
        yield {**os.environ, "S2S_RUN_DIR": run_dir, "PYTHONPATH": str(ROOT)}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


class WorkerProcess:
    """`python -m <module>` (a stage's entry point) with env; late_bus: the gateway comes up only
    once the worker has loaded and says so in its log (so its hello and ready wait for it)."""

    def __init__(self, env, module: str = "tests.fakes.scripted_stage", late_bus: bool = False,
                 bus: BusClient | None = None, **extra):
        """bus: another worker's, to run several workers of one stage behind one gateway."""
        self.env = {**env, **extra}
        self.own_bus = bus is None
        if bus is not None:
            self.bus = bus
        elif not late_bus:
            self.bus = BusClient(self.env)
        # Its output goes to a file, not a pipe that nobody drains: a worker that logs every frame
        # it drops would block on a full pipe, and look hung.
        self.log_path = Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=self.env["S2S_RUN_DIR"])[1])
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", module], env=self.env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)
        if late_bus:
            self.wait_for_output(" ready: backend=")
            self.bus = BusClient(self.env)

    def ready(self, timeout: float = 20):
        self.bus.wait_for(lambda m: isinstance(m, StageReady), timeout=timeout)
        return self

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        """Until the worker's log says `text` (a loaded machine may take many seconds to start it)."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"the worker exited: {self.output()}"
            assert time.monotonic() < deadline, f"the worker never logged {text!r}: {self.output()}"
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        if self.own_bus:
            self.bus.close()
