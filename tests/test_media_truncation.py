"""Recordings cut short are a clear 400 "incomplete or damaged", complete ones still decode, and
decoding leaves no ffmpeg process or temp file behind (issue 5)."""

from __future__ import annotations

import asyncio
import tempfile
import time

import pytest

from gateway import media
from gateway.media import INCOMPLETE, MediaError, container_truncated, decode_to_pcm
from tests.audio import tone_wav
from tests.recordings import CUTS, cut, element_ends, ffmpeg_children, tone_recording

pytestmark = pytest.mark.timeout(60)

FFMPEG_FORMAT = {"webm": "matroska", "live-webm": "matroska", "ogg": "ogg"}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A TMPDIR of the test's own (for ffmpeg and Python alike), checked empty afterwards."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    assert not list(scratch.iterdir()), "decoding left temp files behind"


def decode(data: bytes, max_audio_s: float = 10.0) -> bytes:
    try:
        return asyncio.run(decode_to_pcm(data, max_audio_s))
    finally:
        assert not ffmpeg_children(), "decoding left an ffmpeg process behind"


@pytest.mark.parametrize("container", ["webm", "live-webm", "ogg", "wav"])
def test_complete_recordings_decode(container, private_tmp):
    data = tone_wav(2.0) if container == "wav" else tone_recording(container)
    pcm = decode(data)
    assert abs(len(pcm) / media.BYTES_PER_SECOND - 2.0) < 0.05
    if container != "wav":
        assert not container_truncated(data, FFMPEG_FORMAT[container])


@pytest.mark.parametrize("where", list(CUTS))
@pytest.mark.parametrize("container", ["webm", "live-webm", "ogg"])
def test_cut_recordings_are_incomplete(container, where, private_tmp):
    with pytest.raises(MediaError) as err:
        decode(cut(tone_recording(container), where))
    assert (err.value.status, err.value.message) == (400, INCOMPLETE)


@pytest.mark.parametrize("where", list(CUTS))
def test_ffmpeg_report_of_a_cut_webm_is_the_second_line_of_defence(where, private_tmp, monkeypatch):
    # ffmpeg decodes a cut WebM as far as it can and exits 0; only its log says the file ended early
    monkeypatch.setattr(media, "container_truncated", lambda data, fmt: False)
    with pytest.raises(MediaError) as err:
        decode(cut(tone_recording("webm"), where))
    assert (err.value.status, err.value.message) == (400, INCOMPLETE)


def test_an_ogg_cut_between_pages_lacks_its_end_of_stream_page():
    data = tone_recording("ogg")
    last_page = data.rindex(b"OggS")
    assert data[last_page + 5] & 0x04  # the writer closed its stream
    assert container_truncated(data[:last_page], "ogg")


def test_a_live_webm_cut_between_blocks_reads_as_a_shorter_recording(private_tmp):
    # Nothing in a live (MediaRecorder) WebM marks its end, so a cut that leaves only whole
    # blocks cannot be told from a recording stopped earlier: it decodes, a little shorter.
    data = tone_recording("live-webm")
    shorter = data[: element_ends(data)[-2]]
    assert 0 < len(data) - len(shorter) < 500
    assert 1.9 < len(decode(shorter)) / media.BYTES_PER_SECOND < 2.0


def test_the_framing_walk_is_bounded_on_a_crafted_file():
    # ten megabytes of empty five-byte EBML elements, or of empty 27-byte Ogg pages: the walk
    # gives up after MAX_FRAMING_STEPS and leaves the verdict to ffmpeg
    started = time.perf_counter()
    assert not container_truncated(b"\x1a\x45\xdf\xa3\x80" * (2 * 1024 * 1024), "matroska")
    assert not container_truncated((b"OggS" + bytes(23)) * 400_000, "ogg")
    assert time.perf_counter() - started < 1.0


def test_garbage_behind_the_magic_bytes_is_left_to_ffmpeg(private_tmp):
    with pytest.raises(MediaError) as err:
        decode(b"\x1a\x45\xdf\xa3" + b"\x00" * 500)
    assert err.value.status == 400 and "could not be decoded" in err.value.message
