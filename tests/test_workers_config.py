"""scripts/workers.py: the operator's way to run several workers of one stage."""

import pytest
from supervisor.options import ServerOptions

from scripts.workers import main, set_workers
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


def test_two_workers_get_a_name_a_log_and_an_index_each(tmp_path):
    conf = tmp_path / "supervisord.conf"
    conf.write_text(set_workers(CONF, "tts", 2))
    got = processes(conf)
    assert [(name, log.rsplit("/", 1)[1], env["S2S_WORKER_INDEX"]) for name, log, env in got["tts"]] == [
        ("tts_0", "tts_0.log", "0"), ("tts_1", "tts_1.log", "1")]
    assert [name for name, _, _ in got["llm"]] == ["llm"]  # the other stages as they were
    assert got["asr"][0][1].endswith("/var/log/asr.log")


def test_back_to_one_worker_restores_the_shipped_config():
    assert set_workers(set_workers(CONF, "llm", 3), "llm", 1) == CONF


def test_the_command_rewrites_the_file_and_refuses_nonsense(tmp_path, capsys):
    conf = tmp_path / "supervisord.conf"
    conf.write_text(CONF)
    assert main(["asr", "2", "--conf", str(conf), "--no-update"]) == 0
    assert "numprocs=2" in conf.read_text().split("[program:asr]")[1].split("[program:")[0]
    with pytest.raises(SystemExit):
        main(["asr", "0", "--conf", str(conf), "--no-update"])
    with pytest.raises(ValueError, match="program:gateway"):
        set_workers("[program:asr]\ncommand=x\n", "gateway", 2)
