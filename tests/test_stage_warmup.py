"""Each stage warms its model up at load, through its own request handler, and a warm-up that
fails stops the stage with a config error (exit 78) instead of serving a broken model."""

import logging

import pytest

from services.asr.stage import AsrStage
from services.llm.stage import LlmStage
from services.runtime.errors import ConfigError
from services.runtime.settings import StageSettings
from services.tts.stage import TtsStage


def settings(stage: str, **values) -> StageSettings:
    return StageSettings(stage, {f"S2S_{stage.upper()}_{k}": str(v) for k, v in values.items()})


def counting(stage):
    """Wrap stage.handle so the test sees every request it gets and every output it yields."""
    seen = []
    handle = stage.handle

    def wrapped(request, payload, turn):
        outputs = list(handle(request, payload, turn))
        seen.append((request, outputs))
        return iter(outputs)

    stage.handle = wrapped
    return seen


@pytest.fixture
def stages(tiny_whisper, tiny_qwen2, tiny_kokoro):
    return {
        "asr": lambda: AsrStage(settings("asr", MODEL=tiny_whisper, DEVICE="cpu", SOURCE="local")),
        "llm": lambda: LlmStage(settings("llm", MODEL=tiny_qwen2, DEVICE="cpu", SOURCE="local")),
        "tts": lambda: TtsStage(settings("tts", MODEL_PATH=tiny_kokoro["model_path"],
                                         CONFIG_PATH=tiny_kokoro["config_path"],
                                         VOICES_DIR=tiny_kokoro["voices_dir"], DEVICE="cpu", SOURCE="local")),
    }


@pytest.mark.parametrize("name, last_tag", [("asr", "asr.final"), ("llm", "llm.done"), ("tts", "tts.done")])
def test_load_sends_one_request_through_the_handler(stages, name, last_tag):
    stage = stages[name]()
    seen = counting(stage)
    stage.load()
    assert len(seen) == 1, "exactly one warm-up request at load"
    request, outputs = seen[0]
    assert request.session == "warm-up"
    assert outputs and type(outputs[-1][0]).__struct_config__.tag == last_tag  # it ran to the end, as a user's request would


def test_a_failing_warm_up_is_a_config_error(stages):
    stage = stages["llm"]()

    def broken(request, payload, turn):
        raise RuntimeError("the model produced NaNs")
        yield  # a generator, like the real handler

    stage.handle = broken
    with pytest.raises(ConfigError, match="llm warm-up failed: RuntimeError: the model produced NaNs"):
        stage.load()


def test_the_onnx_tts_backend_warms_itself_and_is_not_warmed_twice(tiny_kokoro_onnx):
    stage = TtsStage(settings("tts", BACKEND="kokoro-onnx", MODEL_DIR=tiny_kokoro_onnx, SOURCE="local"))
    seen = counting(stage)
    stage.load()
    assert stage.backend.warmup_s > 0 and seen == []


def test_llm_chunking_settings_are_checked_at_start(tiny_qwen2, caplog):
    with pytest.raises(ConfigError, match="S2S_LLM_CHUNKING must be fast or sentences"):
        LlmStage(settings("llm", MODEL=tiny_qwen2, CHUNKING="quick"))
    with pytest.raises(ConfigError, match="at least 1"):
        LlmStage(settings("llm", MODEL=tiny_qwen2, FIRST_MIN_WORDS=0))
    assert LlmStage(settings("llm", MODEL=tiny_qwen2)).chunking == "fast"
    assert LlmStage(settings("llm", MODEL=tiny_qwen2, CHUNKING="sentences")).chunking == "sentences"
    # the old name still works (operators' env files), with a warning
    with caplog.at_level(logging.WARNING, logger="s2s.llm"):
        assert LlmStage(settings("llm", MODEL=tiny_qwen2, CHUNKING="original")).chunking == "sentences"
    assert "S2S_LLM_CHUNKING=original is deprecated" in caplog.text
