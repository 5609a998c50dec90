"""The gateway over HTTP (aiohttp test client) and a real bus, with scripted stages behind it."""

import asyncio
import base64
import io
import re
import subprocess
import wave
from pathlib import Path

import pytest
from aiohttp import FormData

from gateway.settings import GatewaySettings
from proto import TurnCancel
from tests.audio import tone_wav
from tests.fakes.fake_stages import FakeStages
from tests.gateway_harness import SETTINGS, eventually, turn, wait_ready, wait_stages_ready
from tests.recordings import CUTS, cut, ffmpeg_children, tone_recording
from tests.sse import parse_sse

pytestmark = pytest.mark.timeout(60)


async def test_page_and_config(make_client):
    client = await make_client()
    page = await client.get("/")
    assert page.status == 200 and "<html" in (await page.text()).lower()
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    config = await (await client.get("/api/config")).json()
    voices = {p["key"]: p["voice"] for p in config["personas"]}
    assert voices == {"wildlife_expert": "af_heart", "friendly_teacher": "am_michael", "casual_chat": "af_bella",
                      "astronaut": "am_adam"}


async def test_readiness_follows_the_stages(make_client, bus_env):
    client = await make_client()
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert set((await resp.json())["reasons"]) == {"asr", "llm", "tts"}
    with FakeStages(bus_env):
        await wait_ready(client)
        stages = (await (await client.get("/api/stages")).json())["stages"]
        assert stages["llm"]["state"] == "ready" and stages["llm"]["backend"] == "fake"


async def test_a_turn_streams_transcript_chunks_done_in_order(make_client, stages):
    client = await make_client()
    await wait_ready(client)
    _, events = await turn(client)
    names = [name for name, _ in events]
    assert names == ["transcript", "chunk", "chunk", "done"]
    assert events[0][1]["text"] == "What is the capital of France?"
    assert [data["index"] for name, data in events if name == "chunk"] == [0, 1]
    with wave.open(io.BytesIO(base64.b64decode(events[1][1]["b64"]))) as w:
        assert w.getframerate() == 24000 and w.getnframes() == 2400
    done = events[-1][1]
    assert done["full_text"] == "Paris is the capital of France. It is lovely."
    assert {"asr", "llm", "tts", "first_audio", "total"} <= set(done["timing"])
    assert [r.voice for r in stages.tts_requests] == ["af_heart", "af_heart"]


async def test_memory_is_per_conversation(make_client, aiohttp_client, stages):
    alice = await make_client()
    bob = await aiohttp_client(alice.server)  # the same gateway, another browser (cookie jar)
    await wait_ready(alice)
    await turn(alice)
    await turn(alice)
    await turn(bob)
    histories = [[m.content for m in r.history] for r in stages.llm_requests]
    assert histories[0] == ["What is the capital of France?"]
    assert len(histories[1]) == 3  # alice's first exchange, then her new question
    assert histories[1][1] == "Paris is the capital of France. It is lovely."
    assert histories[2] == ["What is the capital of France?"]  # bob never sees alice's history


async def test_history_is_bounded_to_twelve_messages(make_client, stages):
    client = await make_client()
    await wait_ready(client)
    for _ in range(8):
        await turn(client)
    assert len(stages.llm_requests[-1].history) == 12 + 1


async def test_persona_change_and_clear_reset_history(make_client, stages):
    client = await make_client()
    await wait_ready(client)
    await turn(client)
    await turn(client, persona="astronaut")
    assert len(stages.llm_requests[-1].history) == 1
    assert stages.llm_requests[-1].persona == "astronaut" and stages.tts_requests[-1].voice == "am_adam"
    await turn(client, persona="astronaut")
    assert len(stages.llm_requests[-1].history) == 3
    assert (await client.post("/api/clear")).status == 200
    await turn(client, persona="astronaut")
    assert len(stages.llm_requests[-1].history) == 1


async def test_multipart_upload(make_client, stages):
    client = await make_client()
    await wait_ready(client)
    form = FormData()
    form.add_field("audio", tone_wav(1.0), filename="clip.wav", content_type="audio/wav")
    resp = await client.post("/upload", data=form)
    assert resp.status == 200
    events = parse_sse(await (await client.get(f"/stream/{(await resp.json())['session_id']}")).text())
    assert events[-1][0] == "done"


async def test_unknown_and_reused_session_ids(make_client, stages):
    client = await make_client()
    await wait_ready(client)
    resp = await client.get("/stream/not-a-session")
    assert resp.status == 404 and "error" in await resp.json()
    session_id, _ = await turn(client)
    resp = await client.get(f"/stream/{session_id}")
    assert resp.status == 409 and "already" in (await resp.json())["error"]


def webm_bytes(seconds=1.0):
    proc = subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-c:a", "libopus",
                           "-f", "webm", "pipe:1"], input=tone_wav(seconds), capture_output=True, check=True)
    return proc.stdout


async def test_webm_and_ogg_uploads_decode(make_client, stages):
    client = await make_client()
    await wait_ready(client)
    _, events = await turn(client, audio=webm_bytes())
    assert events[-1][0] == "done"


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"", 400, "empty"),
        (b"RIFF", 400, "empty"),
        (b"this is not audio at all" * 20, 415, "Unsupported"),
        (tone_wav(1.0)[:44] + b"\x00" * 10, 400, "short"),
        (tone_wav(4.0), 413, "longer"),
        (b"\x1a\x45\xdf\xa3" + b"\x00" * 500, 400, "decoded"),  # a webm header and nothing usable
    ],
)
async def test_bad_uploads_get_clear_json_errors(make_client, body, status, words):
    client = await make_client()
    resp = await client.post("/upload", data=body, headers={"Content-Type": "application/octet-stream"})
    assert resp.status == status
    assert words in (await resp.json())["error"]


@pytest.mark.parametrize("where", list(CUTS))
@pytest.mark.parametrize("container", ["webm", "live-webm", "ogg"])
async def test_a_recording_cut_short_is_a_clear_400(make_client, container, where, tmp_path, monkeypatch):
    # "live-webm" is laid out as a browser's MediaRecorder writes it (unknown sizes, no duration)
    client = await make_client()
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # anything the decode writes would land here
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    resp = await client.post("/upload", data=cut(tone_recording(container), where))
    assert resp.status == 400
    assert "incomplete or damaged" in (await resp.json())["error"]
    assert not ffmpeg_children() and not list(tmp_path.iterdir())


async def test_oversized_upload_is_413(make_client):
    client = await make_client()
    resp = await client.post("/upload", data=b"\x00" * 300_000)
    assert resp.status == 413 and "too large" in (await resp.json())["error"]


async def test_unknown_persona_is_400(make_client):
    client = await make_client()
    resp = await client.post("/upload?persona=pirate", data=tone_wav(1.0))
    assert resp.status == 400 and "pirate" in (await resp.json())["error"]


async def test_cancel_ends_the_stream_and_reaches_the_worker_holding_the_turn(make_client, stages):
    stages.silent.add("llm")  # it holds the turn's reply until the cancel comes
    client = await make_client()
    await wait_ready(client)
    resp = await client.post("/upload", data=tone_wav(1.0))
    session_id = (await resp.json())["session_id"]
    stream = await client.get(f"/stream/{session_id}")
    first = await stream.content.readuntil(b"\n\n")
    assert b"transcript" in first
    assert (await client.post(f"/api/cancel/{session_id}")).status == 200
    events = parse_sse(first.decode() + (await stream.text()))
    assert events[-1][0] == "error" and "cancelled" in events[-1][1]["message"]
    assert await eventually(lambda: any(c.turn == 1 for c in stages.cancels["llm"]))
    # to the LLM worker that holds the unfinished reply, on its own inbox; the ASR worker
    # finished its part and TTS never got one
    assert {stage for stage, m in stages.received if isinstance(m, TurnCancel)} == {"llm"}


async def test_cancel_reaches_the_tts_worker_holding_the_turn(make_client, bus_env):
    # two TTS workers behind one gateway, each with its own name and inbox; both hold what they
    # take, and the answer is one sentence, so one worker holds the turn and the other nothing
    with FakeStages(bus_env, stages=("asr", "llm"), sentences=("Paris is the capital of France.",)), \
            FakeStages(bus_env, stages=("tts",), name="tts-a") as a, \
            FakeStages(bus_env, stages=("tts",), name="tts-b") as b:
        a.silent.add("tts")
        b.silent.add("tts")
        client = await make_client()
        await wait_ready(client)
        session_id = (await (await client.post("/upload", data=tone_wav(1.0))).json())["session_id"]
        stream = await client.get(f"/stream/{session_id}")
        assert await eventually(lambda: bool(a.held or b.held))
        assert (await client.post(f"/api/cancel/{session_id}")).status == 200
        await stream.text()
        (holder,) = [w for w in (a, b) if any(m.turn == 1 for m, _ in w.held)]
        (idle,) = [w for w in (a, b) if w is not holder]
        assert await eventually(lambda: any(c.turn == 1 for c in holder.cancels["tts"]))
        assert not idle.cancels["tts"]  # a worker that holds nothing of the turn is not told


async def test_client_disconnect_cancels_the_turn(make_client, stages):
    stages.silent.add("llm")  # it holds the turn's reply until the cancel comes
    client = await make_client()
    await wait_ready(client)
    session_id = (await (await client.post("/upload", data=tone_wav(1.0))).json())["session_id"]
    stream = await client.get(f"/stream/{session_id}")
    await stream.content.readuntil(b"\n\n")
    stream.close()
    assert await eventually(lambda: bool(stages.cancels["llm"]))
    assert stages.cancels["llm"][0].turn == 1
    assert {stage for stage, m in stages.received if isinstance(m, TurnCancel)} == {"llm"}


async def test_a_missing_stage_is_an_error_event_naming_it(make_client, bus_env):
    client = await make_client()
    with FakeStages(bus_env, stages=("asr", "llm")):
        await wait_stages_ready(client, "asr", "llm")
        _, events = await turn(client)
    assert [name for name, _ in events] == ["transcript", "error"]
    assert events[-1][1]["stage"] == "tts" and "TTS" in events[-1][1]["message"]


async def test_turns_queued_behind_a_busy_stage_wait_instead_of_timing_out(make_client, stages):
    # Four turns at once on a TTS that takes 0.3 s per sentence: the last waits about 2 s in its
    # queue, twice the stage timeout, while the stage keeps answering the others.
    stages.tts_delay = 0.3
    client = await make_client(GatewaySettings(max_upload_bytes=200_000, max_audio_s=3.0, stage_wait_s=0.5,
                                               stage_timeout_s=1.0))
    await wait_ready(client)
    results = await asyncio.gather(*(turn(client) for _ in range(4)))
    for _, events in results:
        assert [name for name, _ in events][-1] == "done", events[-1]


async def test_a_stage_that_never_answers_times_the_turn_out(make_client, stages):
    stages.silent.add("tts")
    client = await make_client(GatewaySettings(max_upload_bytes=200_000, max_audio_s=3.0, stage_wait_s=0.5,
                                               stage_timeout_s=0.5))
    await wait_ready(client)
    _, events = await turn(client)
    assert events[-1] == ("error", {"message": "The TTS stage did not answer in time.", "stage": "tts",
                                    "kind": "timeout"})


def test_a_stage_is_progressing_only_while_it_answers_some_turn():
    from gateway.stages import StageBoard
    from proto import StageHeartbeat

    now = [100.0]
    board = StageBoard(clock=lambda: now[0])
    board.seen("tts")
    board.update(StageHeartbeat(stage="tts", state="busy", busy_ms=0, queue_depth=3))
    assert not board.progressing("tts", 5.0)  # no result yet
    board.result_seen("tts")
    now[0] += 4.0
    board.seen("tts")
    assert board.progressing("tts", 5.0)
    now[0] += 2.0
    board.seen("tts")
    assert not board.progressing("tts", 5.0)  # alive, but nothing answered for 6 s: stuck or lost
    board.result_seen("tts")
    now[0] += 4.0  # no heartbeat for 4 s: down, whatever it answered before
    assert board.state("tts") == "down" and not board.progressing("tts", 5.0)


def test_how_long_a_silent_worker_takes_to_be_down_is_a_setting(monkeypatch):
    from gateway.stages import StageBoard
    from proto import StageHeartbeat

    assert GatewaySettings().down_after_s == 3.0  # three missed one-second heartbeats
    monkeypatch.setenv("S2S_GATEWAY_DOWN_AFTER_S", "10")
    settings = GatewaySettings.from_env()
    assert settings.down_after_s == 10.0
    now = [100.0]
    board = StageBoard(clock=lambda: now[0], down_after_s=settings.down_after_s)
    board.seen("tts")
    board.update(StageHeartbeat(stage="tts", state="ready", busy_ms=0, queue_depth=0))
    now[0] += 9.0
    assert board.state("tts") == "ready"
    now[0] += 2.0
    assert board.state("tts") == "down"


async def test_a_second_stream_of_a_live_session_is_409(make_client, stages):
    stages.tts_delay = 0.5
    client = await make_client()
    await wait_ready(client)
    session_id = (await (await client.post("/upload", data=tone_wav(1.0))).json())["session_id"]
    first = await client.get(f"/stream/{session_id}")
    assert b"transcript" in await first.content.readuntil(b"\n\n")  # live
    second = await client.get(f"/stream/{session_id}")
    assert second.status == 409 and "already" in (await second.json())["error"]
    events = parse_sse(await first.text())
    assert events[-1][0] == "done"  # the first stream is not disturbed


async def test_too_many_turns_at_once_from_one_client_is_429(make_client, stages):
    client = await make_client(GatewaySettings(**{**SETTINGS.__dict__, "max_turns_per_client": 2}))
    await wait_ready(client)
    waiting = [(await (await client.post("/upload", data=tone_wav(1.0))).json())["session_id"] for _ in range(2)]
    resp = await client.post("/upload", data=tone_wav(1.0))
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    assert "Too many turns" in (await resp.json())["error"]
    for session_id in waiting:  # once they are answered, the client may ask again
        assert parse_sse(await (await client.get(f"/stream/{session_id}")).text())[-1][0] == "done"
    assert (await client.post("/upload", data=tone_wav(1.0))).status == 200


async def test_shutdown_ends_open_streams_with_an_error_and_refuses_new_turns(make_client, stages):
    from gateway.app import GATEWAY

    stages.tts_delay = 0.5
    client = await make_client()
    await wait_ready(client)
    session_id = (await (await client.post("/upload", data=tone_wav(1.0))).json())["session_id"]
    stream = await client.get(f"/stream/{session_id}")
    first = await stream.content.readuntil(b"\n\n")
    gateway = client.server.app[GATEWAY]
    await gateway.shutdown(client.server.app)  # what aiohttp runs on SIGTERM
    events = parse_sse(first.decode() + await stream.text())
    assert [name for name, _ in events] == ["transcript", "error"]
    assert "shutting down" in events[-1][1]["message"] and events[-1][1]["kind"] == "shutdown"
    assert not gateway.live
    resp = await client.post("/upload", data=tone_wav(1.0))
    assert resp.status == 503 and "shutting down" in (await resp.json())["error"]


async def test_the_page_never_inserts_server_text_as_html(make_client):
    """Transcripts and replies (what a stage or a crafted upload can make them say) go into the
    page as text: no HTML-parsing sink appears anywhere in the page's code."""
    client = await make_client()
    page = await (await client.get("/")).text()
    script = "\n".join([await (await client.get(f"/static/js/{m.name}")).text() for m in PAGE_MODULES])
    assert "textContent" in script
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script and sink not in page, sink


PAGE_MODULES = sorted((Path(__file__).parents[1] / "gateway" / "static" / "js").glob("*.js"))


async def test_the_page_loads_as_native_es_modules_served_as_javascript(make_client):
    """No bundler: index.html loads main.js as a module, every module and the capture worklet
    come from the gateway with a JavaScript type (browsers refuse a module otherwise, the more so
    with nosniff) under the same CSP, and every import names a file that is there."""
    client = await make_client()
    page = await (await client.get("/")).text()
    assert '<script type="module" src="/static/js/main.js"></script>' in page
    assert "capture-worklet.js" in {m.name for m in PAGE_MODULES}
    for module in PAGE_MODULES:
        resp = await client.get(f"/static/js/{module.name}")
        assert resp.status == 200, module.name
        assert resp.content_type in ("text/javascript", "application/javascript"), (module.name, resp.content_type)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        for imported in re.findall(r'^import .* from "\./([\w-]+\.js)";$', await resp.text(), re.M):
            assert (module.parent / imported).exists(), (module.name, imported)
