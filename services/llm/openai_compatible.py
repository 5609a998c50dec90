"""The `openai-compatible` LLM backend: replies streamed from a server that speaks the OpenAI
chat-completions API (vLLM, SGLang, llama.cpp's llama-server, Ollama, `transformers serve`), so
the model can run on another machine, or on many behind one address.

Standard library only (http.client). Each reply is one POST /chat/completions with "stream":
true, read line by line as Server-Sent Events, so every piece reaches the stage's sentence
chunker the moment it arrives. The stage sees what it sees from the transformers backend:
messages in (the persona's system prompt and the history), text pieces out. A cancelled turn, or a
stage that stops reading, closes the connection, and the server stops generating that reply.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Callable, Generator, Iterator
from urllib.parse import urlsplit

from proto import MAX_NEW_TOKENS
from services.models.remote import (BASE_URL, CONNECT_TIMEOUT_S, DEFAULT_BASE_URL, NAME, READ_TIMEOUT_S,
                                    SERVER_WAIT_S, TEMPERATURE, base_url_of, parse_base_url)
from services.models.resolve import plan_remote_llm
from services.runtime.backend import Backend
from services.runtime.errors import ConfigError
from services.runtime.net import is_loopback_host

log = logging.getLogger("s2s.llm.remote")

MAX_LINE = 1 << 20  # one SSE line (one chunk's JSON) longer than this is not a chat stream
MAX_BODY = 1 << 20  # how much of a JSON answer (a model list, an error) is read


class RemoteLlmError(RuntimeError):
    """One reply failed at the server or on the way back: that turn's error, never the worker's."""


def read_api_key(path: str) -> str:
    """The key in `path` (one line). Like a CURVE secret key, the file must be private (0600)."""
    where = f"S2S_LLM_API_KEY_FILE={path}"
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where} is not a file")
        if mode & 0o077:
            raise ConfigError(f"{where} can be read by others (mode {stat.S_IMODE(mode):04o}); "
                              f"run `chmod 600 {file}`")
        key = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not a text file") from None
    if not key or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(f"{where} must hold the key alone, on one line")  # never the key itself
    return key


def _error_message(body: bytes) -> str:
    """The message of an error answer: OpenAI's {"error": {"message"}}, vLLM's {"message"},
    FastAPI's {"detail"}, a bare {"error": "..."}, or the start of whatever text it is."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty answer)"
    found = _chunk_error(data) if isinstance(data, dict) else None
    if found is None and isinstance(data, dict) and "detail" in data:
        found = data["detail"]
    return str(found if found is not None else text)[:300]


def _chunk_error(data: dict):
    """The error a stream chunk (or an error answer) carries, else None."""
    error = data.get("error")
    if error:
        return error.get("message") or error if isinstance(error, dict) else error
    if data.get("object") == "error":  # vLLM's ErrorResponse
        return data.get("message") or "error"
    return None


def _read_json(response: http.client.HTTPResponse):
    return json.loads(response.read(MAX_BODY).decode("utf-8"))


def sse_events(response) -> Iterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Event in a readable byte stream, as each one completes.
    Comments (keep-alives) are skipped; an event cut off by the end of the stream is dropped."""
    event, data = "", []
    while True:
        raw = response.readline(MAX_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE:
            raise RemoteLlmError(f"a line of the event stream is longer than {MAX_LINE} bytes")
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise RemoteLlmError(f"the event stream is not UTF-8: {raw[:80]!r}") from None
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value


class OpenAICompatibleBackend(Backend):
    """Chat completions streamed from an OpenAI-compatible server."""

    name = NAME
    # Each reply is its own HTTP request: the server batches replies in flight (S2S_LLM_PARALLEL).
    thread_safe = True

    def __init__(
        self,
        *,
        model: str,
        base_url: str = BASE_URL.default,
        api_key_file: str | None = None,
        temperature: float = TEMPERATURE.default,
        connect_timeout_s: float = CONNECT_TIMEOUT_S.default,
        read_timeout_s: float = READ_TIMEOUT_S.default,
        wait_s: float = SERVER_WAIT_S.default,
    ):
        # No I/O here: load() reaches the server and reads the key.
        self.scheme, self.host, self.port, self.path = parse_base_url(base_url)
        self.base_url = base_url_of(base_url)
        self.model = self.model_label = model
        self.api_key_file = api_key_file
        self.temperature = temperature
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.wait_s = wait_s
        self.device = f"remote: {urlsplit(self.base_url).netloc}"
        self._auth: dict[str, str] = {}

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "model": self.model, "device": self.device}

    # --- load ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read the key, then check that the server answers and serves the model (GET /models)."""
        if self.api_key_file:
            self._auth = {"Authorization": f"Bearer {read_api_key(self.api_key_file)}"}
            if self.scheme == "http" and not is_loopback_host(self.host):
                log.warning("the LLM API key goes to %s over plain http: anyone on the path can read it "
                            "(use https:// or a private network)", self.base_url)
        served = self._served_models()
        if not any(self._is_model(served_id) for served_id in served):
            listed = ", ".join(repr(m) for m in served[:10]) + (" ..." if len(served) > 10 else "")
            raise ConfigError(f"the LLM server at {self.base_url} does not serve {self.model!r} "
                              f"(S2S_LLM_MODEL); it serves: {listed or 'no model'}")
        log.info("the LLM server at %s serves %s", self.base_url, self.model)

    def _is_model(self, served_id: str) -> bool:
        # Ollama lists "name:latest" for a model asked for as "name".
        return served_id == self.model or (":" not in self.model and served_id == f"{self.model}:latest")

    def _served_models(self) -> list[str]:
        """The ids GET /models lists; waits up to wait_s for a server that is down or starting."""
        deadline = time.monotonic() + self.wait_s
        url = f"{self.base_url}/models"
        while True:
            try:
                conn, response = self._open("GET", "/models")
                try:
                    status = response.status
                    body = _read_json(response) if status == 200 else response.read(MAX_BODY)
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                problem = f"cannot reach the LLM server at {self.base_url} ({_reason(exc)})"
            except ValueError:
                raise ConfigError(f"GET {url} did not answer JSON: is S2S_LLM_BASE_URL the API root "
                                  f"of an OpenAI-compatible server, such as {DEFAULT_BASE_URL}?") from None
            else:
                if status == 200:
                    data = body.get("data") if isinstance(body, dict) else None
                    if not isinstance(data, list):
                        raise ConfigError(f"GET {url} did not answer a model list")
                    return [str(m.get("id")) for m in data if isinstance(m, dict)]
                message = _error_message(body)
                if status in (401, 403):
                    raise ConfigError(f"the LLM server at {self.base_url} refused the request ({status}: "
                                      f"{message}): check S2S_LLM_API_KEY_FILE")
                if status == 404:
                    raise ConfigError(f"GET {url} answered 404: S2S_LLM_BASE_URL must be the API root, "
                                      f"such as {DEFAULT_BASE_URL}")
                if status not in (502, 503, 504):
                    raise ConfigError(f"GET {url} answered {status}: {message}")
                problem = f"the LLM server at {self.base_url} is not ready ({status}: {message})"
            if time.monotonic() >= deadline:
                waited = f" after waiting {self.wait_s:g} s (S2S_LLM_SERVER_WAIT_S)" if self.wait_s else ""
                raise ConfigError(f"{problem}{waited}: start it, or set S2S_LLM_BASE_URL")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    # --- one reply ----------------------------------------------------------------------

    def _open(self, method: str, path: str, body: bytes | None = None,
              accept: str = "application/json") -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout_s,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout_s)
        try:
            conn.connect()
            conn.sock.settimeout(self.read_timeout_s)  # from here on: the longest silence allowed
            headers = {"Accept": accept, **self._auth}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, self.path + path, body=body, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def stream(
        self,
        messages: list[dict],
        max_new_tokens: int = MAX_NEW_TOKENS,
        should_stop: Callable[[], bool] = lambda: False,
        until: Callable[[str], bool] = lambda piece: False,
    ) -> Generator[str, None, str]:
        """Yield the reply's text pieces as the server sends them. A stop (should_stop, closing
        the generator, or `until(piece)` saying that piece is the last) ends the reply within one
        piece and closes the connection, so the server stops generating it. Returns why the reply
        ended: eos, length (the server's max_tokens) or stopped."""
        body = json.dumps({"model": self.model, "messages": messages, "stream": True,
                           "max_tokens": max_new_tokens, "temperature": self.temperature}).encode()
        if should_stop():
            return "stopped"
        try:
            conn, response = self._open("POST", "/chat/completions", body, accept="text/event-stream")
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteLlmError(f"cannot reach the LLM server at {self.base_url} ({_reason(exc)})") from None
        pieces, finished, reason = 0, False, "eos"
        try:
            if response.status != 200:
                message = _error_message(response.read(MAX_BODY))
                raise RemoteLlmError(f"the LLM server at {self.base_url} answered {response.status}: {message}")
            content_type = response.getheader("Content-Type") or "no content type"
            if not content_type.startswith("text/event-stream"):
                raise RemoteLlmError(f"the LLM server at {self.base_url} answered {content_type}, "
                                     "not an event stream")
            for event, data in sse_events(response):
                if data.strip() == "[DONE]":
                    finished = True
                    return reason
                try:
                    chunk = json.loads(data)
                except ValueError:
                    chunk = None
                if not isinstance(chunk, dict):
                    raise RemoteLlmError(f"the LLM server at {self.base_url} sent a malformed event: {data[:200]!r}")
                error = _chunk_error(chunk) or (data if event == "error" else None)
                if error:
                    raise RemoteLlmError(f"the LLM server at {self.base_url} failed mid-reply: {error}")
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    if choice.get("finish_reason"):
                        finished = True
                        reason = "length" if choice["finish_reason"] == "length" else "eos"
                    delta = choice.get("delta")
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    if piece and isinstance(piece, str):
                        if should_stop():
                            return "stopped"
                        pieces += 1
                        last = until(piece)
                        yield piece
                        if last or should_stop():
                            return "stopped"
            if not finished:
                raise RemoteLlmError(f"the LLM server at {self.base_url} ended the stream mid-reply "
                                     f"(after {pieces} pieces)")
            return reason
        except (OSError, http.client.HTTPException) as exc:
            if finished:
                return reason  # the reply was complete; only the end of the stream was lost
            if isinstance(exc, TimeoutError):
                raise RemoteLlmError(f"the LLM server at {self.base_url} sent nothing for "
                                     f"{self.read_timeout_s:g} s (S2S_LLM_READ_TIMEOUT_S)") from None
            raise RemoteLlmError(f"lost the LLM server at {self.base_url} mid-reply after {pieces} pieces "
                                 f"({_reason(exc)})") from None
        finally:
            _hang_up(conn, response)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _hang_up(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    """Close the connection at once, so the server sees the client leave and stops generating
    (the response's file object would otherwise keep the socket open)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    response.close()
    conn.close()


def stage_info(settings):
    """What the settings ask for, before load(): backend, model, device "remote: <host>"."""
    from services.runtime.worker import StageInfo

    planned = plan_remote_llm(settings)
    return StageInfo(NAME, planned.model, OpenAICompatibleBackend(**planned.options).device,
                     planned.source, planned.reason)
