"""Untrusted browser audio -> 16 kHz mono PCM, decoded by ffmpeg with safe settings.

The container is chosen from the file's magic bytes (never ffmpeg's probing), ffmpeg reads
only from a pipe (protocol whitelist), runs in its own process group under a time limit, and
its whole group is killed on timeout.

What a file declares is checked before ffmpeg sees it: a sample rate or a channel count outside
what a microphone records (a WAV that declares 200 MHz made ffmpeg build a resampler of almost
1 GB) is a 400. ffmpeg then decodes only the codecs a browser records (an allow-list), on one
thread, with a largest single allocation (-max_alloc), an address-space ceiling and a CPU-time
limit (rlimits), and it dies with the gateway (PR_SET_PDEATHSIG), which it would otherwise
outlive in its own session.

A recording cut short (an upload that stopped part-way, a blob missing its last bytes) is a
400 "incomplete or damaged", never a silently shorter turn. ffmpeg alone does not say so: it
decodes what it can and exits 0, its Ogg demuxer silently drops a partial last page, and its
Matroska demuxer only logs "File ended prematurely". So the container's own framing is checked
first (every WebM/EBML element with a declared size, and every Ogg page, must end inside the
upload; every Ogg stream must end with an end-of-stream page), and that ffmpeg message is the
second line of defence. Neither relies on a declared duration, which a browser's MediaRecorder
WebM does not have (it writes its Segment and Clusters with "unknown size").
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import struct

SAMPLE_RATE = 16000
BYTES_PER_SECOND = SAMPLE_RATE * 2
MIN_UPLOAD_BYTES = 100  # the original's empty-blob guard
MIN_AUDIO_S = 0.1
INCOMPLETE = "The recording is incomplete or damaged (it stops before its end); please record it again."
# What ffmpeg prints (at -loglevel error) when its input stops inside an element or before the
# headers are complete. The Matroska message has read the same since 2011.
TRUNCATION_MARKERS = ("File ended prematurely", "pipe:0: End of file")
# The framing walk is linear in the number of elements/pages: a minute of 20 ms Opus frames is
# about 3,000. Past this many (15 minutes of frames, or a crafted file of tiny elements) it stops
# and leaves the verdict to ffmpeg, so any upload costs at most about 0.1 s of CPU here, spent in
# a worker thread rather than on the event loop.
MAX_FRAMING_STEPS = 50_000
# What a recording may declare: telephone to studio rates, mono to 7.1.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 192_000
MAX_CHANNELS = 8
# The decoders a browser's recording needs (Opus or Vorbis in WebM/Ogg, PCM in WAV); anything
# else in a container is refused by ffmpeg itself.
DECODERS = ("opus", "libopus", "vorbis", "libvorbis", "pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le",
            "pcm_f32le", "pcm_f64le", "pcm_alaw", "pcm_mulaw")
MAX_ALLOC_BYTES = 64 * 1024 * 1024  # ffmpeg's largest single allocation
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing may be loaded between fork and exec


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


def _vint(data: bytes, pos: int) -> tuple[int, int] | None:
    """(length, value bits) of the EBML variable-size integer at `pos`; None past the end.
    Raises ValueError for a byte that cannot start one (0x00)."""
    first = data[pos]
    if first == 0:
        raise ValueError("not an EBML number")
    length = 9 - first.bit_length()
    if pos + length > len(data):
        return None
    return length, int.from_bytes(data[pos : pos + length], "big") & ((1 << (7 * length)) - 1)


def _ebml_truncated(data: bytes) -> bool | None:
    """True when an EBML (WebM/Matroska) element runs past the end of `data`; False when every
    element ends inside it; None when this is not well-formed EBML (ffmpeg decides then).

    Elements of known size are skipped whole; an element of unknown size (all value bits set,
    as a live writer such as MediaRecorder writes its Segment and Clusters) is entered, since
    its children follow it and it ends where the file does."""
    pos, end = 0, len(data)
    for _ in range(MAX_FRAMING_STEPS):
        if pos == end:
            return False
        try:
            ident = _vint(data, pos)
            if ident is None:
                return True  # cut inside an element ID
            if ident[0] > 4:
                return None  # EBML IDs are at most 4 bytes long
            size = _vint(data, pos + ident[0]) if pos + ident[0] < end else None
        except ValueError:
            return None
        if size is None:
            return True  # cut inside an element header
        length, value = size
        pos += ident[0] + length
        if value != (1 << (7 * length)) - 1:  # a known size: the whole element must be here
            pos += value
            if pos > end:
                return True
    return None


def _ogg_truncated(data: bytes) -> bool | None:
    """True when an Ogg page runs past the end of `data` or a logical stream has no
    end-of-stream page; False when the file ends with every stream closed; None when this is
    not well-formed Ogg framing (ffmpeg decides then)."""
    pos, end, unfinished = 0, len(data), set()
    for _ in range(MAX_FRAMING_STEPS):
        if pos == end:
            return bool(unfinished)
        if data[pos : pos + 4] != b"OggS"[: end - pos]:
            return None
        if pos + 27 > end:
            return True  # cut inside a page header
        if data[pos + 4] != 0:
            return None  # Ogg version 0 is the only one
        flags, serial, segments = data[pos + 5], data[pos + 14 : pos + 18], data[pos + 26]
        body = pos + 27 + segments
        if body > end:
            return True  # cut inside the segment table
        pos = body + sum(data[pos + 27 : body])
        if pos > end:
            return True  # cut inside the page's packets
        if flags & 0x04:  # end of stream
            unfinished.discard(serial)
        else:
            unfinished.add(serial)
    return None


def container_truncated(data: bytes, fmt: str) -> bool:
    """Whether the container's own framing shows that `data` stops before its end."""
    if fmt == "matroska":
        return bool(_ebml_truncated(data))
    if fmt == "ogg":
        return bool(_ogg_truncated(data))
    return False


def _wav_declared(data: bytes) -> tuple[list[float], list[int]]:
    """(sample rates, channel counts) in a WAV's fmt chunk."""
    pos = 12
    for _ in range(MAX_FRAMING_STEPS):  # a crafted file of empty chunks: bounded like the framing walk
        if pos + 8 > len(data):
            break
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"fmt " and pos + 16 <= len(data):
            channels, rate = struct.unpack_from("<HI", data, pos + 10)
            return [float(rate)], [channels]
        pos += 8 + size + (size & 1)
    return [], []


def _ogg_declared(data: bytes) -> tuple[list[float], list[int]]:
    """(sample rates, channel counts) in the identification header of each Ogg stream (the first
    packet of each beginning-of-stream page, which come before any other page)."""
    rates, channels, pos = [], [], 0
    while data[pos : pos + 4] == b"OggS" and pos + 27 <= len(data) and data[pos + 5] & 0x02:
        body = pos + 27 + data[pos + 26]
        packet = data[body : body + 32]
        if packet[:8] == b"OpusHead" and len(packet) >= 16:
            channels.append(packet[9])
            if input_rate := struct.unpack_from("<I", packet, 12)[0]:  # 0: not stated
                rates.append(float(input_rate))
        elif packet[:7] == b"\x01vorbis" and len(packet) >= 16:
            channels.append(packet[11])
            rates.append(float(struct.unpack_from("<I", packet, 12)[0]))
        pos = body + sum(data[pos + 27 : body])
    return rates, channels


# WebM/Matroska: the elements that lead to a track's Audio settings, and the Cluster that ends them.
EBML_PATH = {0x18538067, 0x1654AE6B, 0xAE, 0xE1}  # Segment, Tracks, TrackEntry, Audio
EBML_CLUSTER, EBML_SAMPLING_FREQUENCY, EBML_CHANNELS = 0x1F43B675, 0xB5, 0x9F


def _ebml_declared(data: bytes) -> tuple[list[float], list[int]]:
    """(SamplingFrequency, Channels) of each track, from the headers before the first Cluster."""
    rates, channels, pos, end = [], [], 0, len(data)
    for _ in range(MAX_FRAMING_STEPS):
        try:
            ident = _vint(data, pos) if pos < end else None
            size = _vint(data, pos + ident[0]) if ident and pos + ident[0] < end else None
        except ValueError:
            break
        if size is None or ident[0] > 4:
            break
        element = int.from_bytes(data[pos : pos + ident[0]], "big")
        body = pos + ident[0] + size[0]
        if element == EBML_CLUSTER:
            break
        if element in EBML_PATH:
            pos = body  # enter it: its children follow
            continue
        value = data[body : body + size[1]]
        if element == EBML_SAMPLING_FREQUENCY and len(value) in (4, 8):
            rates.append(struct.unpack(">f" if len(value) == 4 else ">d", value)[0])
        elif element == EBML_CHANNELS and 1 <= len(value) <= 8:
            channels.append(int.from_bytes(value, "big"))
        pos = body + size[1]
    return rates, channels


DECLARED = {"wav": _wav_declared, "ogg": _ogg_declared, "matroska": _ebml_declared}


def check_declared(data: bytes, fmt: str) -> None:
    """MediaError 400 for a declared sample rate or channel count no microphone records."""
    rates, channels = DECLARED[fmt](data)
    for rate in rates:
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:  # NaN fails too
            raise MediaError(400, f"The recording declares a sample rate of {rate:g} Hz; "
                                  f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz is accepted.")
    for count in channels:
        if not 1 <= count <= MAX_CHANNELS:
            raise MediaError(400, f"The recording declares {count} channels; 1..{MAX_CHANNELS} is accepted.")


def check_container(data: bytes, fmt: str) -> None:
    """MediaError 400 for a container cut short or declaring what no microphone records (one
    worker-thread trip for both walks)."""
    if container_truncated(data, fmt):
        raise MediaError(400, INCOMPLETE)
    check_declared(data, fmt)


def _limit_child(cpu_s: int, memory_bytes: int, parent: int):
    """Run in the ffmpeg child between fork and exec: only system calls, nothing that allocates
    or takes a lock. The death signal is tied to the thread that forks (asyncio's loop thread,
    which lives as long as the gateway)."""

    def limit() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the gateway died before the line above
            os._exit(1)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL

    return limit


async def decode_to_pcm(data: bytes, max_audio_s: float, timeout_s: float = 20.0, cpu_s: int = 10,
                        memory_bytes: int = 768 * 1024 * 1024) -> bytes:
    """Raw s16le mono 16 kHz PCM, or MediaError with an HTTP status and a readable message."""
    if len(data) < MIN_UPLOAD_BYTES:
        raise MediaError(400, "The recording is empty or too short.")
    fmt = sniff_format(data)
    await asyncio.to_thread(check_container, data, fmt)
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-max_alloc", str(MAX_ALLOC_BYTES),
        "-protocol_whitelist", "pipe", "-codec_whitelist", ",".join(DECODERS), "-threads", "1",
        "-f", fmt, "-i", "pipe:0",
        # Decode a little past the limit so "too long" is detectable without decoding it all.
        "-t", f"{max_audio_s + 0.5:.2f}", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
        "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1",
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
        preexec_fn=_limit_child(cpu_s, memory_bytes, os.getpid()),
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
    messages = err.decode(errors="replace")
    if any(marker in messages for marker in TRUNCATION_MARKERS):
        raise MediaError(400, INCOMPLETE)  # ffmpeg exits 0 on a cut WebM, with what it could read
    if proc.returncode != 0 or not pcm:
        detail = messages.strip().splitlines()[-1:] or ["no audio stream"]
        raise MediaError(400, f"The audio could not be decoded ({detail[0][:200]}).")
    pcm = pcm[: len(pcm) // 2 * 2]
    seconds = len(pcm) / BYTES_PER_SECOND
    if seconds > max_audio_s:
        raise MediaError(413, f"The recording is longer than {max_audio_s:g} s.")
    if seconds < MIN_AUDIO_S:
        raise MediaError(400, "The recording is too short.")
    return pcm
