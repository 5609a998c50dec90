"""Untrusted browser audio -> 16 kHz mono PCM, decoded by ffmpeg with safe settings.

The container is chosen from the file's magic bytes (never ffmpeg's probing), ffmpeg reads
only from a pipe (protocol whitelist), runs in its own process group under a time limit, and
its whole group is killed on timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 2
MIN_UPLOAD_BYTES = 100  # the original's empty-blob guard
MIN_AUDIO_S = 0.1


class MediaError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def sniff_format(data: bytes) -> str:
    """ffmpeg demuxer name for the container in `data`, from its magic bytes."""
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"  # webm is matroska
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    raise MediaError(415, "Unsupported audio format: send webm, ogg or wav.")


async def decode_to_pcm(data: bytes, max_audio_s: float, timeout_s: float = 20.0) -> bytes:
    """Raw s16le mono 16 kHz PCM, or MediaError with an HTTP status and a readable message."""
    if len(data) < MIN_UPLOAD_BYTES:
        raise MediaError(400, "The recording is empty or too short.")
    fmt = sniff_format(data)
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
        "-protocol_whitelist", "pipe", "-f", fmt, "-i", "pipe:0",
        # Decode a little past the limit so "too long" is detectable without decoding it all.
        "-t", f"{max_audio_s + 0.5:.2f}", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
        "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1",
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        pcm, err = await asyncio.wait_for(proc.communicate(data), timeout_s)
    except asyncio.TimeoutError:
        raise MediaError(400, "The audio took too long to decode.") from None
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    if proc.returncode != 0 or not pcm:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        raise MediaError(400, f"The audio could not be decoded ({detail[0][:200]}).")
    pcm = pcm[: len(pcm) // 2 * 2]
    seconds = len(pcm) / BYTES_PER_SECOND
    if seconds > max_audio_s:
        raise MediaError(413, f"The recording is longer than {max_audio_s:g} s.")
    if seconds < MIN_AUDIO_S:
        raise MediaError(400, "The recording is too short.")
    return pcm
