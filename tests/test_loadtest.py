"""s2s-loadtest against the real gateway app (in-process, on a free loopback port) and scripted stages."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import socket
import tempfile

import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.bus import Bus
from gateway.settings import GatewaySettings
from tools.loadtest import cli
from tools.loadtest.client import load_inputs
from tools.loadtest.report import (
    LATENCY_FIELDS,
    percentile,
    stats,
    summarize,
    write_all,
)
from tools.loadtest.runner import RunConfig, run, run_concurrency, run_rate
from tests.audio import tone_wav
from tests.fakes.fake_stages import FakeStages

pytestmark = pytest.mark.timeout(60)

SETTINGS = GatewaySettings(max_upload_bytes=200_000, max_audio_s=3.0, stage_wait_s=0.3, stage_timeout_s=5.0)


@pytest.fixture
def bus_env():
    run_dir = tempfile.mkdtemp(prefix="s2s-lt-")  # short: ipc socket paths have a length limit
    yield {"S2S_RUN_DIR": run_dir}
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
async def gateway(bus_env):
    server = TestServer(create_app(SETTINGS, bus=Bus(bus_env)), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def wait_ready(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"{url}/readyz") as resp:
                if resp.status == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("gateway never became ready")


@pytest.fixture
def wav_dir(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.wav").write_bytes(tone_wav(0.5))
    (folder / "b.wav").write_bytes(tone_wav(0.7, freq=330.0))
    (folder / "notes.txt").write_text("not picked from a folder")
    return folder


def config(url, inputs, **kw) -> RunConfig:
    return RunConfig(url=url, inputs=inputs, quiet=True, max_seconds=30, turn_timeout=10, **kw)


async def test_turns_at_concurrency_two_complete_with_sane_numbers(gateway, bus_env, wav_dir):
    inputs = load_inputs([wav_dir])
    assert [i.name for i in inputs] == ["a.wav", "b.wav"] and inputs[0].content_type == "audio/wav"
    with FakeStages(bus_env) as stages:
        await wait_ready(gateway)
        result = await run_concurrency(config(gateway, inputs, turns=6, concurrency=2))
    assert len(result.turns) == 6 and [t.turn for t in result.turns] == list(range(6))
    assert {t.user for t in result.turns} == {0, 1}
    assert {t.input for t in result.turns} == {"a.wav", "b.wav"}
    for t in result.turns:
        assert t.ok and t.error_kind is None, t
        assert 0 < t.upload_s and 0 <= t.transcript_s <= t.ttfa_s <= t.done_s
        assert t.chunks == 2 and t.audio_s == pytest.approx(0.2)
        assert t.asr == pytest.approx(0.01) and t.llm_first_sentence == pytest.approx(0.01)
        assert t.tts_first_chunk == pytest.approx(0.01) and t.llm == pytest.approx(0.02)
        assert t.tts == pytest.approx(0.02)
        assert t.overhead_s == pytest.approx(t.ttfa_s - 0.03)
        assert t.transcript == "What is the capital of France?"
    # one cookie jar per user: each user's history grows only with its own turns (a user free
    # first takes the next turn, so how many each asked depends on the machine's speed)
    histories: dict[str, list[int]] = {}
    for request in stages.llm_requests:
        histories.setdefault(request.session, []).append(len(request.history))
    assert len(histories) == 2 and sum(map(len, histories.values())) == 6
    assert all(sorted(h) == list(range(1, 2 * len(h), 2)) for h in histories.values()), histories

    summary = summarize(result)
    assert summary["turns"] == summary["ok_turns"] == 6 and summary["errors"] == 0
    assert summary["error_rate"] == 0 and summary["errors_by_kind"] == {}
    assert summary["turns_per_minute"] > 0 and summary["concurrency"] == 2
    assert set(summary["latency"]) == set(LATENCY_FIELDS)
    for name in LATENCY_FIELDS:
        s = summary["latency"][name]
        assert s["n"] == 6 and s["p50"] <= s["p95"] <= s["p99"] <= s["max"], name
    assert summary["latency"]["ttfa_s"]["max"] <= summary["latency"]["done_s"]["max"]
    assert summary["overhead"]["p50"] == summary["latency"]["overhead_s"]["p50"]
    assert summary["chunks"]["p50"] == 2 and summary["audio_s"]["max"] == pytest.approx(0.2)


async def test_sweep_writes_every_file(gateway, bus_env, wav_dir, tmp_path):
    with FakeStages(bus_env):
        await wait_ready(gateway)
        runs = await run(config(gateway, load_inputs([wav_dir]), turns=3), sweep=[1, 2])
    assert [r.level for r in runs] == [1, 2] and all(len(r.turns) == 3 for r in runs)
    out = tmp_path / "out"
    report = write_all(runs, {"sweep": [1, 2]}, out, sweep=True)
    for name in ("report.json", "turns.csv", "latency.png", "sweep.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG" and (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert [r["concurrency"] for r in saved["runs"]] == [1, 2]
    assert all(r["ok_turns"] == 3 for r in saved["runs"])
    with (out / "turns.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and [r["level"] for r in rows] == ["1"] * 3 + ["2"] * 3
    assert all(r["ok"] == "True" and r["chunks"] == "2" and float(r["ttfa_s"]) <= float(r["done_s"]) for r in rows)


async def test_rate_mode_is_bounded_by_turns(gateway, bus_env, wav_dir):
    with FakeStages(bus_env) as stages:
        stages.tts_delay = 0.05
        await wait_ready(gateway)
        result = await run_rate(config(gateway, load_inputs([wav_dir]), turns=5, rate=20.0))
    assert result.mode == "rate" and len(result.turns) == 5 and all(t.ok for t in result.turns)
    starts = [t.started_s for t in result.turns]
    assert starts == sorted(starts) and starts[-1] >= 4 * 0.05 - 0.01  # arrivals spaced 1/R apart
    assert len({t.user for t in result.turns}) == 5  # every arrival is a new user
    assert not result.stopped_by_deadline


async def test_rate_mode_is_bounded_by_time(gateway, bus_env, wav_dir):
    with FakeStages(bus_env):
        await wait_ready(gateway)
        cfg = config(gateway, load_inputs([wav_dir]), turns=100, rate=5.0)
        cfg.max_seconds = 0.5
        result = await run_rate(cfg)
    # 100 arrivals at 5/s would take 20 s: the deadline ended the run (with a loaded machine's margin)
    assert 1 <= len(result.turns) <= 4 and result.stopped_by_deadline and result.wall_s < 10


async def test_errors_are_counted_by_kind(gateway, bus_env, wav_dir, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not audio at all" * 20)
    inputs = load_inputs([wav_dir / "a.wav", junk])
    assert inputs[1].content_type == "application/octet-stream"
    with FakeStages(bus_env, stages=("asr", "llm")):  # no TTS: every spoken turn fails at tts
        await wait_ready_partial(gateway)
        result = await run_concurrency(config(gateway, inputs, turns=4, concurrency=2))
    summary = summarize(result)
    assert summary["errors"] == 4 and summary["error_rate"] == 1.0 and summary["turns_per_minute"] == 0
    assert summary["errors_by_kind"] == {"sse_error": 2, "http_4xx": 2}
    assert summary["errors_by_detail"] == {"sse_error tts": 2, "http_4xx 415": 2}
    failed_tts = [t for t in result.turns if t.error_kind == "sse_error"]
    assert all(t.transcript_s is not None and t.ttfa_s is None and t.done_s is None for t in failed_tts)
    assert all("TTS" in t.error_message for t in failed_tts)
    rejected = [t for t in result.turns if t.error_kind == "http_4xx"]
    assert all(t.error_status == 415 and t.upload_s is None for t in rejected)


async def wait_ready_partial(url: str) -> None:
    """Until ASR and LLM are ready (readyz stays 503 without TTS)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            async with session.get(f"{url}/api/stages") as resp:
                board = (await resp.json())["stages"]
            if board["asr"]["state"] == board["llm"]["state"] == "ready":
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"asr and llm never became ready: {board}")


async def test_a_turn_timeout_is_its_own_kind(gateway, bus_env, wav_dir):
    with FakeStages(bus_env) as stages:
        stages.silent.add("tts")  # the turn waits on TTS, which never answers
        await wait_ready(gateway)
        cfg = config(gateway, load_inputs([wav_dir]), turns=1)
        cfg.turn_timeout = 2.0  # under the gateway's own 5 s TTS timeout, far over a transcript's time
        result = await run_concurrency(cfg)
    (turn,) = result.turns
    assert turn.error_kind == "timeout" and not turn.ok and turn.transcript_s is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_cli_end_to_end_and_exit_codes(gateway, bus_env, wav_dir, tmp_path, capsys):
    out = tmp_path / "cli-out"
    with FakeStages(bus_env):
        await wait_ready(gateway)
        rc = await asyncio.to_thread(cli.main, ["--url", gateway, "--turns", "3", "--concurrency", "2", "--quiet",
                                                "--out", str(out), str(wav_dir)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "turns.csv", "latency.png"}
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["mode"] == "concurrency" and report["runs"][0]["ok_turns"] == 3
    assert "report:" in capsys.readouterr().out
    # an unreachable gateway, bad arguments, missing inputs: exit 2
    dead = f"http://127.0.0.1:{free_port()}"
    assert await asyncio.to_thread(cli.main, ["--url", dead, "--quiet", str(wav_dir)]) == 2
    assert "not reachable" in capsys.readouterr().err
    assert cli.main(["--turns", "0", str(wav_dir)]) == 2
    assert cli.main(["--sweep", "1,x", str(wav_dir)]) == 2
    assert cli.main(["--rate", "1", "--concurrency", "2", str(wav_dir)]) == 2
    assert cli.main(["--url", gateway, str(tmp_path / "missing.wav")]) == 2


def test_non_loopback_url_is_refused(wav_dir, capsys):
    assert cli.main(["--url", "http://192.168.1.20:7860", str(wav_dir)]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert cli.main(["--url", "http://example.com", str(wav_dir)]) == 2
    for url in ("http://127.0.0.1:7860", "http://localhost:7860/", "http://[::1]:7860", "http://127.0.0.2"):
        assert cli.check_url(url, allow_remote=False) == url.rstrip("/")
    assert cli.check_url("http://192.168.1.20:7860", allow_remote=True) == "http://192.168.1.20:7860"
    with pytest.raises(ValueError):
        cli.check_url("ftp://127.0.0.1/", allow_remote=True)


def test_percentile_on_known_data():
    data = list(range(1, 101))  # 1..100
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 95) == pytest.approx(95.05)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile(data, 0) == 1 and percentile(data, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None and percentile([None, 2.0], 50) == 2.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    s = stats([1.0, 2.0, 3.0, 4.0, None])
    assert s == {"n": 4, "p50": 2.5, "p95": 3.85, "p99": 3.97, "max": 4.0, "mean": 2.5}


def test_inputs_by_extension(tmp_path):
    for name in ("x.wav", "y.OGG", "z.webm"):
        (tmp_path / name).write_bytes(b"\x00")
    types = {i.name: i.content_type for i in load_inputs([tmp_path])}
    assert types == {"x.wav": "audio/wav", "y.OGG": "audio/ogg", "z.webm": "audio/webm"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError):
        load_inputs([empty])


def test_a_chunk_that_is_not_a_wav_is_an_error_not_silence():
    import base64

    from tools.loadtest.client import wav_seconds

    assert wav_seconds(base64.b64encode(tone_wav(0.5, rate=24000)).decode()) == 0.5
    with pytest.raises(ValueError, match="not a valid WAV"):
        wav_seconds(base64.b64encode(b"not a wav at all").decode())
    with pytest.raises(ValueError):
        wav_seconds("!!!")


async def test_sse_events_larger_than_aiohttps_default_line_limit():
    from tools.loadtest.client import iter_sse

    big = "A" * (3 * 1024 * 1024)  # about 47 s of 24 kHz audio in base64

    class Reader:
        def __init__(self, text):
            self.lines = [line.encode() + b"\n" for line in text.split("\n")]

        async def readline(self, max_line_length=None):
            line = self.lines.pop(0) if self.lines else b""
            assert max_line_length is None or len(line) <= max_line_length
            return line

    body = f': ping\n\nevent: chunk\ndata: {{"b64": "{big}"}}\n\nevent: done\ndata: {{}}\n\n'
    events = [(name, len(data)) async for name, data in iter_sse(Reader(body))]
    assert events == [("chunk", len(f'{{"b64": "{big}"}}')), ("done", 2)]


async def test_fresh_starts_a_new_conversation_for_every_turn(gateway, bus_env, wav_dir):
    with FakeStages(bus_env) as stages:
        await wait_ready(gateway)
        result = await run_concurrency(config(gateway, load_inputs([wav_dir]), turns=4, concurrency=2, fresh=True))
    assert all(t.ok for t in result.turns)
    assert [len(r.history) for r in stages.llm_requests] == [1, 1, 1, 1]  # no earlier turn carried along


async def test_side_by_side_runs_each_level_against_both_and_reports_ratios(gateway, bus_env, wav_dir, tmp_path,
                                                                           capsys):
    from tools.loadtest.report import compare, format_comparison
    from tools.loadtest.runner import run_compare

    other_env = {"S2S_RUN_DIR": tempfile.mkdtemp(prefix="s2s-lt2-")}
    baseline = TestServer(create_app(SETTINGS, bus=Bus(other_env)), host="127.0.0.1")
    await baseline.start_server()
    baseline_url = str(baseline.make_url("")).rstrip("/")
    try:
        with FakeStages(bus_env) as fast, FakeStages(other_env) as slow:
            slow.tts_delay = 0.3  # the baseline answers later, so the ratios are known to be above 1
            await wait_ready(gateway)
            await wait_ready(baseline_url)
            product, original = await run_compare(config(gateway, load_inputs([wav_dir]), turns=2), baseline_url,
                                                  [1, 2])
            assert len(fast.llm_requests) == len(slow.llm_requests) == 4  # 2 turns per level on each side
            out = tmp_path / "side"
            rc = await asyncio.to_thread(cli.main, ["--url", gateway, "--compare", baseline_url, "--turns", "2",
                                                    "--sweep", "1,2", "--fresh", "--quiet", "--out", str(out),
                                                    str(wav_dir)])
    finally:
        await baseline.close()
        shutil.rmtree(other_env["S2S_RUN_DIR"], ignore_errors=True)
    assert [r.level for r in product] == [1, 2] == [r.level for r in original]
    rows = compare([summarize(r) for r in product], [summarize(r) for r in original])
    assert [r["concurrency"] for r in rows] == [1, 2]
    for row in rows:
        assert row["ttfa_p50_speedup"] > 1 and row["errors"] == {"product": 0, "original": 0}
        assert row["ttfa_p50_speedup"] == pytest.approx(row["ttfa_p50"]["original"] / row["ttfa_p50"]["product"],
                                                        abs=0.001)
    assert "speedup" in format_comparison(rows)
    assert rc == 0
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["levels"] == [1, 2] and saved["original_url"] == baseline_url and len(saved["rows"]) == 2
    for side in ("product", "original"):
        assert (out / side / "report.json").is_file() and (out / side / "sweep.png").is_file()
    assert "side by side" in capsys.readouterr().out


def test_side_by_side_refuses_rate_mode(wav_dir, capsys):
    assert cli.main(["--rate", "1", "--compare", "http://127.0.0.1:9", str(wav_dir)]) == 2
    assert "--compare runs concurrency levels" in capsys.readouterr().err


@pytest.mark.timeout(120)
async def test_realtime_mode_measures_turns_and_barge_in(gateway, bus_env, tmp_path, capsys):
    """--realtime: one conversation speaking at real-time pace, each answer interrupted by the
    next question; the scripted TTS holds its second sentence back so the cut lands mid-answer."""
    from tests.audio import spoken_wav

    spoken_wav("What is the capital of France?", tmp_path / "question.wav")
    with FakeStages(bus_env) as stages:
        stages.tts_delay = 1.5
        await wait_ready(gateway)
        code = await asyncio.to_thread(cli.main, [
            "--url", gateway, "--realtime", "--barge-in", "--turns", "3", "--out", str(tmp_path / "out"),
            "--quiet", str(tmp_path / "question.wav")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "realtime.json").read_text())
    assert (report["turns"], report["ok"], report["false_endpoints"]) == (3, 3, 0), report
    for name in ("speech_end_to_first_audio_s", "speech_end_to_transcript_s"):
        assert report[name]["n"] == 3 and 0.4 < report[name]["p50"] < 5, report  # 500 ms of silence first
    assert report["endpoint_to_transcript_s"]["n"] == 3 and report["endpoint_to_transcript_s"]["p50"] < 0.5
    assert report["barge_in_to_last_audio_s"]["n"] == 2  # the last answer is heard out
    rows = list(csv.DictReader((tmp_path / "out" / "realtime_turns.csv").open()))
    assert [r["status"] for r in rows] == ["cancelled", "cancelled", "completed"]
    assert (tmp_path / "out" / "realtime.png").stat().st_size > 0


async def test_realtime_mode_keeps_the_turns_it_had_when_its_time_is_up(gateway, bus_env, tmp_path):
    from tests.audio import spoken_wav

    spoken_wav("What is the capital of France?", tmp_path / "question.wav")
    with FakeStages(bus_env):
        await wait_ready(gateway)
        code = await asyncio.to_thread(cli.main, [
            "--url", gateway, "--realtime", "--turns", "5", "--max-seconds", "1.5", "--out", str(tmp_path / "out"),
            "--quiet", str(tmp_path / "question.wav")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "realtime.json").read_text())
    assert report["turns"] == 1 and report["errors"] == ["deadline"]  # cut while the question was spoken
