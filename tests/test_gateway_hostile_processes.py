"""What a hostile client or another local user can do to the gateway as a process (issue 14): the
decoder outliving a killed gateway, a run dir someone else made, and what the logs give away.
Real processes: `python -m gateway`, and the project's supervisord.conf."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.bus import Bus
from gateway.settings import GatewaySettings
from proto import StageHeartbeat
from services.runtime.endpoints import MAX_MESSAGE_BYTES, ensure_run_dir
from services.runtime.errors import ConfigError
from services.runtime.logs import session_tag
from tests.audio import tone_wav
from tests.gateway_harness import SETTINGS
from tests.product import ROOT, Product, free_port
from tests.worker_process import WorkerProcess, private_run_dir

pytestmark = pytest.mark.timeout(120)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@contextmanager
def gateway_process(**env: str):
    """(`python -m gateway`, its port), killed afterwards if it still runs."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("S2S_RUN_DIR", "XDG_RUNTIME_DIR")}
    environ.update({"S2S_GATEWAY_PORT": str(port), "S2S_LOG_FORMAT": "text", **env})
    proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def post(url: str, data: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "audio/wav"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- 1. ffmpeg dies with the gateway -------------------------------------------------------------


def test_the_decoder_dies_with_a_gateway_killed_by_sigkill(tmp_path):
    """A stand-in ffmpeg that never ends (it notes its pid, then becomes `sleep`): when the gateway
    is killed with SIGKILL mid-decode, it must not live on in its own session."""
    bin_dir, pid_file = tmp_path / "bin", tmp_path / "ffmpeg.pid"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 300\n")
    (bin_dir / "ffmpeg").chmod(0o755)
    decoder = 0
    try:
        with gateway_process(PATH=f"{bin_dir}:{os.environ['PATH']}", S2S_RUN_DIR=str(tmp_path / "run")) as (
                gateway, port):
            assert wait_until(lambda: healthy(port), 60), "the gateway did not start"
            threading.Thread(target=post, args=(f"http://127.0.0.1:{port}/upload", tone_wav(0.5)),
                             daemon=True).start()
            assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30)
            decoder = int(pid_file.read_text())
            assert alive(decoder)
            gateway.kill()
            gateway.wait(10)
        assert wait_until(lambda: not alive(decoder), 10), "ffmpeg outlived the gateway"
    finally:
        if decoder and alive(decoder):
            os.kill(decoder, signal.SIGKILL)


# --- 8. the run dir ------------------------------------------------------------------------------


def test_a_symlink_at_the_tmp_run_dir_is_refused_with_a_clear_message(tmp_path):
    """Another user made /tmp/s2s-<uid> first, as a link to a dir of theirs: the gateway must not
    put the bus there (nor be stopped by it silently): it exits 78 and says why."""
    tmp, theirs = tmp_path / "tmp", tmp_path / "theirs"
    tmp.mkdir()
    theirs.mkdir()
    (tmp / f"s2s-{os.getuid()}").symlink_to(theirs)
    with gateway_process(TMPDIR=str(tmp)) as (gateway, _):
        output, _ = gateway.communicate(timeout=60)
    assert gateway.returncode == 78, output
    assert f"the run dir {tmp}/s2s-{os.getuid()} is a symbolic link" in output
    assert "set S2S_RUN_DIR" in output
    assert list(theirs.iterdir()) == []  # no socket was made in their dir


async def test_a_run_dir_owned_by_someone_else_stops_the_gateway_from_starting(tmp_path, monkeypatch,
                                                                               aiohttp_client):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # as if this dir were another user's
    with pytest.raises(ConfigError, match=rf"belongs to uid {real_uid}, not to this user"):
        ensure_run_dir(run)
    with pytest.raises(ConfigError, match="belongs to uid"):
        await aiohttp_client(create_app(SETTINGS, bus=Bus({"S2S_RUN_DIR": str(run)})))
    assert list(run.iterdir()) == []


# --- 7. logs -------------------------------------------------------------------------------------


def test_logs_are_owner_only_and_carry_no_upload_id(tmp_path):
    """The gateway under the project's supervisord.conf (workers not started): its log is 0600,
    and the upload id (which can claim the stream) appears only as a digest."""
    product = Product({"S2S_GATEWAY_STAGE_WAIT_S": "0.5", "S2S_LOG_FORMAT": "json"})
    for stage in ("asr", "llm", "tts"):
        product.conf.write_text(product.conf.read_text().replace(
            f"[program:{stage}]\n", f"[program:{stage}]\nautostart=false\n"))
    try:
        subprocess.run([str(product.bin / "supervisord"), "-c", str(product.conf)], env=product.env, check=True,
                       timeout=30)
        assert wait_until(lambda: healthy(product.port), 60), product.logs()
        status, body = post(product.url + "/upload", tone_wav(0.5))
        assert status == 200, body
        upload_id = body.decode().split('"session_id": "')[1].split('"')[0]
        with urllib.request.urlopen(f"{product.url}/stream/{upload_id}", timeout=30) as resp:
            assert b"event: error" in resp.read()  # no stage: the turn ends, after its log lines
        log_file = product.var / "log" / "gateway.log"
        assert wait_until(lambda: "turn started" in log_file.read_text(), 10)
        text = log_file.read_text()
        assert upload_id not in text
        assert f'"upload": "{session_tag(upload_id)}"' in text
        # the programs' logs, made by supervisord under its umask (its own log is opened before
        # that applies: scripts/run.sh starts it under umask 077, in a 0700 var/log)
        assert log_file.stat().st_mode & 0o777 == 0o600
    finally:
        product.stop()


# --- 9. a worker's bus sockets -------------------------------------------------------------------


def test_a_worker_drops_the_sender_of_a_frame_over_the_maximum_size_unread():
    """On the worker's request socket, an oversized frame: read, it would be counted as a dropped
    frame; libzmq must close that connection before allocating it, and the worker lives on.
    (It does not reconnect after that protocol error, so the gateway refuses a
    S2S_GATEWAY_MAX_AUDIO_S whose recordings would not fit in one message.)"""
    with private_run_dir() as env:
        worker = WorkerProcess(env).ready()
        try:
            worker.bus.send_raw("tts", [b"\x00" * (MAX_MESSAGE_BYTES + 1)])
            for _ in range(3):  # a 32 MiB frame over ipc is read within a beat or two
                beat = worker.bus.wait_for(lambda m: isinstance(m, StageHeartbeat), timeout=5)
                assert beat.dropped_frames == 0
            assert worker.proc.poll() is None
        finally:
            worker.stop()


def test_the_gateway_refuses_a_recording_length_that_would_not_fit_in_one_bus_message():
    with pytest.raises(ConfigError, match="S2S_GATEWAY_MAX_AUDIO_S must be at most 1046"):
        GatewaySettings(max_audio_s=1200)
