"""Each setting is declared once (key, type, default, doc) by the code that reads it; the env files
and the README's settings table are written from those declarations and must match them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.settings import GatewaySettings
from services.llm.stage import LlmStage
from services.models.settings import ASR_BACKEND, LLM_MODEL
from services.runtime.errors import ConfigError
from services.runtime.settings import EnvLine, Setting, Settings, StageSettings, read_env_file
from services.runtime.worker import INBOX, Worker
from tests.worker_process import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import settings_docs  # noqa: E402


def test_the_env_files_and_the_readme_match_the_declarations():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_docs.py"), "--check"], cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_declaration_changed_without_the_documents_shows_as_stale(monkeypatch):
    """The check can fail: the LLM's env file declared to set another token cap, the files not rewritten."""
    from services.llm.stage import MAX_NEW_TOKENS

    changed = tuple(EnvLine(MAX_NEW_TOKENS, "300") if line.setting is MAX_NEW_TOKENS else line
                    for line in settings_docs.llm.ENV_FILE)
    monkeypatch.setattr(settings_docs.llm, "ENV_FILE", changed)
    stale = sorted(path.name for path, text in settings_docs.documents().items() if path.read_text() != text)
    assert stale == ["README.md", "llm.env"]


def test_each_env_file_sets_what_its_stage_declares():
    for stage, module in settings_docs.STAGES.items():
        values = read_env_file(ROOT / "config" / f"{stage}.env")
        assert values == {f"S2S_{stage.upper()}_{line.setting.key}": line.text()
                          for line in module.ENV_FILE if not line.commented}


def test_a_stage_reads_its_declared_defaults_when_nothing_is_set():
    settings = StageSettings("llm", {})
    assert settings.value(LLM_MODEL) == "Qwen/Qwen2.5-1.5B-Instruct" and settings.value(ASR_BACKEND) == "openai-whisper"
    assert LlmStage(settings).max_new_tokens == 220


def test_a_value_of_the_wrong_type_names_the_setting():
    limit = Setting("MAX_THINGS", int, 3, "things at most")
    with pytest.raises(ConfigError, match="S2S_LLM_MAX_THINGS must be an integer, got 'many'"):
        StageSettings("llm", {"S2S_LLM_MAX_THINGS": "many"}).value(limit)
    assert Settings("llm", {"S2S_LLM_MAX_THINGS": ""}).value(limit) == 3  # empty: the default


def test_the_gateway_reads_its_environment_and_no_env_file(monkeypatch, tmp_path):
    (tmp_path / "gateway.env").write_text("S2S_GATEWAY_PORT=9999\n")
    monkeypatch.setenv("S2S_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("S2S_GATEWAY_MAX_DECODES", "3")
    monkeypatch.setenv("S2S_GATEWAY_ALLOWED_HOSTS", "Example.org, s2s.lan")
    monkeypatch.setenv("S2S_GATEWAY_REALTIME_MAX_MESSAGE_BYTES", "2097152")
    settings = GatewaySettings.from_env()
    assert settings.port == GatewaySettings().port and settings.max_decodes == 3
    assert settings.allowed_hosts == ("example.org", "s2s.lan")
    assert settings.realtime.max_message_bytes == 2097152 and settings.realtime.hard_message_bytes == 32 * 1024 * 1024


def test_a_stage_without_an_inbox_setting_takes_its_own_size():
    assert INBOX.default is None  # each stage declares its size (StageDefaults.INBOX, or its own)
    from services.tts.stage import TtsStage

    settings = StageSettings("tts", {})
    worker = Worker(TtsStage(settings), settings)
    try:
        assert worker.inbox.maxsize == TtsStage.INBOX
    finally:
        worker._outbox.close(linger=0)
        worker._outbox_pull.close(linger=0)
