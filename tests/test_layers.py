"""The import rules in .importlinter hold, with no exceptions: proto depends on nothing of ours,
the stages do not import each other or the gateway, the gateway imports no stage, sibling modules
form no cycle, nothing of the product imports tools/, and the tools never import the gateway's app."""

import configparser
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


def test_no_contract_has_exceptions():
    """Each rule holds for the whole tree: no import is let through (ignore_imports)."""
    config = configparser.ConfigParser(comment_prefixes=(";",))
    config.read(ROOT / ".importlinter")
    excepted = [section for section in config.sections() if config.has_option(section, "ignore_imports")]
    assert config.sections() and not excepted, excepted
