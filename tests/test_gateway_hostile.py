"""What a hostile client can still do to the gateway, over HTTP against the real app and bus
(issue 14): each test is one attack, and what the attacker gets now.

Raw sockets play the clients that no HTTP library would be: one that hangs up at once, sends
headers and then nothing, or stops reading its stream. Other source addresses (127.0.0.2, ...)
play other machines, to tell per-address bounds from gateway-wide ones.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import subprocess
from dataclasses import replace

import aiohttp
import pytest
import zmq

import gateway.bus
from gateway.app import GATEWAY
from services.runtime.endpoints import MAX_MESSAGE_BYTES, events_endpoint
from tests.audio import tone_wav
from tests.gateway_harness import SETTINGS, eventually, turn, wait_ready
from tests.recordings import tone_recording
from tests.sse import parse_sse

pytestmark = pytest.mark.timeout(120)

WAV = {"Content-Type": "audio/wav"}


def with_rate_and_channels(wav: bytes, rate: int | None = None, channels: int | None = None) -> bytes:
    data = bytearray(wav)
    fmt = data.find(b"fmt ")
    if channels is not None:
        struct.pack_into("<H", data, fmt + 10, channels)
    if rate is not None:
        struct.pack_into("<I", data, fmt + 12, rate)
    return bytes(data)


def gateway_of(client):
    return client.server.app[GATEWAY]


def source_session(client, source: str) -> aiohttp.ClientSession:
    """A client session whose connections come from `source` (another 127.x address: another machine)."""
    return aiohttp.ClientSession(base_url=str(client.make_url("/")),
                                 connector=aiohttp.TCPConnector(local_addr=(source, 0)))


async def raw_connection(client, head: bytes, source: str = "127.0.0.1", rcvbuf: int | None = None):
    """A raw TCP connection to the gateway that has sent `head` (request line and headers). With
    `rcvbuf`, a slow reader: the gateway's send buffer for it is set as small, so that what the
    test sends outgrows every buffer on any kernel (autotuned send buffers differ by machine)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.server.port))
    if rcvbuf:
        await shrink_server_send_buffer(client, sock.getsockname(), rcvbuf)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def shrink_server_send_buffer(client, peer: tuple, size: int) -> None:
    """SO_SNDBUF on the gateway's end of the connection from `peer` (a fixed size ends autotuning)."""
    for _ in range(200):
        for handler in client.server.runner.server.connections:
            transport = handler.transport
            if transport is not None and transport.get_extra_info("peername") == peer:
                transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the gateway never accepted the connection from {peer}")


def request_head(client, method: str, path: str, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{client.server.port}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def metric(client, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


async def upload(client, audio: bytes | None = None, headers: dict | None = None):
    return await client.post("/upload", data=audio or tone_wav(0.5), headers={**WAV, **(headers or {})})


class Spawns:
    """asyncio.create_subprocess_exec, watched: each ffmpeg's arguments and rlimits, and how many
    ran at once."""

    def __init__(self, real, hold_s: float = 0.0):
        self.real, self.hold_s = real, hold_s
        self.argv: list[tuple] = []
        self.limits: list[str] = []
        self.running = self.most = 0

    async def __call__(self, *argv, **kwargs):
        self.argv.append(argv)
        proc = await self.real(*argv, **kwargs)
        with open(f"/proc/{proc.pid}/limits") as f:
            self.limits.append(f.read())
        self.running += 1
        self.most = max(self.most, self.running)
        communicate = proc.communicate

        async def counted(*a, **k):
            try:
                await asyncio.sleep(self.hold_s)  # each decode holds its slot a while: overlaps are certain
                return await communicate(*a, **k)
            finally:
                self.running -= 1

        proc.communicate = counted
        return proc


@pytest.fixture
def spawns(monkeypatch):
    spy = Spawns(asyncio.create_subprocess_exec)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", spy)
    return spy


# --- 1. the decoder ------------------------------------------------------------------------------


def webm_with_rate(rate: float) -> bytes:
    webm = bytearray(tone_recording("webm", 1.0))
    at = webm.find(b"\xb5\x88")  # SamplingFrequency, an 8-byte float, in the track's Audio element
    struct.pack_into(">d", webm, at + 2, rate)
    return bytes(webm)


def ogg_with_channels(channels: int) -> bytes:
    ogg = bytearray(tone_recording("ogg", 1.0))
    at = ogg.find(b"OpusHead")
    ogg[at + 9] = channels  # (the page checksum is left stale: the check comes before any decoding)
    return bytes(ogg)


@pytest.mark.parametrize("audio, says", [
    (with_rate_and_channels(tone_wav(0.25), rate=200_000_000), "sample rate of 2e+08 Hz"),
    (with_rate_and_channels(tone_wav(0.25), channels=1000), "1000 channels"),
    (webm_with_rate(2e8), "sample rate of 2e+08 Hz"),
    (webm_with_rate(float("nan")), "sample rate of nan Hz"),
    (ogg_with_channels(200), "200 channels"),
], ids=["wav-200MHz", "wav-1000ch", "webm-200MHz", "webm-nan", "ogg-200ch"])
async def test_an_absurd_declared_rate_or_channel_count_is_a_400_before_ffmpeg_starts(make_client, spawns,
                                                                                       audio, says):
    client = await make_client()
    resp = await upload(client, audio)
    assert resp.status == 400
    assert says in (await resp.json())["error"]
    assert spawns.argv == []


async def test_ffmpeg_decodes_under_a_memory_ceiling_a_cpu_limit_and_a_codec_allow_list(make_client, spawns):
    settings = replace(SETTINGS, decode_memory_mb=700, decode_cpu_s=7)
    client = await make_client(settings)
    assert (await upload(client)).status == 200
    [argv], [limits] = spawns.argv, spawns.limits
    assert re.search(r"^Max address space\s+734003200\s+734003200 ", limits, re.M), limits
    assert re.search(r"^Max cpu time\s+7\s+8 ", limits, re.M), limits
    assert argv[argv.index("-codec_whitelist") + 1].split(",")[:2] == ["opus", "libopus"]
    assert int(argv[argv.index("-max_alloc") + 1]) <= 64 * 1024 * 1024


async def test_a_codec_no_browser_records_is_refused_by_the_allow_list(make_client):
    """ADPCM in a WAV: ffmpeg would decode it, but a microphone never makes it."""
    adpcm = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-c:a",
                            "adpcm_ms", "-f", "wav", "pipe:1"], input=tone_wav(1.0), capture_output=True,
                           check=True, timeout=30).stdout
    client = await make_client()
    resp = await upload(client, adpcm)
    assert resp.status == 400
    assert "could not be decoded" in (await resp.json())["error"]


async def test_decodes_are_capped_for_the_whole_gateway(make_client, spawns):
    spawns.hold_s = 0.3
    client = await make_client(replace(SETTINGS, max_decodes=1))
    sessions = [source_session(client, f"127.0.0.{n}") for n in range(2, 6)]
    try:
        answers = await asyncio.gather(*(s.post("/upload", data=tone_wav(0.5), headers=WAV) for s in sessions))
        assert [a.status for a in answers] == [200] * 4
    finally:
        for s in sessions:
            await s.close()
    assert len(spawns.argv) == 4 and spawns.most == 1


# --- 2. a stream dropped at once -----------------------------------------------------------------


async def test_streams_dropped_right_after_opening_release_their_turns(make_client, stages):
    client = await make_client(replace(SETTINGS, max_turns_per_client=3))
    await wait_ready(client)
    for _ in range(6):  # twice the client's turns: a leak would lock it out
        session_id = (await (await upload(client)).json())["session_id"]
        sock = socket.create_connection(("127.0.0.1", client.server.port))
        sock.sendall(request_head(client, "GET", f"/stream/{session_id}"))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # hung up at once, with a reset
        assert await eventually(lambda: not gateway_of(client).live, 10), "a dropped stream kept its turn"
    assert await metric(client, "s2s_gateway_live_turns") == 0
    _, events = await turn(client)
    assert events[-1][0] == "done"


# --- 3. other sites, DNS rebinding ---------------------------------------------------------------

ROUTES = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/api/config"), ("GET", "/api/stages"),
          ("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/stream/x"),
          ("POST", "/upload"), ("POST", "/api/clear"), ("POST", "/api/cancel/x"), ("GET", "/v1/realtime")]


@pytest.mark.parametrize("method, path", ROUTES)
async def test_a_dns_rebinding_host_is_refused_on_every_route(make_client, method, path):
    client = await make_client()
    resp = await client.request(method, path, headers={"Host": f"attacker.example:{client.server.port}"})
    assert resp.status == 403
    assert "not a name of this server" in (await resp.json())["error"]


async def test_the_names_of_the_server_and_of_a_reverse_proxy_are_accepted(make_client):
    client = await make_client(replace(SETTINGS, allowed_hosts=("s2s.example.org",)))
    port = client.server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "s2s.example.org", "S2S.example.org:443"):
        assert (await client.get("/api/config", headers={"Host": host})).status == 200, host
    assert (await client.get("/api/config", headers={"Host": "example.org"})).status == 403


@pytest.mark.parametrize("headers", [
    {"Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://attacker.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of localhost
    {"Origin": "http://127.0.0.1:1"},
], ids=["cross-site", "origin-only", "null-origin", "fetch-site-only", "same-site", "other-port"])
async def test_a_cross_site_post_is_refused_with_403_json(make_client, headers):
    client = await make_client()
    for path, data in (("/upload", tone_wav(0.5)), ("/api/clear", b""), ("/api/cancel/x", b"")):
        resp = await client.post(path, data=data, headers={"Content-Type": "text/plain", **headers})
        assert resp.status == 403, path
        assert (await resp.json())["error"] == "Requests from other sites are not accepted."
    assert not gateway_of(client).desk.uploads and not len(gateway_of(client).conversations)


async def test_the_pages_own_requests_and_a_link_to_the_page_pass(make_client):
    client = await make_client()
    own = {"Origin": f"http://127.0.0.1:{client.server.port}", "Sec-Fetch-Site": "same-origin"}
    assert (await upload(client, headers=own)).status == 200
    assert (await client.post("/api/clear", headers=own)).status == 200
    assert (await client.get("/api/config", headers={"Sec-Fetch-Site": "same-origin"})).status == 200
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert (await client.get("/", headers=link)).status == 200
    assert (await client.get("/", headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"})).status == 200
    assert (await client.get("/api/stages", headers=link)).status == 403  # a link to anything else: no


# --- 4. multipart --------------------------------------------------------------------------------


def form_part(name: str, body: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return b"--B\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + body + b"\r\n"


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", form_part("audio", tone_wav(0.5), "a.wav") + b"--B--\r\n"),
    ("multipart/form-data; boundary=B", b"x" * 5000),
    ("multipart/form-data; boundary=B", b"no boundary\r\n" * 500),
    ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"audio\"\r\n\r\n" + tone_wav(0.5)),
], ids=["no-boundary", "boundary-never-comes", "lines-without-boundary", "part-never-ends"])
async def test_a_malformed_form_is_a_400_json(make_client, content_type, body):
    client = await make_client()
    resp = await client.post("/upload", data=body, headers={"Content-Type": content_type})
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert "form" in (await resp.json())["error"]


async def test_a_form_field_counts_against_the_upload_limit(make_client):
    client = await make_client()
    big_field = form_part("note", b"x" * (SETTINGS.max_upload_bytes + 1))
    body = big_field + form_part("audio", tone_wav(0.5), "a.wav") + b"--B--\r\n"

    async def chunked():  # no Content-Length: only reading can tell the size
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    resp = await client.post("/upload", data=chunked(), headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert resp.status == 413
    assert not gateway_of(client).desk.uploads


async def test_a_form_with_its_file_after_small_fields_is_accepted(make_client):
    client = await make_client()
    body = form_part("persona", b"x") + form_part("audio", tone_wav(0.5), "a.wav") + b"--B--\r\n"
    resp = await client.post("/upload", data=body, headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert resp.status == 200, await resp.text()


# --- 5. slow bodies, gateway-wide caps -----------------------------------------------------------


async def test_bodies_that_never_come_get_408_and_free_their_slots(make_client):
    client = await make_client(replace(SETTINGS, body_timeout_s=0.5, max_turns_per_client=2))
    head = request_head(client, "POST", "/upload", Content_Type="audio/wav", Content_Length="50000")
    stalled = [await raw_connection(client, head) for _ in range(2)]
    for reader, writer in stalled:
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.1 408"), status
        assert await asyncio.wait_for(reader.read(), 10)  # the rest of the answer, then the close
        writer.close()
    assert (await upload(client)).status == 200


async def test_uploads_in_flight_are_capped_for_the_whole_gateway_not_per_address(make_client):
    client = await make_client(replace(SETTINGS, max_uploads_in_flight=2, body_timeout_s=30))
    head = request_head(client, "POST", "/upload", Content_Type="audio/wav", Content_Length="50000")
    stalled = [await raw_connection(client, head, source) for source in ("127.0.0.2", "127.0.0.3")]
    try:
        assert await eventually(lambda: sum(gateway_of(client).desk.decoding.values()) == 2)
        resp = await upload(client)
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert "busy" in (await resp.json())["error"]
    finally:
        for _, writer in stalled:
            writer.close()
    assert await eventually(lambda: not gateway_of(client).desk.decoding)
    assert (await upload(client)).status == 200


async def test_uploads_waiting_to_be_streamed_are_capped_for_the_whole_gateway(make_client):
    client = await make_client(replace(SETTINGS, max_pending_uploads=2))
    sessions = [source_session(client, f"127.0.0.{n}") for n in (2, 3, 4)]
    try:
        first, second, third = [await s.post("/upload", data=tone_wav(0.5), headers=WAV) for s in sessions]
    finally:
        for s in sessions:
            await s.close()
    assert (first.status, second.status, third.status) == (200, 200, 503)


# --- 6. conversations ----------------------------------------------------------------------------


async def test_clear_without_a_cookie_creates_nothing(make_client):
    client = await make_client()
    for _ in range(50):
        resp = await client.post("/api/clear")
        assert resp.status == 200 and "Set-Cookie" not in resp.headers
    client.session.cookie_jar.clear()
    resp = await client.post("/api/clear", headers={"Cookie": "s2s_conversation=made-up"})
    assert resp.status == 200 and "Set-Cookie" not in resp.headers
    assert len(gateway_of(client).conversations) == 0


async def test_one_address_making_conversations_evicts_only_its_own(make_client, stages):
    client = await make_client(replace(SETTINGS, max_conversations_per_client=3))
    await wait_ready(client)
    user = source_session(client, "127.0.0.2")
    attacker = source_session(client, "127.0.0.3")
    try:
        resp = await user.post("/upload", data=tone_wav(0.5), headers=WAV)
        session_id = (await resp.json())["session_id"]
        assert parse_sse(await (await user.get(f"/stream/{session_id}")).text())[-1][0] == "done"
        mine = resp.cookies["s2s_conversation"].value
        for _ in range(10):  # a new conversation each: no cookie kept
            attacker.cookie_jar.clear()
            assert (await attacker.post("/upload", data=tone_wav(0.5), headers=WAV)).status == 200
    finally:
        await user.close()
        await attacker.close()
    conversations = gateway_of(client).conversations
    assert conversations.get(mine) is not None and len(conversations.get(mine).history) == 2
    assert len(conversations) == 1 + 3


# --- 9. the bus reader ---------------------------------------------------------------------------


class FailingOnce:
    """The proto module as the gateway's bus reader sees it, whose decode fails once with an error
    nobody foresaw (not a ProtocolError)."""

    def __init__(self, real):
        self.real, self.failed = real, False

    def decode(self, frames):
        if not self.failed:
            self.failed = True
            raise MemoryError("injected")
        return self.real.decode(frames)

    def __getattr__(self, name):
        return getattr(self.real, name)


async def test_an_unexpected_error_in_the_bus_reader_is_counted_and_reading_goes_on(make_client, stages,
                                                                                     monkeypatch):
    monkeypatch.setattr(gateway.bus, "proto", FailingOnce(gateway.bus.proto))
    client = await make_client()
    await wait_ready(client)  # the first message (a hello) was the one that failed
    _, events = await turn(client)
    assert events[-1][0] == "done"
    assert await metric(client, "s2s_gateway_bus_errors_total") == 1


async def test_a_frame_over_the_maximum_size_drops_its_sender_unread(make_client, bus_env):
    client = await make_client()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(events_endpoint(bus_env))
    try:
        push.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))  # read, it would be a malformed frame: counted
        push.send(b"not msgpack")  # on the same connection, after it
        assert await eventually(lambda: gateway_of(client).bus.dropped_frames >= 1, 20)
        await asyncio.sleep(0.5)  # the oversized frame, had it been read, came first
        assert gateway_of(client).bus.dropped_frames == 1
        assert (await client.get("/healthz")).status == 200
    finally:
        push.close()
        ctx.term()


# --- 10. a client that stops reading its stream --------------------------------------------------


async def test_a_stream_whose_client_stops_reading_is_closed_and_releases_its_turn(make_client, bus_env):
    from tests.fakes.fake_stages import FakeStages

    # ~12 MB of events: more than the socket buffers of both ends hold (raw_connection keeps them
    # small), in 12 sentences: 200 such requests at once could fill the TTS worker's queue (100)
    long_answer = tuple(f"Sentence {i} " + "word " * 200_000 + "end." for i in range(12))
    with FakeStages(bus_env, sentences=long_answer):
        client = await make_client(replace(SETTINGS, sse_write_timeout_s=1.0, max_upload_bytes=200_000))
        await wait_ready(client)
        session_id = (await (await upload(client)).json())["session_id"]
        reader, writer = await raw_connection(client, request_head(client, "GET", f"/stream/{session_id}"),
                                              rcvbuf=4096)
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # headers, then it reads no more
            assert await eventually(lambda: gateway_of(client).live, 10)
            assert await eventually(lambda: not gateway_of(client).live, 30), "a stalled reader held its turn"
        finally:
            writer.close()
        assert await metric(client, "s2s_gateway_live_turns") == 0
