"""The kokoro-onnx TTS backend: onnxruntime over an exported Kokoro graph.

Fast tests run the real loading, G2P, chunking and inference code on a tiny random Kokoro exported
with torch.onnx.export (tests/fixtures/tiny_models.py: build_tiny_kokoro_onnx). The slow test needs
the real int8 model, assembled from the registry packages.
"""

import shutil
import wave

import numpy as np
import pytest

from services.runtime.errors import ConfigError
from services.tts.onnx_backend import CONTEXT, MODEL_FILE, KokoroOnnxBackend, split_phonemes

PERSONA_VOICES = ("af_heart", "am_michael", "af_bella", "am_adam")
SENTENCE = "The capital of France is Paris."
# ~650 phonemes with misaki (~690 with espeak): more than one 510-phoneme model call.
LONG_TEXT = " ".join([
    "Elephants are the largest land animals alive today, and they live in herds led by an old female.",
    "They eat grass, leaves, bark and fruit for most of the day, walking many miles to find enough food.",
    "Their trunks have tens of thousands of muscles, strong enough to lift a log and gentle enough to pick a berry.",
    "Calves stay close to their mothers for years, learning where to find water during the long dry season.",
    "Sadly, many populations have declined because of poaching and the loss of their habitat to farms.",
    "Conservation programs now protect large areas of forest and savanna where these animals can roam safely.",
])


def copy_model_dir(src, dst, skip=()):
    dst.mkdir()
    for name in ("vocab.json", MODEL_FILE, "voices"):
        if name in skip:
            continue
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def tts(tiny_kokoro_onnx):
    backend = KokoroOnnxBackend(str(tiny_kokoro_onnx), threads=1)
    backend.load()
    return backend


def test_constructor_does_no_work(tmp_path):
    backend = KokoroOnnxBackend(str(tmp_path / "nowhere"), device="cuda", threads=2)
    assert backend.name == "kokoro-onnx" and backend.sample_rate == 24000
    assert backend.model_label == str(tmp_path / "nowhere" / MODEL_FILE)
    assert backend.g2p is None


def test_load_reports_model_device_g2p_and_warm_up(tts, tiny_kokoro_onnx):
    assert tts.device == "cpu"
    assert tts.model_label == str(tiny_kokoro_onnx / MODEL_FILE)
    assert tts.g2p == "misaki"
    assert tts.load_s > 0 and tts.warmup_s > 0


@pytest.mark.parametrize("voice", PERSONA_VOICES)
def test_each_persona_voice_speaks(tts, voice):
    chunks = list(tts.synthesize(SENTENCE, voice))
    assert len(chunks) == 1
    audio = chunks[0]
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all()
    assert 0.3 < len(audio) / tts.sample_rate < 10  # tiny model: 50 ms per phoneme at speed 1
    assert np.abs(audio).max() > 0


def test_speed_shortens_audio(tts):
    normal = sum(len(a) for a in tts.synthesize(SENTENCE, "af_heart"))
    fast = sum(len(a) for a in tts.synthesize(SENTENCE, "af_heart", speed=2.0))
    assert fast < 0.75 * normal


def test_style_row_follows_kokoro(tts, monkeypatch):
    """kokoro's KPipeline.infer uses pack[len(phonemes) - 1] as the style vector."""
    seen = {}
    run = tts._session.run

    def spy(outputs, feeds):
        seen.update(feeds)
        return run(outputs, feeds)

    monkeypatch.setattr(tts._session, "run", spy)
    (ps,) = tts.phonemes(SENTENCE)
    list(tts.synthesize(SENTENCE, "am_adam"))
    pack = np.fromfile(tts._voices_dir / "am_adam.bin", dtype=np.float32).reshape(-1, 1, 256)
    np.testing.assert_array_equal(seen["style"], pack[len(ps) - 1])
    assert seen["tokens"].dtype == np.int64 and seen["tokens"][0, 0] == 0 and seen["tokens"][0, -1] == 0
    assert seen["tokens"].shape[1] == len(ps) + 2  # every misaki symbol is in the vocabulary
    assert seen["speed"].dtype == np.float32 and seen["speed"].shape == (1,)


def test_unknown_voice_is_a_value_error_naming_it(tts):
    with pytest.raises(ValueError, match="af_nobody"):
        list(tts.synthesize(SENTENCE, "af_nobody"))
    for bad in ("../voices/af_heart", "af heart", ""):
        with pytest.raises(ValueError, match="unknown voice"):
            list(tts.synthesize(SENTENCE, bad))


def test_long_text_is_chunked_to_the_context(tts):
    pieces = list(tts.phonemes(LONG_TEXT))
    assert sum(len(p) for p in pieces) > 550
    assert len(pieces) >= 2 and all(len(p) <= CONTEXT for p in pieces)
    chunks = list(tts.synthesize(LONG_TEXT, "am_michael", speed=2.0))  # speed 2: half the frames to compute
    assert len(chunks) == len(pieces)
    assert all(c.dtype == np.float32 and c.size and np.isfinite(c).all() for c in chunks)


def test_split_phonemes_prefers_sentence_then_clause_then_space():
    sentence = "ðə kˈæpəTᵊl ʌv fɹˈæns ɪz pˈɛɹəs."  # 33 symbols
    pieces = split_phonemes(" ".join([sentence] * 40))
    assert len(pieces) == 3 and all(len(p) <= CONTEXT for p in pieces)
    assert all(p.endswith(".") for p in pieces)
    assert split_phonemes("ab, cd ef", limit=6) == ["ab,", "cd ef"]
    assert split_phonemes("abcd efgh", limit=6) == ["abcd", "efgh"]
    assert split_phonemes("x" * 13, limit=6) == ["x" * 6, "x" * 6, "x"]
    assert split_phonemes("  ") == []


def test_missing_model_file_is_a_config_error_naming_it(tiny_kokoro_onnx, tmp_path):
    bare = copy_model_dir(tiny_kokoro_onnx, tmp_path / "m", skip=(MODEL_FILE,))
    with pytest.raises(ConfigError, match=str(bare / MODEL_FILE)):
        KokoroOnnxBackend(str(bare)).load()


def test_missing_dir_vocab_or_voices_are_config_errors(tiny_kokoro_onnx, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        KokoroOnnxBackend(str(tmp_path / "nowhere")).load()
    no_vocab = copy_model_dir(tiny_kokoro_onnx, tmp_path / "v", skip=("vocab.json",))
    with pytest.raises(ConfigError, match="vocab.json"):
        KokoroOnnxBackend(str(no_vocab)).load()
    no_voices = copy_model_dir(tiny_kokoro_onnx, tmp_path / "s", skip=("voices",))
    with pytest.raises(ConfigError, match="voices"):
        KokoroOnnxBackend(str(no_voices)).load()


def test_corrupt_model_is_a_config_error_naming_it(tiny_kokoro_onnx, tmp_path):
    bad = copy_model_dir(tiny_kokoro_onnx, tmp_path / "m", skip=(MODEL_FILE,))
    (bad / MODEL_FILE).write_bytes(b"not an onnx graph" * 100)
    with pytest.raises(ConfigError, match=str(bad / MODEL_FILE)):
        KokoroOnnxBackend(str(bad)).load()


def test_cuda_without_a_cuda_provider_is_a_config_error(tiny_kokoro_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ConfigError, match="CUDA"):
        KokoroOnnxBackend(str(tiny_kokoro_onnx), device="cuda").load()
    with pytest.raises(ConfigError, match="device"):
        KokoroOnnxBackend(str(tiny_kokoro_onnx), device="tpu").load()


def test_espeak_fallback_without_spacy_model(tiny_kokoro_onnx, monkeypatch, caplog):
    import spacy.util

    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    backend = KokoroOnnxBackend(str(tiny_kokoro_onnx), threads=1)
    backend.load()
    assert backend.g2p == "espeak"
    assert "espeak" in caplog.text and "worse" in caplog.text
    (ps,) = backend.phonemes(SENTENCE)
    assert "ː" not in ps and "fɹˈæns" in ps  # mapped to misaki's US symbols
    (audio,) = backend.synthesize(SENTENCE, "af_bella")
    assert audio.dtype == np.float32 and audio.size and np.isfinite(audio).all()
    pieces = list(backend.phonemes(LONG_TEXT))
    assert len(pieces) >= 2 and all(len(p) <= CONTEXT for p in pieces)


def test_tts_stage_builds_the_onnx_backend(tiny_kokoro_onnx):
    from services.runtime.settings import StageSettings
    from services.tts.stage import TtsStage

    stage = TtsStage(StageSettings("tts", {"S2S_TTS_BACKEND": "kokoro-onnx",
                                           "S2S_TTS_MODEL_DIR": str(tiny_kokoro_onnx), "S2S_TTS_THREADS": "1"}))
    info = stage.load()
    assert info.backend == "kokoro-onnx"
    assert isinstance(stage.backend, KokoroOnnxBackend) and stage.backend.threads == 1
    assert next(stage.backend.synthesize(SENTENCE, "af_heart")).size


# --- the real model ------------------------------------------------------------------------


@pytest.mark.slow
def test_real_kokoro_onnx_speaks(tmp_path, registry_model):
    backend = KokoroOnnxBackend(str(registry_model("kokoro-82m-onnx")))
    backend.load()
    assert backend.g2p == "misaki"
    audio = np.concatenate(list(backend.synthesize(SENTENCE, "af_heart")))
    path = tmp_path / "paris.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(backend.sample_rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    with wave.open(str(path), "rb") as w:
        seconds = w.getnframes() / w.getframerate()
    assert 1.0 < seconds < 5.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.01


def test_the_first_sentence_can_run_on_its_own_thread_count(tiny_kokoro_onnx):
    backend = KokoroOnnxBackend(str(tiny_kokoro_onnx), threads=1, first_threads=2)
    backend.load()
    assert backend._first_session is not backend._session
    assert backend._first_session.get_session_options().intra_op_num_threads == 2
    assert backend._session.get_session_options().intra_op_num_threads == 1
    first = np.concatenate(list(backend.synthesize(SENTENCE, "af_heart", first=True)))
    later = np.concatenate(list(backend.synthesize(SENTENCE, "af_heart")))
    assert first.size and first.size == later.size  # the same model and input, another thread pool
    same = KokoroOnnxBackend(str(tiny_kokoro_onnx), threads=2, first_threads=2)
    same.load()
    assert same._first_session is None  # one session when both counts are equal
