"""The gateway under test: the real app and bus on a private run dir, scripted stages behind it.

Its fixtures are registered for every test module by tests/conftest.py (pytest_plugins); its
helpers are imported by tests/test_gateway_http.py and tests/test_bus_fuzz.py.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest

from gateway.app import create_app
from gateway.bus import Bus
from gateway.settings import GatewaySettings
from tests.audio import tone_wav
from tests.fakes.fake_stages import FakeStages
from tests.sse import parse_sse


@pytest.fixture
def bus_env():
    run_dir = tempfile.mkdtemp(prefix="s2s-g-")
    yield {"S2S_RUN_DIR": run_dir}
    shutil.rmtree(run_dir, ignore_errors=True)


SETTINGS = GatewaySettings(max_upload_bytes=200_000, max_audio_s=3.0, stage_wait_s=0.5, stage_timeout_s=5.0)


@pytest.fixture
async def make_client(aiohttp_client, bus_env):
    async def make(settings=SETTINGS):
        return await aiohttp_client(create_app(settings, bus=Bus(bus_env)))

    return make


@pytest.fixture
def stages(bus_env):
    with FakeStages(bus_env) as fake:
        yield fake


async def wait_ready(client):
    for _ in range(100):
        if (await client.get("/readyz")).status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("gateway never became ready")


async def wait_stages_ready(client, *names):
    """Until each named stage is ready on the board (readyz stays 503 while another is missing)."""
    for _ in range(200):
        board = (await (await client.get("/api/stages")).json())["stages"]
        if all(board.get(name, {}).get("state") == "ready" for name in names):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{names} never became ready: {board}")


async def eventually(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def turn(client, audio=None, persona="wildlife_expert"):
    resp = await client.post(f"/upload?persona={persona}", data=audio or tone_wav(1.0),
                             headers={"Content-Type": "audio/wav"})
    assert resp.status == 200, await resp.text()
    session_id = (await resp.json())["session_id"]
    stream = await client.get(f"/stream/{session_id}")
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    return session_id, parse_sse(await stream.text())
