"""An HTTP front for OriginalPipeline with the gateway's own API (POST /upload, GET /stream/<id> as
SSE), so s2s-loadtest drives both flows with the same client, files and measurements."""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import web

from gateway.conversations import ConversationStore
from gateway.http import SseWriter, security_headers
from gateway.settings import GatewaySettings
from gateway.upload_desk import UploadDesk
from proto import events
from tools.original_flow.pipeline import OriginalPipeline

log = logging.getLogger("s2s.original")
PIPELINE = web.AppKey("pipeline", OriginalPipeline)


class OriginalFlowServer:
    """The gateway's uploads, conversations and SSE (its upload desk and SSE writer, no bus: the
    models live in this process); the turn itself runs in-process under one lock."""

    def __init__(self, settings: GatewaySettings, pipeline: OriginalPipeline):
        self.settings = settings
        self.pipeline = pipeline
        conversations = ConversationStore(settings.max_conversations, settings.max_conversations_per_client)
        self.desk = UploadDesk(settings, conversations)  # a client's turns at once: its uploads

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        claimed = self.desk.claim(request.match_info["upload_id"])
        if isinstance(claimed, web.Response):
            return claimed
        upload, conversation = claimed
        sse = await SseWriter.open(request, self.settings.sse_write_timeout_s)
        loop = asyncio.get_running_loop()
        queued: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()

        def produce() -> None:  # the original's Flask request thread
            try:
                for event in self.pipeline.run(upload.pcm, upload.persona, list(conversation.history), gone.is_set):
                    loop.call_soon_threadsafe(queued.put_nowait, event)
                    if gone.is_set():
                        break
            except Exception as exc:  # reported to the client, and logged with its traceback
                log.exception("turn failed")
                loop.call_soon_threadsafe(queued.put_nowait, events.error(f"The turn failed: {exc}", "stage_error"))
            loop.call_soon_threadsafe(queued.put_nowait, None)

        threading.Thread(target=produce, name="original-turn", daemon=True).start()
        user_text = ""
        try:
            while (item := await queued.get()) is not None:
                event, data = item
                if event == events.TRANSCRIPT:
                    user_text = data["text"]
                elif event == events.DONE:
                    conversation.remember(user_text, data["full_text"])
                if not await sse.send(event, data):
                    break
        finally:
            gone.set()  # the client left (or the turn ended): the thread stops at its next check
        return sse.response


def create_app(pipeline: OriginalPipeline, settings: GatewaySettings | None = None) -> web.Application:
    settings = settings or GatewaySettings()
    server = OriginalFlowServer(settings, pipeline)
    app = web.Application(middlewares=[security_headers], client_max_size=settings.max_upload_bytes + 65536)
    app[PIPELINE] = pipeline
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/api/config", server.desk.config)
    app.router.add_post("/api/clear", server.desk.clear)
    app.router.add_post("/upload", server.desk.upload)
    app.router.add_get("/stream/{upload_id}", server.stream)
    return app
