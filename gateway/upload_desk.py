"""POST /upload and the single-use upload id it answers with.

A recording is read and decoded within limits, then kept until GET /stream/<upload id> claims
it, once. The upload id is not the conversation: the conversation (the cookie here, `session` on
the bus) lasts many turns, while an upload id grants one stream. The JSON answer names it
`session_id`, the name clients have always read.

Also here: the conversation cookie, GET /api/config (the personas an upload may name) and
POST /api/clear. The gateway and the original flow (tools/original_flow) both serve these.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from gateway.conversations import Conversation, ConversationStore
from gateway.http import json_error, retry_later
from gateway.media import MediaError, decode_to_pcm
from gateway.settings import GatewaySettings
from gateway.uploads import read_upload
from services.personas import DEFAULT_PERSONA, PERSONAS

COOKIE = "s2s_conversation"
SHUTTING_DOWN = "The assistant is shutting down. Please try again in a moment."
BUSY = "The assistant is busy with other uploads. Please try again in a moment."
CLAIMED_KEPT = 10000  # claimed upload ids remembered, so a second claim is a 409, not a 404


@dataclass
class Upload:
    id: str  # the single-use upload id (the /stream/<id> path)
    conversation: str
    persona: str
    pcm: bytes
    client: str = ""
    created: float = field(default_factory=time.monotonic)


class UploadDesk:
    def __init__(self, settings: GatewaySettings, conversations: ConversationStore,
                 streaming: Callable[[str], int] = lambda client: 0,
                 accepted: Callable[[Upload, int, float], None] | None = None):
        self.settings = settings
        self.conversations = conversations
        self.streaming = streaming  # client address -> its turns streaming now
        self.accepted = accepted  # told of each upload kept: (upload, body bytes, decode seconds)
        self.uploads: dict[str, Upload] = {}  # upload id -> upload, until streamed or expired
        self.claimed: OrderedDict[str, None] = OrderedDict()  # streamed upload ids, for 409
        self.decoding: Counter[str] = Counter()  # client address -> uploads being read or decoded
        self.decode_slots = asyncio.Semaphore(settings.max_decodes)  # ffmpeg processes at once
        self.closed = False  # shutting down: no new uploads

    # --- the conversation cookie ---------------------------------------------------------------

    def conversation_of(self, request: web.Request) -> Conversation:
        return self.conversations.get_or_create(request.cookies.get(COOKIE), request.remote or "")

    @staticmethod
    def with_cookie(response: web.StreamResponse, conversation: Conversation) -> web.StreamResponse:
        response.set_cookie(COOKIE, conversation.id, httponly=True, samesite="Strict", path="/")
        return response

    async def config(self, request: web.Request) -> web.Response:
        personas = [{"key": p.key, "name": p.name, "voice": p.voice, "style": p.style} for p in PERSONAS.values()]
        return web.json_response({"personas": personas, "default_persona": DEFAULT_PERSONA})

    async def clear(self, request: web.Request) -> web.Response:
        # No conversation yet (no cookie, or an expired one): nothing to clear, and nothing is made.
        conversation = self.conversations.get(request.cookies.get(COOKIE))
        if conversation is not None:
            conversation.clear()
        return web.json_response({"cleared": True})

    # --- POST /upload --------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        persona = request.query.get("persona", DEFAULT_PERSONA)
        if persona not in PERSONAS:
            return json_error(400, f"Unknown persona {persona!r}.")
        if request.content_length is not None and request.content_length > self.settings.max_upload_bytes:
            return json_error(413, "The recording is too large.")
        if self.closed:
            return json_error(503, SHUTTING_DOWN)
        client = request.remote or ""
        self.expire()
        if self.turns_of(client) >= self.settings.max_turns_per_client:
            return retry_later(429, "Too many turns at once from this client: wait for one to finish.")
        # the same bounds for all clients together, so many addresses cannot do what one may not
        if (sum(self.decoding.values()) >= self.settings.max_uploads_in_flight
                or len(self.uploads) >= self.settings.max_pending_uploads):
            return retry_later(503, BUSY)
        self.decoding[client] += 1
        settings = self.settings
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                data = await read_upload(request, settings.max_upload_bytes)
            async with self.decode_slots:
                decode_started = time.monotonic()
                pcm = await decode_to_pcm(data, settings.max_audio_s, settings.decode_timeout_s,
                                          settings.decode_cpu_s, settings.decode_memory_mb * 1024 * 1024)
        except TimeoutError:
            # The rest of the body may never come: answer, then close the connection instead of
            # lingering to read it (aiohttp would wait 10 s more).
            response = json_error(408, f"The recording did not arrive within {settings.body_timeout_s:g} s.")
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()  # the transport flushes the answer, then closes
            return response
        except MediaError as exc:
            return json_error(exc.status, exc.message)
        finally:
            self.decoding[client] -= 1
            if not self.decoding[client]:
                del self.decoding[client]
        conversation = self.conversation_of(request)
        conversation.set_persona(persona)
        upload = Upload(secrets.token_urlsafe(24), conversation.id, persona, pcm, client)
        self.uploads[upload.id] = upload
        if self.accepted is not None:
            self.accepted(upload, len(data), time.monotonic() - decode_started)
        # `session_id`: the field's name since the first client; it holds the upload id
        return self.with_cookie(web.json_response({"session_id": upload.id}), conversation)

    def turns_of(self, client: str) -> int:
        """A client's turns at once: uploads being decoded, uploaded and not yet streamed, streaming."""
        return (self.decoding[client] + sum(u.client == client for u in self.uploads.values())
                + self.streaming(client))

    def expire(self) -> None:
        cutoff = time.monotonic() - self.settings.upload_ttl_s
        for upload_id in [k for k, u in self.uploads.items() if u.created < cutoff]:
            del self.uploads[upload_id]

    # --- GET /stream/<upload id> ---------------------------------------------------------------

    def claim(self, upload_id: str) -> tuple[Upload, Conversation] | web.Response:
        """The upload and its conversation, taken once; an error response when it cannot be streamed."""
        self.expire()
        upload = self.uploads.pop(upload_id, None)
        if upload is None:
            if upload_id in self.claimed:
                return json_error(409, "That recording was already streamed.")
            return json_error(404, "Unknown or expired session id.")  # clients know the upload id by that name
        self.claimed[upload_id] = None
        while len(self.claimed) > CLAIMED_KEPT:
            self.claimed.popitem(last=False)
        conversation = self.conversations.get(upload.conversation)
        if conversation is None:
            return json_error(404, "That conversation has expired.")
        return upload, conversation
