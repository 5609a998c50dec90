"""s2s-loadtest --realtime: N conversations over /v1/realtime, each speaking its questions at
real-time pace as a microphone would (100 ms of 24 kHz PCM16 every 100 ms, silence between
questions), and what a person would feel, per turn:

- speech_end_to_first_audio_s: from the moment the question's last voiced sample was sent to
  the first response.output_audio.delta;
- speech_end_to_transcript_s: to conversation.item.input_audio_transcription.completed;
- endpoint_to_transcript_s: from input_audio_buffer.speech_stopped (the turn detector's end,
  after its silence) to that transcript: what recognition adds once the turn has ended;
- false_endpoints: speech_stopped events before the question's speech ended (a turn cut off
  mid-question);
- barge_in_to_last_audio_s (--barge-in): the next question starts as soon as the answer's first
  audio arrives; from that question's first voiced sample to the last audio byte of the answer
  it interrupts.

The speech boundaries of each input come from its own samples (the first and last above 2% of
full scale), so inputs should be clean recordings with silence around the speech.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from tools.loadtest.client import AudioInput
from tools.loadtest.report import _pyplot, stats

RATE = 24000
CHUNK_S = 0.1
VOICED = 0.02 * 32768  # a sample this loud is speech (clean recordings)
LATENCIES = ("speech_end_to_first_audio_s", "speech_end_to_transcript_s", "endpoint_to_transcript_s",
             "barge_in_to_last_audio_s")


@dataclass(frozen=True)
class Question:
    name: str
    pcm: bytes  # 24 kHz PCM16
    speech_start_s: float
    speech_end_s: float


def question_of(audio: AudioInput) -> Question:
    """A .wav input at 24 kHz (any rate and width in; channels mixed down) and its speech span."""
    import io

    if not audio.name.lower().endswith(".wav"):
        raise ValueError(f"{audio.name}: --realtime streams .wav files")
    with wave.open(io.BytesIO(audio.data)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{audio.name}: 16-bit WAV expected")
    samples = np.frombuffer(raw, "<i2").astype(np.float32).reshape(-1, channels).mean(axis=1)
    samples = np.interp(np.arange(0, len(samples), rate / RATE), np.arange(len(samples)), samples)
    voiced = np.flatnonzero(np.abs(samples) > VOICED)
    if not len(voiced):
        raise ValueError(f"{audio.name}: no speech found")
    return Question(audio.name, samples.astype("<i2").tobytes(), voiced[0] / RATE, (voiced[-1] + 1) / RATE)


@dataclass
class RealtimeTurn:
    session: int = 0
    turn: int = 0
    input: str = ""
    ok: bool = False
    error: str | None = None
    transcript: str = ""
    speech_end_to_first_audio_s: float | None = None
    speech_end_to_transcript_s: float | None = None
    endpoint_to_transcript_s: float | None = None
    barge_in_to_last_audio_s: float | None = None
    false_endpoints: int = 0
    status: str = ""  # the response's: completed | cancelled | failed
    audio_s: float = 0.0  # of the answer received


@dataclass
class _Listener:
    """What the socket said, with arrival times, read by one task while another speaks."""

    events: list = field(default_factory=list)  # (monotonic time, event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def first(self, kind: str, after: int = 0, where=lambda e: True, since: float = 0.0):
        for t, event in self.events[after:]:
            if event.get("type") == kind and where(event) and t >= since:
                return t, event
        return None

    async def wait(self, kind: str, after: int, deadline: float, where=lambda e: True, since: float = 0.0):
        while (found := self.first(kind, after, where, since)) is None:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.001, deadline - time.monotonic()))
        return found


class Speaker:
    """One microphone: sends 100 ms of audio every 100 ms, the question when there is one,
    silence otherwise; notes when each question's speech starts and ends on the wire."""

    def __init__(self, ws):
        self.ws = ws
        self.queue: list[tuple[bytes, Question | None]] = []
        self.marks: dict[int, dict[str, float]] = {}  # id(question turn) -> start/end send times
        self.t0 = time.monotonic()
        self.sent_s = 0.0

    def say(self, question: Question, mark: dict) -> None:
        step = int(RATE * CHUNK_S) * 2
        for start in range(0, len(question.pcm), step):
            chunk = question.pcm[start:start + step]
            begin_s, end_s = start / (2 * RATE), (start + len(chunk)) / (2 * RATE)
            # how long before the chunk's end each boundary in it was spoken
            events = {name: end_s - at for name, at in (("speech_start", question.speech_start_s),
                                                         ("speech_end", question.speech_end_s))
                      if begin_s <= at < end_s or (name == "speech_end" and begin_s < at <= end_s)}
            self.queue.append((chunk, (mark, events)))

    async def run(self) -> None:
        silence = bytes(int(RATE * CHUNK_S) * 2)
        while not self.ws.closed:
            chunk, marks = self.queue.pop(0) if self.queue else (silence, None)
            self.sent_s += len(chunk) / (2 * RATE)
            # a microphone hands over a chunk once it has been recorded: at its end
            await asyncio.sleep(max(0.0, self.t0 + self.sent_s - time.monotonic()))
            await self.ws.send_json({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
            if marks is not None:
                mark, events = marks
                sent = time.monotonic()
                for name, before_end in events.items():  # when that sample was spoken
                    mark[name] = sent - before_end


async def run_session(url: str, index: int, questions: list[Question], turns: int, barge_in: bool,
                      turn_detection: dict, turn_timeout: float, results: list[RealtimeTurn]) -> None:
    """One conversation; each turn's result is appended to `results` as it starts (and filled in as
    it goes), so a run cut short by its time limit keeps every turn it had."""
    ws_url = url.replace("http", "ws", 1) + "/v1/realtime"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        listener = _Listener()

        async def listen():
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                listener.events.append((time.monotonic(), json.loads(message.data)))
                listener.changed.set()

        reader = asyncio.create_task(listen())
        await ws.send_json({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": turn_detection}}}})
        speaker = Speaker(ws)
        mouth = asyncio.create_task(speaker.run())
        try:
            pending_mark: dict | None = None  # a barge-in question already being spoken
            for number in range(turns):
                question = questions[(index + number) % len(questions)]
                result = RealtimeTurn(session=index, turn=number, input=question.name)
                results.append(result)
                mark = pending_mark or {}
                if pending_mark is None:
                    speaker.say(question, mark)
                pending_mark = None
                try:
                    pending_mark = await _one_turn(listener, speaker, mark, result, questions, index, number,
                                                   barge_in and number + 1 < turns, turn_timeout)
                except asyncio.TimeoutError:
                    result.error = "timeout"
                except asyncio.CancelledError:
                    result.error = "deadline"  # the run's --max-seconds
                    raise
        finally:
            mouth.cancel()
            reader.cancel()


async def _one_turn(listener: _Listener, speaker: Speaker, mark: dict, result: RealtimeTurn, questions,
                    index: int, number: int, barge_in: bool, turn_timeout: float) -> dict | None:
    """One question to its answer's end; returns the mark of the next question when it barged in."""
    deadline = time.monotonic() + turn_timeout
    seen = len(listener.events)
    while "speech_end" not in mark:
        await asyncio.sleep(0.02)
        if time.monotonic() > deadline:
            raise asyncio.TimeoutError
    speech_end = mark["speech_end"]
    t_stopped, stopped = await listener.wait("input_audio_buffer.speech_stopped", seen, deadline, since=speech_end)
    # a speech_stopped that came before the question's speech ended cut it short
    result.false_endpoints = sum(1 for t, e in listener.events[seen:]
                                 if e.get("type") == "input_audio_buffer.speech_stopped" and t < speech_end)
    item = stopped["item_id"]
    t_transcript, event = await listener.wait("conversation.item.input_audio_transcription.completed", seen,
                                              deadline, lambda e: e.get("item_id") == item)
    result.transcript = event.get("transcript", "")
    result.speech_end_to_transcript_s = round(t_transcript - speech_end, 4)
    result.endpoint_to_transcript_s = round(t_transcript - t_stopped, 4)
    _, created = await listener.wait("response.created", seen, deadline, since=t_transcript)
    response_id = created["response"]["id"]
    own = lambda e: e.get("response_id") == response_id or e.get("response", {}).get("id") == response_id  # noqa: E731
    t_audio, _ = await listener.wait("response.output_audio.delta", seen, deadline, own)
    result.speech_end_to_first_audio_s = round(t_audio - speech_end, 4)
    next_mark = None
    if barge_in:
        next_mark = {}
        speaker.say(questions[(index + number + 1) % len(questions)], next_mark)
    _, done = await listener.wait("response.done", seen, deadline, own)
    response = done["response"]
    result.status = response.get("status", "")
    deltas = [(t, e) for t, e in listener.events[seen:] if e.get("type") == "response.output_audio.delta" and own(e)]
    result.audio_s = round(sum(len(base64.b64decode(e["delta"])) for _, e in deltas) / (2 * RATE), 3)
    if barge_in:
        while "speech_start" not in next_mark and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if result.status == "cancelled" and "speech_start" in next_mark:
            # 0: no audio of the answer arrived after the interruption began
            result.barge_in_to_last_audio_s = round(max(0.0, deltas[-1][0] - next_mark["speech_start"]), 4)
    result.ok = result.status == "completed" or (barge_in and result.status == "cancelled")
    if not result.ok:
        details = response.get("status_details") or {}
        result.error = f"{result.status}: {(details.get('error') or {}).get('message') or details.get('reason')}"
    return next_mark


async def run_realtime(url: str, inputs: list[AudioInput], sessions: int, turns: int, barge_in: bool,
                       turn_detection: dict, turn_timeout: float, max_seconds: float) -> tuple[list[RealtimeTurn], float]:
    """`turns` turns in each of `sessions` conversations at once."""
    questions = [question_of(i) for i in inputs]
    started = time.monotonic()
    results: list[RealtimeTurn] = []
    runs = [asyncio.create_task(run_session(url, i, questions, turns, barge_in, turn_detection, turn_timeout, results))
            for i in range(sessions)]
    done, pending = await asyncio.wait(runs, timeout=max_seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a session that failed outright (e.g. could not connect) is an error, not a quiet gap
    return sorted(results, key=lambda t: (t.session, t.turn)), time.monotonic() - started


def summarize_realtime(turns: list[RealtimeTurn], wall_s: float, config: dict) -> dict:
    return {
        "config": config, "turns": len(turns), "ok": sum(t.ok for t in turns), "wall_s": round(wall_s, 3),
        "errors": [t.error for t in turns if t.error],
        "false_endpoints": sum(t.false_endpoints for t in turns),
        **{name: stats([getattr(t, name) for t in turns]) for name in LATENCIES},
        "p90": {name: _p90([getattr(t, name) for t in turns]) for name in LATENCIES},
    }


def _p90(values) -> float | None:
    from tools.loadtest.report import percentile

    value = percentile([v for v in values if v is not None], 90.0)
    return None if value is None else round(value, 4)


def write_realtime(turns: list[RealtimeTurn], summary: dict, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "realtime.json").write_text(json.dumps(summary, indent=2))
    with (out_dir / "realtime_turns.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(RealtimeTurn())))
        writer.writeheader()
        writer.writerows(asdict(t) for t in turns)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in LATENCIES:
        values = sorted(v for v in (getattr(t, name) for t in turns) if v is not None)
        if values:
            ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=name)
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of turns")
    ax.set_title(f"/v1/realtime, {summary['config'].get('sessions')} session(s)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no turn measured anything: an empty plot, no legend
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "realtime.png", dpi=100)
    plt.close(fig)
    return {"report": str(out_dir / "realtime.json"), "csv": str(out_dir / "realtime_turns.csv"),
            "plot": str(out_dir / "realtime.png")}


def format_realtime(summary: dict) -> str:
    lines = [f"{summary['turns']} turns, {summary['ok']} ok, {summary['false_endpoints']} false endpoints, "
             f"{summary['wall_s']} s"]
    for name in LATENCIES:
        s = summary[name]
        if s["n"]:
            lines.append(f"  {name:30} n={s['n']:3}  p50={s['p50']:.3f}  p90={summary['p90'][name]:.3f}  "
                         f"p95={s['p95']:.3f}  max={s['max']:.3f}")
    for error in summary["errors"][:5]:
        lines.append(f"  error: {error}")
    return "\n".join(lines)
