"""A hand-written OpenAI chat-completions server for the edge cases a real one will not produce on
demand (malformed events, an error mid-stream, a stall, a connection cut). It runs in a thread on
127.0.0.1 and records every request; how it answers is a script per path."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> dict:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def data(obj) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


class Answer:
    """What the handler does with one request: a status, a JSON body, or an event stream."""

    def __init__(self, status: int = 200, json_body=None, events: list[bytes] = (), delay_s: float = 0.0,
                 end: str = "close", content_type: str = "text/event-stream"):
        self.status, self.json_body, self.events, self.delay_s = status, json_body, list(events), delay_s
        self.end = end  # "close": the 0-length chunk ends it; "cut": the connection drops; "stall": it hangs
        self.content_type = content_type


class FakeOpenAI:
    """`answers[path]` is an Answer or a function (request body) -> Answer. `requests` records
    (method, path, headers, body); `hangups` records (events written, monotonic time) whenever the
    client left before the stream was over."""

    def __init__(self):
        self.answers: dict = {"/v1/models": Answer(json_body={"object": "list", "data": [{"id": "fake-model"}]})}
        self.requests: list[tuple[str, str, dict, object]] = []
        self.hangups: list[tuple[int, float]] = []
        self.stop_stall = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._serve(self, None)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake._serve(self, json.loads(raw) if raw else None)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop_stall.set()
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, handler: BaseHTTPRequestHandler, body) -> None:
        self.requests.append((handler.command, handler.path, dict(handler.headers), body))
        answer = self.answers.get(handler.path, Answer(status=404, json_body={"detail": "Not Found"}))
        if callable(answer):
            answer = answer(body)
        if answer.json_body is not None or answer.status != 200:
            payload = json.dumps(answer.json_body if answer.json_body is not None else {}).encode()
            handler.send_response(answer.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", answer.content_type)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        written = 0
        try:
            for event in answer.events:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                handler.wfile.flush()
                written += 1
                time.sleep(answer.delay_s)
            if answer.end == "stall":
                self.stop_stall.wait(30)
            if answer.end == "close":
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
            else:
                handler.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.hangups.append((written, time.monotonic()))
            handler.close_connection = True


def stream_of(words: list[str], done: bool = True, finish: bool = True) -> list[bytes]:
    """An event stream as vLLM writes it: a role chunk, one chunk per word, finish_reason, [DONE]."""
    events = [data(chunk(role="assistant"))] + [data(chunk(w)) for w in words]
    if finish:
        events.append(data(chunk(finish="stop")))
    if done:
        events.append(data("[DONE]"))
    return events
