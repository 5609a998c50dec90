"""The import rules in .importlinter hold: proto depends on nothing of ours, the stages do not
import each other or the gateway, the gateway imports no stage, and sibling modules form no cycle."""

import os
import subprocess
import sys
from pathlib import Path

from tests.worker_process import ROOT


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
