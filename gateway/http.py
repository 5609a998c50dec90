"""HTTP pieces every web front of s2s shares (the gateway, and the original flow in tools/):
JSON errors, the security headers, and the SSE writer."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from aiohttp import web

log = logging.getLogger("s2s.gateway")

CSP = ("default-src 'self'; media-src 'self' blob: data:; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def finite(value):
    """The value with NaN and infinities (which a stage may report, and which JSON cannot hold:
    a browser's JSON.parse rejects the whole body) replaced by null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def retry_later(status: int, message: str) -> web.Response:
    response = json_error(status, message)
    response.headers["Retry-After"] = "1"
    return response


async def write_or_abort(request: web.Request, write, timeout_s: float, what: str) -> bool:
    """Await `write`, a coroutine sending to the client: False if the client left, or stopped reading
    for timeout_s (the socket's buffers are full); then the connection is aborted, since a message
    may be half written and nothing more can follow it."""
    try:
        async with asyncio.timeout(timeout_s):
            await write
    except TimeoutError:
        log.warning("%s's client stopped reading for %g s: closing it", what, timeout_s)
        if request.transport is not None:
            request.transport.abort()
        return False
    except (ConnectionResetError, RuntimeError):
        return False
    return True


class SseWriter:
    """Server-Sent Events with ids and keep-alive comments; send() is False once the client left,
    or stopped reading: a write that cannot complete within write_timeout_s (the socket's buffers
    are full) closes the connection."""

    def __init__(self, request: web.Request, response: web.StreamResponse, write_timeout_s: float):
        self.request = request
        self.response = response
        self.write_timeout_s = write_timeout_s
        self.next_id = 0
        self.last_write = time.monotonic()

    @classmethod
    async def open(cls, request: web.Request, write_timeout_s: float) -> "SseWriter":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        return cls(request, response, write_timeout_s)

    async def _write(self, text: str) -> bool:
        if not await write_or_abort(self.request, self.response.write(text.encode()), self.write_timeout_s,
                                    "a stream"):
            return False
        self.last_write = time.monotonic()
        return True

    async def send(self, event: str, data: dict) -> bool:
        self.next_id += 1
        return await self._write(f"id: {self.next_id}\nevent: {event}\ndata: {json.dumps(finite(data))}\n\n")

    async def keepalive(self, every_s: float) -> bool:
        if time.monotonic() - self.last_write < every_s:
            return True
        return await self._write(": ping\n\n")


@web.middleware
async def json_errors(request: web.Request, handler):
    """A failure nobody foresaw is a 500 JSON like every other error, and its traceback is logged."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "The request failed inside the gateway.")


@web.middleware
async def security_headers(request: web.Request, handler):
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
