"""Prometheus metrics: the gateway's GET /metrics after real turns through the gateway harness, and
a real worker process's own metrics port (issue 6)."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import GatewaySettings
from gateway.turn import TurnState
from proto import AsrFinal, StageError, TtsDone, TtsRequest
from tests.audio import tone_wav
from tests.gateway_harness import turn, wait_ready
from tests.worker_process import WorkerProcess, private_run_dir

pytestmark = pytest.mark.timeout(60)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(all_samples, name: str, **labels) -> float:
    """The sum of a sample over every label set that includes labels (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in all_samples.items() if n == name and wanted <= ls)


async def scrape(client) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return samples(await resp.text())


# --- the gateway ----------------------------------------------------------------------------------


async def test_a_turn_is_counted_with_its_latencies(make_client, stages):
    client = await make_client()
    await wait_ready(client)
    _, events = await turn(client)
    assert events[-1][0] == "done"
    m = await scrape(client)
    assert value(m, "s2s_gateway_turns_started_total") == 1
    assert value(m, "s2s_gateway_turns_completed_total") == 1
    assert value(m, "s2s_gateway_errors_total") == 0
    assert value(m, "s2s_gateway_ttfa_seconds_count") == 1
    assert 0 < value(m, "s2s_gateway_ttfa_seconds_sum") < 60  # recorded, in seconds (a loaded machine's margin)
    assert value(m, "s2s_gateway_upload_ttfa_seconds_count") == 1
    assert value(m, "s2s_gateway_turn_seconds_count") == 1
    for stage, measure in [("asr", "total"), ("llm", "total"), ("llm", "first_sentence"), ("tts", "total"),
                           ("tts", "first_chunk")]:
        assert value(m, "s2s_gateway_stage_latency_seconds_count", stage=stage, measure=measure) == 1, (stage, measure)
    assert value(m, "s2s_gateway_upload_bytes_count") == 1
    assert value(m, "s2s_gateway_upload_bytes_sum") == len(tone_wav(1.0))
    assert value(m, "s2s_gateway_upload_audio_seconds_sum") == pytest.approx(1.0, abs=0.05)
    assert value(m, "s2s_gateway_decode_seconds_count") == 1
    assert value(m, "s2s_gateway_live_turns") == 0
    for stage in ("asr", "llm", "tts"):  # from the stage board at scrape time
        assert ("s2s_gateway_stage_queue_depth", frozenset({("stage", stage)})) in m
        assert value(m, "s2s_gateway_stage_state", stage=stage, state="ready") == 1
    assert value(m, "s2s_gateway_http_requests_total", route="/upload", status="200") == 1


async def test_errors_are_counted_by_kind_and_stage(make_client, stages):
    client = await make_client(GatewaySettings(max_upload_bytes=200_000, max_audio_s=3.0, stage_wait_s=0.5,
                                               stage_timeout_s=0.5))
    await wait_ready(client)
    bad = await client.post("/upload", data=b"this is not audio at all" * 20)
    assert bad.status == 415
    assert (await client.get("/stream/no-such-session")).status == 404
    stages.silent.add("llm")  # takes the request and never answers: the turn times out on the LLM
    _, events = await turn(client)
    assert events[-1][0] == "error" and events[-1][1]["stage"] == "llm"
    m = await scrape(client)
    assert value(m, "s2s_gateway_errors_total", kind="bad_input", stage="gateway") == 2
    assert value(m, "s2s_gateway_errors_total", kind="timeout", stage="llm") == 1
    assert value(m, "s2s_gateway_turns_started_total") == 1
    assert value(m, "s2s_gateway_turns_completed_total") == 0
    assert value(m, "s2s_gateway_ttfa_seconds_count") == 0
    assert value(m, "s2s_gateway_http_requests_total", route="/upload", status="415") == 1


async def test_cancelled_and_abandoned_turns_are_counted_by_kind(make_client, stages):
    stages.tts_delay = 0.5  # each turn is still speaking when it is stopped

    async def streaming():  # a turn whose transcript has arrived
        upload = await client.post("/upload", data=tone_wav(1.0))
        stream = await client.get(f"/stream/{(await upload.json())['session_id']}")
        assert b"transcript" in await stream.content.readuntil(b"\n\n")
        return stream

    client = await make_client()
    await wait_ready(client)
    stream = await streaming()
    assert (await client.post(f"/api/cancel/{stream.url.name}")).status == 200  # Stop
    await stream.text()
    (await streaming()).close()  # the page closed
    for _ in range(100):  # the gateway sees the closed stream at its next tick
        m = await scrape(client)
        if value(m, "s2s_gateway_errors_total", kind="disconnected"):
            break
        await asyncio.sleep(0.05)
    assert value(m, "s2s_gateway_errors_total", kind="cancelled", stage="gateway") == 1
    assert value(m, "s2s_gateway_errors_total", kind="disconnected", stage="gateway") == 1
    assert value(m, "s2s_gateway_turns_started_total") == 2
    assert value(m, "s2s_gateway_turns_completed_total") == 0
    assert value(m, "s2s_gateway_live_turns") == 0


async def test_late_results_are_dropped_and_counted(make_client, stages):
    """A stage that answers after its turn has ended (here: timed out) reaches no stream; the
    gateway counts what it dropped, and the conversation's next turn is whole."""
    client = await make_client(GatewaySettings(max_upload_bytes=200_000, max_audio_s=3.0, stage_wait_s=0.5,
                                               stage_timeout_s=0.5))
    await wait_ready(client)
    stages.silent.add("tts")  # takes the sentences and says nothing until told
    _, events = await turn(client)
    assert events[-1][0] == "error" and events[-1][1]["stage"] == "tts"
    held = len(stages.held)
    assert held >= 1
    stages.silent.clear()
    stages.answer_held.set()  # audio and done for each sentence of the ended turn: late
    for _ in range(200):
        board = await (await client.get("/api/stages")).json()
        if board["late_results"] >= 2 * held:
            break
        await asyncio.sleep(0.05)
    assert board["late_results"] == 2 * held
    assert value(await scrape(client), "s2s_gateway_late_results_total") == 2 * held
    _, events = await turn(client)  # the same conversation's next turn: its own chunks only
    assert [name for name, _ in events] == ["transcript", "chunk", "chunk", "done"]


def test_every_error_a_turn_can_end_with_has_its_kind():
    def fresh():
        state = TurnState("s", 1, "wildlife_expert", "af_heart", [], time.monotonic)
        state.start(b"\x00\x00")
        return state

    def kind(actions):
        return next(a.data["kind"] for a in actions if getattr(a, "event", "") == "error")

    assert kind(fresh().on_timeout()) == "timeout"
    assert kind(fresh().on_stage_down("asr", "down")) == "unavailable"
    failed = StageError(stage="asr", kind="failed", message="boom", session="s", turn=1)
    assert kind(fresh().on_message(failed, [])) == "stage_error"
    silence = AsrFinal(text=" ", compute_s=0.1, audio_s=1.0, session="s", turn=1)
    assert kind(fresh().on_message(silence, [])) == "no_speech"


async def test_each_app_has_its_own_registry(make_client):
    # two apps in one process (as tests make them): what one counts never shows in the other's
    first, second = await make_client(), await make_client()
    assert (await first.post("/upload", data=b"this is not audio at all" * 20)).status == 415
    counted, untouched = await scrape(first), await scrape(second)
    assert value(counted, "s2s_gateway_errors_total", kind="bad_input") == 1
    assert value(counted, "s2s_gateway_http_requests_total", route="/upload", status="415") == 1
    assert value(untouched, "s2s_gateway_errors_total", kind="bad_input") == 0
    assert value(untouched, "s2s_gateway_http_requests_total", route="/upload") == 0


# --- a worker process --------------------------------------------------------------------------


# config/tts.env pins one CPU thread, which imports torch at start: the scripted stage needs none
QUICK = {"S2S_TTS_THREADS": "0", "S2S_TTS_PARALLEL": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_worker(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return samples(resp.read().decode())


def scrape_until(port: int, predicate, timeout: float = 30.0) -> dict:
    """The worker's metrics once they show the state the test waits for."""
    deadline = time.monotonic() + timeout
    while not predicate(m := scrape_worker(port)):
        assert time.monotonic() < deadline, "the worker's metrics never showed the awaited state"
        time.sleep(0.02)
    return m


def tts(w: WorkerProcess, text: str, turn: int, index: int = 0) -> None:
    w.bus.send("tts", TtsRequest(index=index, text=text, voice="af_heart", session="s1", turn=turn))


def test_a_worker_serves_its_metrics_on_its_own_port():
    port = free_port()
    with private_run_dir() as env:
        # S2S_WORKER_INDEX is added to the stage's port: worker 1 of the stage listens on base + 1
        w = WorkerProcess(env, S2S_TTS_METRICS_PORT=str(port - 1), S2S_WORKER_INDEX="1", **QUICK)
        try:
            w.ready()
            tts(w, "parts=1 hold=60", turn=1, index=0)  # in progress until turn 2 stops it part-way
            tts(w, "parts=1", turn=1, index=1)  # still queued when turn 2 comes: dropped, stale
            scrape_until(port, lambda m: value(m, "s2s_worker_queue_wait_seconds_count") == 1
                         and value(m, "s2s_worker_inbox_depth") == 1)  # the first started, the second waits
            tts(w, "parts=2", turn=2)
            done = w.bus.wait_for(lambda m: isinstance(m, TtsDone) and m.turn == 2)
            w.bus.send_raw("tts", [b"\xc1garbage"])
            # the done goes out before the compute thread marks itself idle: wait for that too
            m = scrape_until(port, lambda m: value(m, "s2s_worker_malformed_frames_total") == 1
                             and value(m, "s2s_worker_busy") == 0)
        finally:
            w.stop()
    labels = {"stage": "tts", "instance": done.instance}
    assert value(m, "s2s_worker_requests_received_total", **labels) == 3
    assert value(m, "s2s_worker_requests_total", outcome="ok", **labels) == 1
    assert value(m, "s2s_worker_requests_total", outcome="cancelled", **labels) == 1
    assert value(m, "s2s_worker_requests_total", outcome="stale", **labels) == 1
    assert value(m, "s2s_worker_requests_total", outcome="failed", **labels) == 0
    assert value(m, "s2s_worker_cancelled_total", reason="cancelled", **labels) == 1
    assert value(m, "s2s_worker_stale_dropped_total", reason="cancelled", **labels) == 1
    assert value(m, "s2s_worker_request_seconds_count", **labels) == 2  # the two that started
    assert value(m, "s2s_worker_queue_wait_seconds_count", **labels) == 2
    assert value(m, "s2s_worker_malformed_frames_total", **labels) == 1
    assert value(m, "s2s_worker_inbox_depth", **labels) == 0
    assert value(m, "s2s_worker_busy", **labels) == 0
    assert value(m, "s2s_worker_state", state="ready", **labels) == 1
    assert value(m, "s2s_worker_info", backend="scripted", **labels) == 1


def test_a_taken_metrics_port_is_logged_and_the_worker_serves_on():
    with socket.socket() as taken, private_run_dir() as env:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        w = WorkerProcess(env, S2S_TTS_METRICS_PORT=str(port), **QUICK)
        try:
            w.ready()
            tts(w, "parts=1", turn=1)
            assert w.bus.wait_for(lambda m: isinstance(m, TtsDone)).turn == 1
            assert w.proc.poll() is None
        finally:
            w.stop()
        output = w.output()
    assert "serves without metrics: cannot listen on 127.0.0.1:%d" % port in output
    assert "S2S_TTS_METRICS_PORT" in output
