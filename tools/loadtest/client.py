"""One turn against a running gateway, exactly as the browser page does it.

POST /upload?persona=KEY with the recording as the body -> {"session_id": the single-use upload
id}; then GET /stream/<upload id> (Server-Sent Events: transcript, chunk..., done | error).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
import wave
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import quote

import aiohttp

from proto import events
from services.llm.limits import repeated_sentences, split_sentences

CONTENT_TYPES = {".wav": "audio/wav", ".ogg": "audio/ogg", ".webm": "audio/webm"}
STAGE_FIELDS = tuple(events.STAGE_TIMINGS)  # done.timing's stage keys, each a TurnResult field
# error kinds: http_4xx / http_5xx (error_status), sse_error (error_stage), timeout, connection,
# deadline (the run's --max-seconds ended the turn), bad_event (an event the page could not use)
# One SSE line carries a whole sentence's WAV in base64 (64 kB per second of audio): far past
# aiohttp's default 512 kB line limit for a long sentence.
MAX_EVENT_BYTES = 32 * 1024 * 1024
ERROR_KINDS = ("http_4xx", "http_5xx", "sse_error", "timeout", "connection", "deadline", "bad_event")


@dataclass(frozen=True)
class AudioInput:
    name: str
    data: bytes
    content_type: str


def content_type_for(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


def load_inputs(paths: list[str | Path]) -> list[AudioInput]:
    """Files as given (any extension), and the .wav/.ogg/.webm files of each folder, sorted."""
    inputs: list[AudioInput] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CONTENT_TYPES)
            if not files:
                raise ValueError(f"{path}: no .wav, .ogg or .webm files in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise ValueError(f"{path}: no such file or folder")
        for f in files:
            inputs.append(AudioInput(f.name, f.read_bytes(), content_type_for(f)))
    if not inputs:
        raise ValueError("no input audio given")
    return inputs


def wav_seconds(b64: str) -> float:
    """Duration of one base64 WAV chunk; ValueError when it is not a playable WAV."""
    try:
        with wave.open(io.BytesIO(base64.b64decode(b64, validate=True))) as w:
            return w.getnframes() / float(w.getframerate())
    except (wave.Error, EOFError, binascii.Error, ZeroDivisionError) as exc:
        raise ValueError(f"chunk is not a valid WAV: {exc}") from None


@dataclass
class TurnResult:
    turn: int = 0  # sequence number within the run
    user: int = 0  # simulated user (one cookie jar each)
    input: str = ""
    started_s: float = 0.0  # seconds since the run started
    ok: bool = False
    error_kind: str | None = None
    error_status: int | None = None
    error_stage: str | None = None
    error_message: str | None = None
    upload_s: float | None = None  # request start -> upload id
    transcript_s: float | None = None  # end of upload -> transcript
    ttfa_s: float | None = None  # end of upload -> first chunk
    done_s: float | None = None  # end of upload -> done
    asr: float | None = None  # stage compute times from done.timing
    llm: float | None = None
    llm_first_sentence: float | None = None
    tts: float | None = None
    tts_first_chunk: float | None = None
    first_audio: float | None = None  # the gateway's own view, from done.timing
    total: float | None = None
    chunks: int = 0
    audio_s: float = 0.0
    overhead_s: float | None = None  # ttfa_s - (asr + llm_first_sentence + tts_first_chunk)
    transcript: str | None = None
    reply: str | None = None  # done.full_text, the spoken reply
    end_reason: str | None = None  # why the LLM ended the reply (done.end_reason; "" from an older gateway)
    sentences: int | None = None  # sentences of the reply, by the LLM stage's reply rules
    repeated_sentences: int | None = None  # of them, repeats (or near copies) of an earlier one

    @property
    def error_label(self) -> str | None:
        """kind plus its detail, e.g. 'http_4xx 415', 'sse_error tts', 'timeout'."""
        if self.error_kind is None:
            return None
        detail = self.error_status if self.error_status is not None else self.error_stage
        return f"{self.error_kind} {detail}" if detail is not None else self.error_kind

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def fail(self, kind: str, message: str | None = None, status: int | None = None,
             stage: str | None = None) -> TurnResult:
        if self.error_kind is None:  # the first error wins
            self.ok = False
            self.error_kind, self.error_message, self.error_status, self.error_stage = kind, message, status, stage
        return self

    def finish_overhead(self) -> None:
        parts = (self.ttfa_s, self.asr, self.llm_first_sentence, self.tts_first_chunk)
        if all(p is not None for p in parts):
            self.overhead_s = self.ttfa_s - (self.asr + self.llm_first_sentence + self.tts_first_chunk)


def _http_kind(status: int) -> str:
    return "http_5xx" if status >= 500 else "http_4xx"


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    try:
        body = await resp.text()
        return json.loads(body).get("error", body)[:300]
    except Exception:  # noqa: BLE001 - only a message for the report
        return resp.reason or ""


async def iter_sse(content: aiohttp.StreamReader):
    """(event, data) pairs as they arrive; keep-alive comments are skipped."""
    name, data = "message", []
    while True:
        raw = await content.readline(max_line_length=MAX_EVENT_BYTES)
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def _run(session: aiohttp.ClientSession, base_url: str, audio: AudioInput, persona: str,
               result: TurnResult) -> None:
    t0 = time.perf_counter()
    async with session.post(f"{base_url}/upload?persona={quote(persona)}", data=audio.data,
                            headers={"Content-Type": audio.content_type}) as resp:
        if resp.status != 200:
            result.fail(_http_kind(resp.status), await _error_text(resp), status=resp.status)
            return
        upload_id = (await resp.json())["session_id"]
    uploaded = time.perf_counter()
    result.upload_s = uploaded - t0
    async with session.get(f"{base_url}/stream/{upload_id}") as resp:
        if resp.status != 200:
            result.fail(_http_kind(resp.status), await _error_text(resp), status=resp.status)
            return
        async for event, raw in iter_sse(resp.content):
            now = time.perf_counter() - uploaded
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                result.fail("bad_event", f"{event} event with invalid JSON: {raw[:100]!r}")
                return
            if event == events.TRANSCRIPT:
                result.transcript_s = now
                result.transcript = data.get("text")
            elif event == events.CHUNK:
                if result.ttfa_s is None:
                    result.ttfa_s = now
                result.chunks += 1
                try:
                    result.audio_s += wav_seconds(data.get("b64", ""))
                except ValueError as exc:
                    result.fail("bad_event", str(exc))
                    return
            elif event == events.DONE:
                result.done_s = now
                timing = data.get("timing") or {}
                for key in (*STAGE_FIELDS, *events.TURN_TIMINGS):
                    if isinstance(timing.get(key), (int, float)):
                        setattr(result, key, float(timing[key]))
                result.reply = data.get("full_text") or ""
                result.end_reason = data.get("end_reason") or ""
                result.sentences = len(split_sentences(result.reply))
                result.repeated_sentences = repeated_sentences(result.reply)
                result.ok = True
                return
            elif event == events.ERROR:
                result.fail("sse_error", data.get("message"), stage=data.get("stage"))
                return
    result.fail("connection", "the stream ended before done or error")


async def run_turn(session: aiohttp.ClientSession, base_url: str, audio: AudioInput, persona: str = "wildlife_expert",
                   timeout: float = 120.0, result: TurnResult | None = None,
                   timeout_kind: str = "timeout") -> TurnResult:
    """One full turn; never raises for turn failures, which are recorded in the result."""
    result = result or TurnResult(input=audio.name)
    try:
        await asyncio.wait_for(_run(session, base_url.rstrip("/"), audio, persona, result), timeout)
    except asyncio.TimeoutError:
        result.fail(timeout_kind, f"no done within {timeout:.1f} s")
    except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError, OSError, ValueError,
            KeyError) as exc:
        result.fail("connection", f"{type(exc).__name__}: {exc}"[:300])
    result.audio_s = round(result.audio_s, 6)
    result.finish_overhead()
    return result


def new_user_session(timeout: float = 120.0) -> aiohttp.ClientSession:
    """One simulated user: its own cookie jar (so its conversation stays its own)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, timeout)))


async def check_health(base_url: str, timeout: float = 5.0) -> str | None:
    """None when GET /healthz answers 200, else why not."""
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                    session.get(f"{base_url.rstrip('/')}/healthz") as resp):
            if resp.status != 200:
                return f"GET /healthz answered {resp.status}"
            return None
    except asyncio.TimeoutError:
        return f"GET /healthz did not answer within {timeout:.0f} s"
    except (aiohttp.ClientError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
