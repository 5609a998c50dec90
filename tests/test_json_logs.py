"""Structured logs (issue 6): one JSON object per line in every process, and one turn followed by its
session and turn ids through the gateway's log and a real worker's."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services.runtime.logs import JsonFormatter, configure_logging, log_turn, session_tag
from tests.fakes.fake_stages import FakeStages
from tests.gateway_harness import turn, wait_ready
from tests.worker_process import ROOT

pytestmark = pytest.mark.timeout(60)


def parse(text: str) -> list[dict]:
    """Every non-empty line, each of which must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_line_is_one_json_object_with_the_turn_ids():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("tts"))
    logger = logging.getLogger("s2s.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        log_turn(logger, "request finished", "conversation-cookie", 3, duration_s=0.25, odd=object(),
                 process="a field named like a core key")
        try:
            raise RuntimeError("multi\nline")
        except RuntimeError:
            logger.exception("it failed: %s", "x")
        logger.info("no turn here")
    finally:
        logger.removeHandler(handler)
    first, failure, plain = parse(out.getvalue())
    assert first["msg"] == "request finished" and first["level"] == "INFO" and first["logger"] == "s2s.test.json"
    assert first["process"] == "tts" and first["pid"] == os.getpid() and first["ts"].endswith("Z")
    assert first["session"] == session_tag("conversation-cookie") and first["turn"] == 3
    assert "conversation-cookie" not in out.getvalue()  # the cookie value never reaches a log
    assert first["duration_s"] == 0.25 and first["odd"].startswith("<object")
    assert first["process"] == "tts" and first["field_process"] == "a field named like a core key"
    assert failure["level"] == "ERROR" and "RuntimeError: multi\nline" in failure["exc"]
    assert "session" not in plain and "turn" not in plain


def test_text_format_keeps_the_fields():
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("llm", fmt="text", stream=out)
        log_turn(logging.getLogger("s2s.test.text"), "request started", "abc", 2, waited_s=0.1)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = out.getvalue().strip()
    assert line.endswith(f"request started [waited_s=0.1 session={session_tag('abc')} turn=2]"), line


async def test_one_turn_is_followed_by_its_ids_through_the_gateway_and_a_worker(make_client, bus_env):
    # the gateway in this process, logging JSON into a buffer; fake ASR and LLM stages; the TTS
    # stage a real worker process (the scripted one: each sentence is its script) logging to a file
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("gateway"))
    gateway_log = logging.getLogger("s2s.gateway")
    gateway_log.addHandler(handler)
    saved_level = gateway_log.level
    gateway_log.setLevel(logging.INFO)
    worker_log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log", dir=bus_env["S2S_RUN_DIR"])[1])
    env = {**os.environ, **bus_env, "PYTHONPATH": str(ROOT), "S2S_TTS_METRICS_PORT": "0", "S2S_TTS_THREADS": "0",
           "S2S_TTS_PARALLEL": "1", "S2S_LOG_FORMAT": "json", "S2S_LOG_LEVEL": "INFO"}
    client = await make_client()
    with open(worker_log, "wb") as sink:
        worker = subprocess.Popen([sys.executable, "-m", "tests.fakes.scripted_stage"], env=env, cwd=ROOT,
                                  stdout=sink, stderr=subprocess.STDOUT)
    try:
        with FakeStages(bus_env, sentences=("parts=2",), stages=("asr", "llm")):
            await wait_ready(client)
            upload_id, events = await turn(client)
            assert [name for name, _ in events] == ["transcript", "chunk", "chunk", "done"]
            deadline = time.monotonic() + 5
            while "request finished" not in worker_log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        gateway_log.removeHandler(handler)
        gateway_log.setLevel(saved_level)
        worker.kill()
        worker.wait(5)
    gateway_lines = parse(out.getvalue())
    worker_lines = parse(worker_log.read_text())  # every line of the worker's output is JSON

    upload = next(line for line in gateway_lines if line["msg"] == "upload accepted")
    assert upload["upload"] == session_tag(upload_id) and upload["bytes"] > 0  # the id grants the stream: a digest
    session = upload["session"]
    ours = [line for line in gateway_lines if line.get("session") == session and line.get("turn") == 1]
    messages = [line["msg"] for line in ours]
    for step in ("turn started", "sending asr.request to asr", "transcript", "sending llm.request to llm",
                 "sending tts.request to tts", "first chunk sent", "done"):
        assert step in messages, (step, messages)
    assert all(line["process"] == "gateway" and line["pid"] == os.getpid() for line in ours)
    done = next(line for line in ours if line["msg"] == "done")
    assert {"asr", "llm", "tts", "total"} <= set(done["timing"])

    on_worker = [line for line in worker_lines if line.get("session") == session]
    assert [line["msg"] for line in on_worker] == ["request received", "request started", "request finished"]
    assert all(line["turn"] == 1 and line["process"] == "tts" and line["pid"] == worker.pid for line in on_worker)
    finished = on_worker[-1]
    assert finished["outcome"] == "ok" and finished["duration_s"] >= 0 and finished["tag"] == "tts.request"
    assert {line["level"] for line in worker_lines} <= {"INFO", "WARNING"}
