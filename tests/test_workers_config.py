"""scripts/workers.py: the operator's way to run several workers of one stage, kept out of the
tracked files (var/workers.conf, included by supervisord.conf)."""

import shutil
import subprocess

import pytest
from supervisor.options import ServerOptions

from scripts.workers import main, set_workers, worker_counts
from tests.product import ROOT

CONF = (ROOT / "supervisord.conf").read_text()


def processes(conf_path):
    """What supervisord would start from this config: program -> [(process name, log file, env)]."""
    (conf_path.parent / "var" / "log").mkdir(parents=True, exist_ok=True)  # its %(here)s/var/log
    options = ServerOptions()
    options.configfile = str(conf_path)
    options.process_config(do_usage=False)
    return {group.name: [(p.name, p.stdout_logfile, p.environment) for p in group.process_configs]
            for group in options.process_group_configs}


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "supervisord.conf"
    path.write_text(CONF)
    return path


def test_two_workers_get_a_name_a_log_and_an_index_each(conf):
    set_workers(conf.parent / "var" / "workers.conf", "tts", 2)
    got = processes(conf)
    assert [(name, log, env["S2S_WORKER_INDEX"]) for name, log, env in got["tts"]] == [
        ("tts_0", str(conf.parent / "var/log/tts_0.log"), "0"), ("tts_1", str(conf.parent / "var/log/tts_1.log"), "1")]
    assert [name for name, _, _ in got["llm"]] == ["llm"]  # the other stages as they were
    assert got["asr"][0][1].endswith("/var/log/asr.log")


def test_back_to_one_worker_is_the_shipped_config(conf):
    shipped = processes(conf)
    local = conf.parent / "var" / "workers.conf"
    set_workers(local, "llm", 3)
    set_workers(local, "tts", 2)
    assert worker_counts(local.read_text()) == {"llm": 3, "tts": 2}
    set_workers(local, "llm", 1)
    assert worker_counts(local.read_text()) == {"tts": 2}
    set_workers(local, "tts", 1)
    assert processes(conf) == shipped


def test_the_command_writes_the_local_file_not_the_tracked_config(conf, capsys):
    assert main(["asr", "2", "--conf", str(conf), "--no-update"]) == 0
    assert conf.read_text() == CONF  # the operator's checkout stays clean
    assert worker_counts((conf.parent / "var" / "workers.conf").read_text()) == {"asr": 2}
    assert [name for name, _, _ in processes(conf)["asr"]] == ["asr_0", "asr_1"]
    with pytest.raises(SystemExit):
        main(["asr", "0", "--conf", str(conf), "--no-update"])
    with pytest.raises(SystemExit):
        main(["gateway", "2", "--conf", str(conf), "--no-update"])


@pytest.mark.skipif(not shutil.which("git") or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_ignores_the_operators_worker_counts():
    ignored = subprocess.run(["git", "check-ignore", "-q", "var/workers.conf"], cwd=ROOT)
    assert ignored.returncode == 0
