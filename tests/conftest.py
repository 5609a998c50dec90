"""Shared pytest fixtures."""

import pytest

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
