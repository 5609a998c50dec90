"""Turns as the page runs them, for tests against the real product: upload, then the SSE stream,
each event timed; and the checks every turn must pass (one ending, chunks in order, once)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.product import Product
from tests.sse import parse_sse

ENDINGS = ("done", "error")


class Stream:
    """One turn as the page runs it: upload, then read the SSE stream, noting when each event came.
    Each stream is its own browser unless given one: a new question in a conversation replaces
    the answer in progress."""

    def __init__(self, url: str, http: aiohttp.ClientSession | None = None):
        self.url = url
        self.own_http = http is None
        self.http = http or new_session()
        self.events: list[tuple[str, dict]] = []
        self.times: list[float] = []
        self.task: asyncio.Task | None = None
        self.session_id = ""

    async def start(self, wav: bytes) -> "Stream":
        return (await self.upload(wav)).open()

    async def upload(self, wav: bytes) -> "Stream":
        async with self.http.post(f"{self.url}/upload?persona=wildlife_expert", data=wav,
                                  headers={"Content-Type": "audio/wav"}) as resp:
            assert resp.status == 200, await resp.text()
            self.session_id = (await resp.json())["session_id"]
        return self

    def open(self) -> "Stream":
        self.task = asyncio.create_task(self._read(self.session_id))
        return self

    async def _read(self, session_id: str) -> None:
        try:
            async with self.http.get(f"{self.url}/stream/{session_id}") as resp:
                buffer = ""
                async for chunk in resp.content.iter_any():
                    buffer += chunk.decode()
                    *blocks, buffer = buffer.split("\n\n")
                    for block in blocks:
                        for event in parse_sse(block + "\n\n"):
                            self.events.append(event)
                            self.times.append(time.monotonic())
        finally:
            if self.own_http:
                await self.http.close()

    def saw(self, name: str) -> bool:
        return any(n == name for n, _ in self.events)

    @property
    def ending(self) -> tuple[str, dict]:
        return self.events[-1]

    @property
    def ended_at(self) -> float:
        return self.times[-1]


def new_session() -> aiohttp.ClientSession:
    jar = aiohttp.CookieJar(unsafe=True)  # keep the conversation cookie on 127.0.0.1
    return aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=240))


def assert_ends_once(stream: Stream, failed_stage: str | None = None) -> None:
    """One ending, last; chunks numbered 0..n-1 with no repeat; an error names the stage."""
    names = [n for n, _ in stream.events]
    assert sum(n in ENDINGS for n in names) == 1 and names[-1] in ENDINGS, names
    chunks = [d["index"] for n, d in stream.events if n == "chunk"]
    assert chunks == list(range(len(chunks))), chunks
    name, data = stream.ending
    if name == "done":
        assert names[0] == "transcript" and data["chunks"] == len(chunks)
        spoken = " ".join(d["text"] for n, d in stream.events if n == "chunk" and d["text"])
        assert spoken == data["full_text"]  # every sentence is this turn's own, each once
    elif failed_stage is not None:
        assert data.get("stage") == failed_stage, data


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def back_ready(product: Product, stage: str, old_pid: int, timeout: float = 120) -> float:
    """When the stage is ready again in a new process (a ready worker's pid in /api/stages)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = await asyncio.to_thread(product.get_json, "/api/stages")
        info = body["stages"][stage]
        ready = {w["pid"] for w in info["workers"] if w["state"] in ("ready", "busy")}
        if info["state"] in ("ready", "busy") and ready - {0, old_pid}:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{stage} did not come back: {body}")
