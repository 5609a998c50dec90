"""An upload's body: the raw recording, or the audio file of a multipart form, read within limits.

The whole body is read first, within the size limit (the caller bounds the time), and only then
parsed: the multipart parser never reads from the network, so a preamble, a form field or a
boundary that never comes costs at most the size limit, and a malformed form is a 400.
"""

from __future__ import annotations

import asyncio

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

from gateway.media import MediaError

# A form's boundaries, part headers and small fields around the file: a body may exceed the
# recording limit by this, and the parts that are not the file may hold this much in all.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FORM_PARTS = 16
TOO_LARGE = "The recording is too large."


async def read_limited(read, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await read(65536):
        size += len(chunk)
        if size > limit:
            raise MediaError(413, TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: web.Request, limit: int) -> bytes:
    """The raw body, or the first file field of a multipart form, within `limit` bytes."""
    if not request.content_type.startswith("multipart/"):
        return await read_limited(request.content.read, limit)
    body = await read_limited(request.content.read, limit + FORM_OVERHEAD_BYTES)
    try:
        audio = await _form_audio(request.headers, body)
    except ValueError as exc:  # aiohttp's parser: no boundary, a boundary that never comes, a cut part
        raise MediaError(400, f"The form could not be read ({str(exc)[:100]}).") from None
    if len(audio) > limit:
        raise MediaError(413, TOO_LARGE)
    return audio


async def _form_audio(headers, body: bytes) -> bytes:
    stream = StreamReader(BaseProtocol(asyncio.get_running_loop()), len(body) + 1)
    stream.feed_data(body)
    stream.feed_eof()
    parts, fields = 0, 0
    async for part in MultipartReader(headers, stream):
        parts += 1
        if parts > MAX_FORM_PARTS or not isinstance(part, BodyPartReader):
            raise MediaError(400, "The form has too many parts, or nested forms.")
        if part.filename is not None or part.name in ("audio", "file"):
            return bytes(await part.read())
        fields += len(await part.read())
        if fields > FORM_OVERHEAD_BYTES:
            raise MediaError(413, "The form's fields besides the recording are too large.")
    raise MediaError(400, "The form holds no audio file.")
