"""Turn detection (gateway/listening) on the real Silero VAD and Smart Turn v3.2 ONNX models.

Speech with known boundaries is espeak-ng padded with known silence over a quiet noise floor.
Smart Turn's complete and cut-off questions are spoken by Kokoro (the registry weights): espeak-ng
ends every phrase, even "What is the capital of", with a falling final intonation that Smart Turn
hears as a finished turn (it gives that phrase 0.9), so espeak cannot show the difference.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest

from gateway.listening import (EAGERNESS_WAIT_MS, PAUSE_MS, ListeningModels, Resampler24kTo16k, SpeechStarted,
                               SpeechStopped, TurnDetector, resample_24k_to_16k)
from gateway.listening.features import WINDOW_SAMPLES, fit_window, log_mel
from gateway.listening.models import FRAME_MS, FRAME_SAMPLES, VadState
from tests.audio import spoken_pcm16

SERVER_VAD = {"type": "server_vad"}
NOISE_FLOOR = 20  # standard deviation in PCM16 units, about -64 dBFS: silence is not digital zero


@pytest.fixture(scope="module")
def models(registry_model):
    registry_model("silero-vad")
    registry_model("smart-turn-v3.2")
    return ListeningModels.load(semantic=True)  # finds both verified, loads them


@functools.cache
def speech(text: str) -> np.ndarray:
    return spoken_pcm16(text)


def padded(samples: np.ndarray, lead_ms: int, tail_ms: int, noise: float = NOISE_FLOOR, seed: int = 0) -> bytes:
    """`samples` (16 kHz) with `lead_ms` of silence before and `tail_ms` after, plus noise."""
    x = np.concatenate([np.zeros(lead_ms * 16), samples, np.zeros(tail_ms * 16)])
    x = x + np.random.default_rng(seed).normal(0, noise, x.size)
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def detect(models, turn_detection: dict, pcm: bytes, **kwargs) -> list:
    return TurnDetector(models, turn_detection, **kwargs).feed(pcm)


def kinds(events: list) -> list[type]:
    return [type(e) for e in events]


# --- server_vad --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, lead_ms", [("How far away is the moon?", 1000),
                                           ("Why do cats purr when they are happy?", 1270)])
def test_server_vad_finds_where_speech_starts_and_ends_within_100_ms(models, text, lead_ms):
    words = speech(text)
    end_ms = lead_ms + words.size / 16
    started, stopped = detect(models, SERVER_VAD, padded(words, lead_ms, 1500))
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    assert abs(started.speech_start_ms - lead_ms) <= 100, started
    assert abs(stopped.speech_end_ms - end_ms) <= 100, (stopped, end_ms)
    # the defaults: 300 ms of prefix padding; the turn ends after 500 ms of silence
    assert started.audio_start_ms == started.speech_start_ms - 300
    assert 500 <= stopped.audio_end_ms - stopped.speech_end_ms < 500 + 100
    assert stopped.reason == "silence"


def test_prefix_padding_and_silence_duration_are_honoured(models):
    words = speech("How far away is the moon?")
    pcm = padded(np.concatenate([words, np.zeros(700 * 16), words]), 1500, 2000)  # two phrases 700 ms apart

    short = detect(models, {"type": "server_vad", "prefix_padding_ms": 0, "silence_duration_ms": 400}, pcm)
    assert kinds(short) == [SpeechStarted, SpeechStopped] * 2  # the 700 ms gap ends the first turn
    assert short[0].audio_start_ms == short[0].speech_start_ms
    assert 400 <= short[1].audio_end_ms - short[1].speech_end_ms < 400 + 100

    long = detect(models, {"type": "server_vad", "prefix_padding_ms": 1000, "silence_duration_ms": 1200}, pcm)
    assert kinds(long) == [SpeechStarted, SpeechStopped]  # one turn over both phrases
    assert long[0].audio_start_ms == long[0].speech_start_ms - 1000
    assert 1200 <= long[1].audio_end_ms - long[1].speech_end_ms < 1200 + 100

    # a long prefix never reaches back into the previous turn
    overlapping = detect(models, {"type": "server_vad", "prefix_padding_ms": 1000, "silence_duration_ms": 400}, pcm)
    assert kinds(overlapping) == [SpeechStarted, SpeechStopped] * 2
    assert overlapping[2].audio_start_ms == overlapping[1].audio_end_ms < overlapping[2].speech_start_ms


def test_speech_right_after_music_is_found_on_time(models):
    """Silero's recurrent state drifts in long non-speech; the detector clears it in quiet
    stretches, which finds speech after 10 s of music one frame sooner (40 ms late, not 72)."""
    rng = np.random.default_rng(6)
    t = np.arange(4000) / 16000
    notes = [sum(0.05 * np.sin(2 * np.pi * 220 * 2 ** (rng.integers(0, 24) / 12) * step * t)
                 for step in (1, 1.25, 1.5)) for _ in range(40)]  # 40 chords of 250 ms
    music = np.concatenate(notes) * 32767
    lead_ms = music.size // 16 + 200
    pcm = padded(np.concatenate([music, np.zeros(200 * 16), speech("How far away is the moon?")]), 0, 1000)
    started, stopped = detect(models, SERVER_VAD, pcm)
    assert 0 <= started.speech_start_ms - lead_ms <= 50


def test_threshold_is_honoured(models):
    # speech at a low level in loud noise: Silero is never sure of it
    pcm = padded(speech("How far away is the moon?") * 0.2, 1000, 1000, noise=1500)
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    state = VadState()
    probabilities = [models.speech_probability(samples[i:i + FRAME_SAMPLES], state)
                     for i in range(0, samples.size - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    assert 0.6 < max(probabilities) < 0.95  # the premise: some frames pass 0.5, none reaches 0.95
    assert kinds(detect(models, {"type": "server_vad", "threshold": 0.5}, pcm)) == [SpeechStarted, SpeechStopped]
    assert detect(models, {"type": "server_vad", "threshold": 0.95}, pcm) == []


def test_a_click_a_noise_burst_or_a_short_mm_does_not_start_a_turn(models):
    rng = np.random.default_rng(1)
    x = np.zeros(3 * 16000)
    x[16000:16080] = 20000  # a 5 ms click
    burst = rng.normal(0, 8000, 2400) * np.exp(-np.arange(2400) / 640)  # 150 ms, cough-like decay
    x[24000:26400] += burst
    noises = padded(x, 0, 0, seed=2)
    mm = padded(speech("Mm.")[:200 * 16], 1000, 1500)  # 200 ms of "mm"
    for turn_detection in (SERVER_VAD, {"type": "semantic_vad"}):
        assert detect(models, turn_detection, noises) == []
        assert detect(models, turn_detection, mm) == []
    # it is the minimum speech length that keeps the "mm" out
    assert kinds(detect(models, SERVER_VAD, mm, min_speech_ms=0)) == [SpeechStarted, SpeechStopped]
    assert kinds(detect(models, SERVER_VAD, mm, min_speech_ms=150)) == [SpeechStarted, SpeechStopped]


@pytest.mark.parametrize("turn_detection", [SERVER_VAD, {"type": "semantic_vad", "eagerness": "high"}])
def test_any_chunking_gives_the_same_events(models, turn_detection):
    words = speech("How far away is the moon?")
    pcm = padded(np.concatenate([words, np.zeros(2500 * 16), words]), 700, 2500)  # two turns, whatever
    whole = detect(models, turn_detection, pcm)  # Smart Turn thinks of the pause
    assert kinds(whole) == [SpeechStarted, SpeechStopped] * 2
    rng = np.random.default_rng(3)
    for sizes in (rng.integers(1, 4000, 400), [1] * 7000 + [333] * 1000, [1023]):
        detector, events, at = TurnDetector(models, turn_detection), [], 0
        while at < len(pcm):
            for size in sizes:
                events += detector.feed(pcm[at:at + int(size)])
                at += int(size)
        assert events == whole, sizes[:5]


def test_sessions_share_the_models_across_threads(models):
    """One ListeningModels, several detectors fed at once from threads (as the gateway's
    sessions are): each gets exactly the events it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    streams = [padded(speech("How far away is the moon?"), lead_ms, 1000, seed=lead_ms) for lead_ms in (300, 700, 1100)]
    alone = [detect(models, SERVER_VAD, pcm) for pcm in streams]

    def in_chunks(pcm: bytes) -> list:
        detector = TurnDetector(models, SERVER_VAD)
        return [event for at in range(0, len(pcm), 3200) for event in detector.feed(pcm[at:at + 3200])]

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(in_chunks, streams)) == alone
    assert all(kinds(events) == [SpeechStarted, SpeechStopped] for events in alone)
    assert len({events[0].speech_start_ms for events in alone}) == 3


def test_start_ms_moves_every_position(models):
    pcm = padded(speech("How far away is the moon?"), 200, 1000)  # the prefix padding reaches the stream start
    plain = detect(models, SERVER_VAD, pcm)
    later = detect(models, SERVER_VAD, pcm, start_ms=60_000)
    assert plain[0].audio_start_ms == 0
    moved = [dataclasses.replace(e, **{k: v + 60_000 for k, v in dataclasses.asdict(e).items() if k.endswith("_ms")})
             for e in plain]
    assert later == moved


def test_reset_forgets_the_turn_in_progress(models):
    words = speech("How far away is the moon?")
    pcm = padded(words, 1000, 1500)
    detector = TurnDetector(models, SERVER_VAD)
    half = (1000 + words.size // 32) * 32  # in the middle of the question
    (started,) = detector.feed(pcm[:half])
    detector.reset()
    reset_at = detector.position_ms
    events = detector.feed(pcm[half:])
    assert SpeechStopped not in kinds(events[:1])  # the forgotten turn never stops
    assert kinds(events) == [SpeechStarted, SpeechStopped]  # the rest of the question is a new turn
    assert events[0].audio_start_ms >= reset_at > started.audio_start_ms


# --- semantic_vad (Smart Turn) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def kokoro(registry_model):
    """Kokoro speech (24 kHz, as a Realtime client sends it) brought to 16 kHz by the resampler."""
    from services.tts.onnx_backend import KokoroOnnxBackend

    backend = KokoroOnnxBackend(str(registry_model("kokoro-82m-onnx")), threads=0)  # every core
    backend.load()

    @functools.cache
    def say(text: str) -> np.ndarray:
        audio = np.concatenate(list(backend.synthesize(text, "bm_lewis")))
        pcm24 = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        return np.frombuffer(resample_24k_to_16k(pcm24), "<i2")

    return say


def test_smart_turn_holds_a_cut_off_question_longer_than_a_complete_one(models, kokoro):
    complete = padded(kokoro("What is the capital of France?"), 500, 9000)
    cut_off = padded(kokoro("What is the capital of"), 500, 9000)

    def held(turn_detection, pcm) -> tuple[int, str]:
        started, stopped = detect(models, turn_detection, pcm)
        return stopped.audio_end_ms - stopped.speech_end_ms, stopped.reason

    for eagerness in ("high", "low"):
        semantic = {"type": "semantic_vad", "eagerness": eagerness}
        wait_ms, reason = held(semantic, complete)
        assert reason == "complete" and PAUSE_MS <= wait_ms < PAUSE_MS + FRAME_MS
        wait_ms, reason = held(semantic, cut_off)
        assert reason == "timeout" and EAGERNESS_WAIT_MS[eagerness] <= wait_ms < EAGERNESS_WAIT_MS[eagerness] + FRAME_MS

    # speech that resumes within the wait continues the turn
    first = kokoro("What is the capital of")
    resumed = padded(np.concatenate([first, np.zeros(1000 * 16), kokoro("What is the capital of France?")]),
                     500, 3000)
    events = detect(models, {"type": "semantic_vad", "eagerness": "high"}, resumed)
    assert kinds(events) == [SpeechStarted, SpeechStopped]
    assert events[1].speech_end_ms > 500 + first.size / 16 + 1000


def test_smart_turn_features_match_transformers_whisper_features():
    from transformers import WhisperFeatureExtractor

    audio = np.random.default_rng(4).normal(0, 0.1, 3 * 16000).astype(np.float32)
    window = fit_window(audio)
    assert window.size == WINDOW_SAMPLES and not window[:WINDOW_SAMPLES - audio.size].any()  # zeros in front
    expected = WhisperFeatureExtractor(chunk_length=8)(
        window, sampling_rate=16000, padding="max_length", max_length=WINDOW_SAMPLES, truncation=True,
        do_normalize=True, return_tensors="np").input_features[0]
    ours = log_mel(window)
    assert ours.shape == expected.shape == (80, 800)
    assert np.abs(ours - expected).max() < 1e-4


# --- configuration -----------------------------------------------------------------------------


def test_effective_turn_detection_fills_in_the_defaults(models):
    assert TurnDetector(models, SERVER_VAD).effective == {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
        "create_response": True, "interrupt_response": True, "idle_timeout_ms": None}
    given = {"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 0, "silence_duration_ms": 800.0,
             "create_response": False, "interrupt_response": None, "idle_timeout_ms": 5000}
    assert TurnDetector(models, given).effective == {
        "type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 0, "silence_duration_ms": 800,
        "create_response": False, "interrupt_response": True, "idle_timeout_ms": None}  # not honoured: null
    assert TurnDetector(models, {"type": "semantic_vad"}).effective == {
        "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}


@pytest.mark.parametrize("bad, message", [
    (None, "null"),
    ("server_vad", "object"),
    ({}, "type must be"),
    ({"type": "vad"}, "type must be"),
    ({"type": "server_vad", "threshold": 1.5}, "threshold must be from 0 to 1"),
    ({"type": "server_vad", "threshold": "high"}, "threshold must be a number"),
    ({"type": "server_vad", "threshold": True}, "threshold must be a number"),
    ({"type": "server_vad", "threshold": math.nan}, "threshold must be a number"),
    ({"type": "server_vad", "prefix_padding_ms": -1}, "prefix_padding_ms must be from 0 to 10000"),
    ({"type": "server_vad", "silence_duration_ms": "500"}, "silence_duration_ms must be a whole number"),
    ({"type": "server_vad", "silence_duration_ms": 2.5}, "silence_duration_ms must be a whole number"),
    ({"type": "server_vad", "silence_duration_ms": 20_000}, "silence_duration_ms must be from 0 to 10000"),
    ({"type": "server_vad", "create_response": "yes"}, "create_response must be true or false"),
    ({"type": "server_vad", "idle_timeout_ms": -5}, "idle_timeout_ms"),
    ({"type": "server_vad", "eagerness": "high"}, "no field 'eagerness'"),
    ({"type": "semantic_vad", "eagerness": "eager"}, "eagerness must be one of high, medium, auto, low"),
    ({"type": "semantic_vad", "threshold": 0.5}, "no field 'threshold'"),
])
def test_a_bad_turn_detection_is_a_clear_value_error(models, bad, message):
    with pytest.raises(ValueError, match=message):
        TurnDetector(models, bad)


def test_bad_minimum_speech_and_semantic_vad_without_smart_turn_are_value_errors(models):
    for bad in (-1, 1.5, "250", True):
        with pytest.raises(ValueError, match="min_speech_ms"):
            TurnDetector(models, SERVER_VAD, min_speech_ms=bad)
        with pytest.raises(ValueError, match="start_ms"):
            TurnDetector(models, SERVER_VAD, start_ms=bad)
    vad_only = ListeningModels(models.vad_path)
    assert not vad_only.semantic
    with pytest.raises(ValueError, match="Smart Turn"):
        TurnDetector(vad_only, {"type": "semantic_vad"})
    assert detect(vad_only, SERVER_VAD, padded(speech("How far away is the moon?"), 500, 1000))


# --- 24 kHz -> 16 kHz ----------------------------------------------------------------------------


def tone24(freq: float, seconds: float = 0.5, level: float = 0.5) -> bytes:
    t = np.arange(int(24000 * seconds)) / 24000
    return (level * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def test_resampler_keeps_speech_band_tones_and_removes_what_would_alias():
    pcm = tone24(1000)
    out = np.frombuffer(resample_24k_to_16k(pcm), "<i2").astype(np.float64)
    assert out.size == math.ceil(len(pcm) // 2 * 2 / 3) == 8000
    steady = out[400:-400]
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(steady.size)))
    assert abs(np.argmax(spectrum) * 16000 / steady.size - 1000) < 5
    assert abs(np.sqrt(np.mean(steady ** 2)) / (0.5 * 32767 / np.sqrt(2)) - 1) < 0.01
    # 10 kHz is above the 16 kHz stream's Nyquist: it must not come back as a 6 kHz alias
    aliased = np.frombuffer(resample_24k_to_16k(tone24(10000)), "<i2").astype(np.float64)[400:-400]
    assert np.sqrt(np.mean(aliased ** 2)) < 0.01 * 0.5 * 32767 / np.sqrt(2)  # at least 40 dB down


def test_resampler_gives_the_same_audio_whatever_the_chunks():
    pcm = tone24(440, 1.0) + tone24(3000, 0.7, 0.3)
    whole = resample_24k_to_16k(pcm)
    rng = np.random.default_rng(5)
    resampler, out, at = Resampler24kTo16k(), b"", 0
    while at < len(pcm):
        size = int(rng.integers(1, 3001))  # odd sizes too: a sample split across two calls
        out += resampler.process(pcm[at:at + size])
        at += size
    assert out == whole
    resampler.reset()
    assert resampler.process(pcm) == whole
