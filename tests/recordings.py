"""Test recordings in the containers browsers upload (WebM, Ogg), cut short on demand, and a
check that decoding left no ffmpeg process behind."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from tests.audio import tone_wav

FORMATS = {"webm": "webm", "ogg": "ogg"}  # our name -> ffmpeg muxer


@functools.cache
def tone_recording(container: str, seconds: float = 2.0) -> bytes:
    """A tone as Opus in WebM or Ogg, written by ffmpeg to a pipe (so a WebM Segment has unknown
    size and no Duration or Cues, as in a browser's recording; its Clusters have sizes)."""
    if container == "live-webm":
        return live_webm(tone_recording("webm", seconds))
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-c:a", "libopus",
         "-f", FORMATS[container], "pipe:1"],
        input=tone_wav(seconds), capture_output=True, check=True, timeout=30,
    )
    return proc.stdout


CUTS = {
    "first eighth": lambda n: n // 8,
    "first half": lambda n: n // 2,
    "all but 300 bytes": lambda n: n - 300,
    "all but 5 bytes": lambda n: n - 5,
}


def cut(data: bytes, where: str) -> bytes:
    return data[: CUTS[where](len(data))]


# --- a browser's MediaRecorder layout ------------------------------------------------------
# Chrome and Firefox write WebM as a live stream: the Segment and every Cluster have "unknown
# size" (all value bits set) and there is no SeekHead, Cues or Duration. Written here from
# ffmpeg's output with a small EBML reader of its own (not the gateway's).

SEGMENT, CLUSTER, INFO, DURATION = b"\x18\x53\x80\x67", b"\x1f\x43\xb6\x75", b"\x15\x49\xa9\x66", b"\x44\x89"
DROPPED = {b"\x11\x4d\x9b\x74", b"\xec", b"\x1c\x53\xbb\x6b"}  # SeekHead, Void, Cues
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def _vint(data: bytes, pos: int) -> tuple[int, int]:
    length = 9 - data[pos].bit_length()
    return length, int.from_bytes(data[pos : pos + length], "big") & ((1 << (7 * length)) - 1)


def ebml_elements(data: bytes, pos: int = 0, end: int | None = None):
    """(id bytes, start, body start, end) of each element from `pos`; an unknown size runs to `end`."""
    end = len(data) if end is None else end
    while pos < end:
        id_len, _ = _vint(data, pos)
        size_len, size = _vint(data, pos + id_len)
        body = pos + id_len + size_len
        stop = end if size == (1 << (7 * size_len)) - 1 else body + size
        yield data[pos : pos + id_len], pos, body, stop
        pos = stop


def _element(ident: bytes, body: bytes) -> bytes:
    return ident + b"\x01" + len(body).to_bytes(7, "big") + body


def live_webm(webm: bytes) -> bytes:
    out = bytearray()
    for ident, start, body, end in ebml_elements(webm):
        if ident != SEGMENT:
            out += webm[start:end]
            continue
        out += SEGMENT + UNKNOWN_SIZE
        for child, c_start, c_body, c_end in ebml_elements(webm, body, end):
            if child in DROPPED:
                continue
            if child == CLUSTER:
                out += CLUSTER + UNKNOWN_SIZE + webm[c_body:c_end]
            elif child == INFO:
                kept = b"".join(webm[s:e] for i, s, _, e in ebml_elements(webm, c_body, c_end) if i != DURATION)
                out += _element(INFO, kept)
            else:
                out += webm[c_start:c_end]
    return bytes(out)


def element_ends(webm: bytes) -> list[int]:
    """Offsets where an element of known size ends, reading through elements of unknown size
    (in a live WebM the last ones are the blocks of the last Cluster: a cut there leaves only
    whole elements)."""
    pos, ends = 0, []
    while pos < len(webm):
        id_len, _ = _vint(webm, pos)
        size_len, size = _vint(webm, pos + id_len)
        pos += id_len + size_len
        if size != (1 << (7 * size_len)) - 1:
            pos += size
            ends.append(pos)
    return ends


# --- nothing left behind --------------------------------------------------------------------


def ffmpeg_children() -> list[str]:
    """ffmpeg processes (running or unreaped) whose parent is this test process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if name == "ffmpeg" and int(ppid) == os.getpid():
            found.append(f"{entry} ({state})")
    return found
