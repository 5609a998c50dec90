"""Untrusted uploads that try to make ffmpeg read elsewhere: HLS playlists and ffconcat lists that
point at a local file and at a loopback canary server. Nothing is read or contacted, and each
gets a clear 4xx (issue 5)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest

from gateway.media import MediaError, decode_to_pcm

pytestmark = pytest.mark.timeout(60)


class Canary:
    """A loopback TCP listener that counts every connection made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def canary():
    with Canary() as c:
        yield c


class Secret:
    """A named pipe standing for a local file: it notices when anything opens it to read."""

    def __init__(self, path):
        self.path = path
        os.mkfifo(path)
        self.opened = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self.stop.is_set():
            try:  # a non-blocking open for writing succeeds only while a reader has it open
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                self.stop.wait(0.005)
                continue
            self.opened = True
            os.close(fd)

    def __str__(self):
        return str(self.path)


@pytest.fixture
def secret(tmp_path):
    watched = Secret(tmp_path / "secret.wav")
    watched.thread.start()
    yield watched
    watched.stop.set()
    watched.thread.join(2)


def attacks(port: int, secret) -> dict[str, bytes]:
    url = f"http://127.0.0.1:{port}/canary.ts"
    hls = (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{url}\n#EXTINF:10,\nfile:{secret}\n"
           "#EXT-X-ENDLIST\n").encode()
    concat = f"ffconcat version 1.0\nfile '{url}'\nfile '{secret}'\n".encode()
    pad = b"\n" * 200  # past the empty-upload guard
    return {
        "hls playlist": hls + pad,
        "ffconcat list": concat + pad,
        # A real container's magic bytes in front of a playlist: ffmpeg is told the container,
        # so the rest is parsed as that container, never as a playlist.
        "wav header + hls": b"RIFF\x24\x08\x00\x00WAVEfmt " + hls + pad,
        "webm magic + ffconcat": b"\x1a\x45\xdf\xa3" + concat + pad,
        "ogg magic + hls": b"OggS" + hls + pad,
    }


@pytest.mark.parametrize("name", ["hls playlist", "ffconcat list", "wav header + hls", "webm magic + ffconcat",
                                  "ogg magic + hls"])
def test_playlists_and_concat_lists_read_nothing(name, canary, secret):
    data = attacks(canary.port, secret)[name]
    with pytest.raises(MediaError) as err:
        asyncio.run(decode_to_pcm(data, max_audio_s=60.0))
    assert err.value.status in (400, 415), err.value.message
    assert err.value.message.endswith((".", ")"))  # a readable sentence for the page
    assert canary.connections == 0, f"{name}: ffmpeg contacted the canary server"
    assert not secret.opened, f"{name}: ffmpeg opened the local file"


def test_the_watchers_do_see_a_read(canary, secret):
    # the checks above would be empty if the canary or the pipe could not see an access
    reader = os.open(str(secret), os.O_RDONLY | os.O_NONBLOCK)
    try:
        for _ in range(100):
            if secret.opened:
                break
            threading.Event().wait(0.02)
    finally:
        os.close(reader)
    assert secret.opened
    with socket.create_connection(("127.0.0.1", canary.port), timeout=2):
        pass
    for _ in range(50):
        if canary.connections:
            break
        threading.Event().wait(0.05)
    assert canary.connections == 1
