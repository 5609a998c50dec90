"""Every script and console command starts: `--help` prints its usage and exits 0 (a name that
moved or a broken import fails here, not in an operator's hands)."""

import subprocess
import sys
import tomllib

import pytest

from tests.worker_process import ROOT

SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py"))
COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}


def assert_usage(out: subprocess.CompletedProcess, name: str) -> None:
    assert out.returncode == 0, out.stderr[-3000:]
    assert "usage:" in out.stdout and name in out.stdout, out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_prints_its_help(script):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert_usage(out, script)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_console_command_prints_its_help(command):
    """As its entry point runs it (pyproject [project.scripts]), from this tree."""
    module, _, function = COMMANDS[command].partition(":")
    code = (f"import sys; sys.argv = [{command!r}, '--help']; from {module} import {function} as entry; "
            f"sys.exit(entry())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert_usage(out, command)
