"""The page in conversation over /v1/realtime: Debian's headless Chromium driven by Playwright, a
WAV file of spoken questions and silences as the microphone, the real product (supervisord, turn
detection, tiny random-weight models) behind it. The page's own instrumentation (`window.s2s`:
chunks with their scheduled start, end and gap, marks, the commands it sent) is what is checked.

Chromium's fake microphone plays the WAV from its start when the page opens the microphone, so
the questions come at known offsets from then. The answers are long (32 tokens: several seconds
of tiny-Kokoro audio in two chunks or more). Barge-in has to land in the middle of an answer, past
the echo guard's first seconds, however long the machine took to start it: there the test speaks
into a microphone of its own (INJECTED_MIC) at the moment it chooses. The same microphone puts a
short sound into an answer's first moments, as an echo the canceller has not yet learnt would.
"""

from __future__ import annotations

import base64
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.audio import spoken_wav
from tests.product import running, tiny_env
from tests.test_browser import ARGS, CHROMIUM, DESKTOP, FAKE_UI, TURN_MS, Tab, playwright, shots  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# hands-free starts by itself once the microphone is allowed, as it does for a person who allowed
# it before; a page may only start audio without a click when the browser lets it
AUTOPLAY = "--autoplay-policy=no-user-gesture-required"
BARGE_IN_STOP_MS = 300  # the answer's audio stops within this of the page hearing speech start
MAX_GAP_MS = 20  # silence between consecutive chunks of one answer
LATE_SLACK_MS = 150  # a late chunk: decoding it and the player's lead, beyond the wait for it


@pytest.fixture(scope="module")
def product(tiny_whisper, tiny_qwen2, tiny_kokoro):
    with running({**tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro), "S2S_LLM_MAX_NEW_TOKENS": "32"}) as product:
        yield product


def conversation_wav(path: Path, parts: list) -> Path:
    """A WAV of spoken text (str) and silences (float, seconds), in order."""
    pieces, rate = [], None
    for i, part in enumerate(parts):
        if isinstance(part, str):
            with wave.open(str(spoken_wav(part, path.with_suffix(f".{i}.wav")))) as w:
                rate = w.getframerate()
                pieces.append(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
        else:
            pieces.append(part)
    rate = rate or 22050
    audio = np.concatenate([np.zeros(int(p * rate), "<i2") if isinstance(p, float) else p for p in pieces])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.tobytes())
    return path


# A microphone the test speaks into when it chooses (for barge-in, which must land in the middle
# of an answer however long the machine took to start it): getUserMedia gets a stream of the
# page's own audio graph, and s2sTestMic.say(i) plays the i-th WAV into it.
INJECTED_MIC = """(() => {
  const clips = %s;
  let ctx = null, dest = null;
  window.s2sTestMic = {
    constraints: null,
    async say(i) {
      const bin = atob(clips[i]);
      const bytes = new Uint8Array(bin.length);
      for (let k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
      const source = ctx.createBufferSource();
      source.buffer = await ctx.decodeAudioData(bytes.buffer);
      source.connect(dest);
      source.start();
      return performance.now();
    },
  };
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    s2sTestMic.constraints = constraints;
    ctx = ctx || new AudioContext();
    dest = dest || ctx.createMediaStreamDestination();
    return dest.stream;
  };
})();"""


class Conversation:
    """A browser whose microphone says `wav` (or what `init` makes it say), and one tab of the
    page in hands-free mode."""

    def __init__(self, playwright, product, wav: Path, init: str | None = None):
        self.browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*ARGS, FAKE_UI, AUTOPLAY, f"--use-file-for-fake-audio-capture={wav}"])
        context = self.browser.new_context(viewport=DESKTOP)
        context.grant_permissions(["microphone"], origin=product.url)
        # the astronaut answers in two chunks or more: a short first clause, then the rest
        context.add_init_script("localStorage.setItem('s2s.persona', 'astronaut')")
        if init:
            context.add_init_script(init)
        self.tab = Tab(context, product.url, mode=None)
        self.tab.page.goto(product.url + "/")

    def __enter__(self) -> Tab:
        return self.tab

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.tab.check_clean()
        finally:
            self.browser.close()


def answers(t: Tab) -> list[dict]:
    return t.js("""() => [...document.querySelectorAll('#conversation > li')].map(li => ({
        user: li.querySelector('.msg--user .msg__text').textContent,
        reply: li.querySelector('.msg--assistant .msg__text').textContent,
        note: li.querySelector('.msg__note').hidden ? '' : li.querySelector('.msg__note').textContent,
        latency: Object.fromEntries([...li.querySelectorAll('.latency__item')].map(i =>
            [i.dataset.key, parseFloat(i.querySelector('dd').textContent)]))}))""")


def marks(t: Tab, name: str) -> list[dict]:
    return t.js("n => s2s.marks.filter(m => m.name === n)", name)


def listening(t: Tab) -> None:
    """The page started hands-free by itself: no key, no click."""
    t.wait("() => window.s2s && ['listening', 'hearing'].includes(s2s.state)", 30_000)
    assert t.js("() => s2s.mode") == "hands-free"
    assert t.js("() => localStorage.getItem('s2s.mode')") is None  # the default, not a stored choice
    assert t.js("() => document.getElementById('persona').value") == "astronaut"  # remembered


# a microphone that opens only when the test lets it, as when the browser takes its time
SLOW_MIC = """(() => {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  let letOpen;
  const allowed = new Promise((resolve) => { letOpen = resolve; });
  window.s2sTestMic = { asked: false, open: () => letOpen() };
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    s2sTestMic.asked = true;
    await allowed;
    return open(constraints);
  };
})();"""


def test_hands_free_two_questions_get_two_answers_with_nothing_pressed(playwright, product, shots, tmp_path):
    wav = conversation_wav(tmp_path / "two.wav", ["What is the capital of France?", 4.0,
                                                  "And what is the capital of Spain?", 120.0])
    with Conversation(playwright, product, wav) as t:
        listening(t)
        t.wait("() => s2s.marks.filter(m => m.name === 'transcript').length >= 2", TURN_MS)
        t.wait("() => s2s.marks.filter(m => m.name === 'done').length >= 1", TURN_MS)
        t.wait("() => s2s.state === 'listening' && document.querySelectorAll('#conversation > li').length === 2"
               " && !document.querySelector('#conversation .msg__text--pending')", TURN_MS)
        shots(t.page, "hands-free")
        turns = answers(t)
        assert len(turns) == 2, turns
        assert all(turn["user"].strip() and turn["reply"].strip() for turn in turns), turns
        # the second question may come while the first answer plays: then it interrupts that one
        first, second = turns
        assert first["note"] in ("", "Interrupted."), turns
        assert first["note"] or first["latency"]["first_audio"] > 0, turns
        assert second["latency"]["first_audio"] > 0 and not second["note"], turns  # from the end of speech
        assert not marks(t, "press") and not marks(t, "release")
        sent = [s[1] for s in t.js("() => s2s.sent")]
        assert sent[0] == "session.update" and "input_audio_buffer.commit" not in sent  # the server found the turns
        detection = t.js("() => s2s.sent[0][2].session")["audio"]["input"]["turn_detection"]
        assert detection == {"type": "semantic_vad", "eagerness": "auto", "create_response": False,
                             "interrupt_response": False}  # the page decides what is answered
        assert sent.count("response.create") == len(marks(t, "response")) >= 1 + (not first["note"])
        # while hearing, the words as they are recognised; then the final transcript
        shown = {m["sessionId"]: m["at"] for m in marks(t, "transcript")}
        partials = [m for m in marks(t, "partial") if m["at"] < shown.get(m["sessionId"], 0)]
        assert partials, t.js("() => s2s.marks")
        # the latency shown is counted from the end of speech: before the transcript, then the audio
        assert 0 < second["latency"]["transcript"] < second["latency"]["first_audio"], second


def test_barge_in_fades_the_answer_within_300_ms_and_the_next_answer_knows_only_what_was_heard(
        playwright, product, tmp_path):
    clips = [base64.b64encode(conversation_wav(tmp_path / f"{i}.wav", [text, 0.5]).read_bytes()).decode()
             for i, text in enumerate(["What is the capital of France?", "Tell me about Spain instead."])]
    silence = conversation_wav(tmp_path / "silence.wav", [1.0])
    with Conversation(playwright, product, silence, INJECTED_MIC % json.dumps(clips)) as t:
        listening(t)
        constraints = t.js("() => s2sTestMic.constraints.audio")
        assert constraints["echoCancellation"] and constraints["noiseSuppression"] and constraints["autoGainControl"]
        t.js("() => { window.levels = []; setInterval(() => levels.push([performance.now(), s2s.outputLevel()]), 5); }")
        t.js("() => s2sTestMic.say(0)")
        # past the echo guard's first seconds of the answer, the second question
        t.wait("""() => { const now = performance.now(), c = s2s.chunks.filter(c => c.startedAt !== null);
                          return c.length && c.filter(x => x.sessionId === c[0].sessionId).reduce((heard, x) =>
                              heard + Math.max(0, Math.min(now, x.startedAt + x.duration) - x.startedAt), 0) >= 2300; }""",
               2 * TURN_MS)
        t.js("() => s2sTestMic.say(1)")
        t.wait("() => s2s.marks.some(m => m.name === 'interrupted')", TURN_MS)
        # the next answer is done: a done after the interruption
        t.wait("""() => { const cut = s2s.marks.find(m => m.name === 'interrupted');
                          return s2s.marks.some(m => m.name === 'done' && m.at > cut.at) && s2s.state === 'listening'; }""",
               TURN_MS)
        shown = answers(t)
        story = json.dumps([shown, t.js("() => s2s.marks.map(m => [m.name, m.sessionId, Math.round(m.at)])")])
        first, *between, last = shown
        interrupted = marks(t, "interrupted")[0]
        started = [m for m in marks(t, "speech_started") if m["at"] <= interrupted["at"]][-1]
        cut_session = interrupted["sessionId"]
        chunks = t.js("id => s2s.chunks.filter(c => c.sessionId === id)", cut_session)
        heard = [c for c in chunks if c["startedAt"] is not None]
        assert heard and heard[-1]["stopped"], chunks
        assert heard[-1]["endedAt"] - started["at"] <= BARGE_IN_STOP_MS, (started, heard[-1])
        # what the speakers got: silent from then until the next answer
        next_start = min([c["startedAt"] for c in t.js("() => s2s.chunks") if c["startedAt"]
                          and c["sessionId"] != cut_session and c["startedAt"] > started["at"]] or [1e12])
        levels = t.js("() => levels")
        # (the analyser sees audio a few ms before the output clock says it is heard)
        loud = [at for at, level in levels if level > 0 and started["at"] + BARGE_IN_STOP_MS < at < next_start - 100]
        assert not loud, (loud[0] - started["at"], next_start - started["at"], len(loud), chunks)
        assert first["note"] == "Interrupted." and not last["note"] and last["latency"], story
        # a pause inside the second question that turn detection takes for its end (an audio
        # dropout on a busy machine will do) makes it two turns: the second half comes before the
        # first half's answer is heard (it is then interrupted, or never asked), and the last turn,
        # with the first half in its history, is answered
        # (never heard: no reply text, or the page's placeholder for an answer cut before any)
        assert len(between) <= 1 and all(a["reply"] in ("", "(no reply)") and not a["latency"]
                                         for a in between), story

        # the page told the server how much was played ...
        truncate = [s[2] for s in t.js("() => s2s.sent") if s[1] == "conversation.item.truncate"]
        assert len(truncate) == 1, truncate
        played_ms = truncate[0]["audio_end_ms"]
        assert abs(played_ms - sum(c["endedAt"] - c["startedAt"] for c in heard)) < 60, (played_ms, heard)
        # ... less than it had received, the server took it (conversation.item.truncated) before
        # the second answer started ...
        assert played_ms < sum(c["duration"] for c in chunks) - 100, (played_ms, chunks)
        truncated = marks(t, "truncated")
        answered = t.js("id => s2s.chunks.find(c => c.sessionId === id).arrivedAt", t.js("() => s2s.sessionId"))
        assert len(truncated) == 1 and truncated[0]["at"] < answered, (truncated, answered)
        # ... and what the next answer reads of the first one, the server's own record of it, is
        # the words heard: a beginning of what was delivered, not all of it (the tiny model's
        # replies are nonsense either way, so the record is checked, not the reply)
        delivered = " ".join(c["text"] for c in chunks).split()
        item = t.js("id => s2s.retrieveItem(id)", truncate[0]["item_id"])
        kept = item["content"][0]["transcript"].split()
        assert kept == delivered[:len(kept)], (item, delivered)
        assert 0 < len(kept) < len(delivered), (kept, delivered, played_ms)


def test_echo_in_an_answers_first_moments_is_not_answered_and_speech_after_it_is(playwright, product, tmp_path):
    """A short sound while an answer starts (its echo, before the canceller adapts) is rejected:
    it interrupts nothing, its item is deleted, no answer is asked or given for it. A question
    after the answer is answered."""
    clips = [base64.b64encode(conversation_wav(tmp_path / f"{i}.wav", [text, 0.5]).read_bytes()).decode()
             for i, text in enumerate(["What is the capital of France?", "Stop.", "And what about Spain?"])]
    silence = conversation_wav(tmp_path / "silence.wav", [1.0])
    with Conversation(playwright, product, silence, INJECTED_MIC % json.dumps(clips)) as t:
        listening(t)
        t.js("() => s2sTestMic.say(0)")
        # the moment the answer's audio starts, a short sound (the page polls for it itself)
        t.js("""() => new Promise(resolve => { const poll = setInterval(() => {
                    if (s2s.chunks.some(c => c.startedAt !== null)) { clearInterval(poll); resolve(s2sTestMic.say(1)); }
                }, 5); })""")
        t.wait("() => s2s.marks.some(m => m.name === 'deleted' || m.name === 'interrupted')", TURN_MS)
        assert marks(t, "deleted") and not marks(t, "interrupted"), t.js("() => [s2s.marks, s2s.sent]")
        t.wait("() => s2s.marks.some(m => m.name === 'done') && s2s.state === 'listening'", TURN_MS)  # heard out
        t.js("() => s2sTestMic.say(2)")
        t.wait("() => s2s.marks.filter(m => m.name === 'done').length >= 2 && s2s.state === 'listening'", TURN_MS)
        (ignored,) = marks(t, "ignored")
        (deleted,) = marks(t, "deleted")
        assert deleted["sessionId"] == ignored["sessionId"]
        sent = t.js("() => s2s.sent")
        assert [s[2]["item_id"] for s in sent if s[1] == "conversation.item.delete"] == [ignored["sessionId"]]
        assert not marks(t, "interrupted") and not [s for s in sent if s[1] in ("response.cancel",
                                                                                 "conversation.item.truncate")]
        # two answers, each one the page asked for, each of a turn it shows: none for the echo
        responses = marks(t, "response")
        assert len(responses) == 2 and all(r["sessionId"] for r in responses), responses
        assert ignored["sessionId"] not in {r["sessionId"] for r in responses}
        assert [s[1] for s in sent].count("response.create") == 2
        turns = answers(t)
        assert len(turns) == 2 and not any(turn["note"] for turn in turns), turns
        assert all(turn["user"].strip() and turn["reply"].strip() for turn in turns), turns


def test_a_silent_microphone_never_interrupts_a_long_answer_and_its_chunks_play_without_gaps(
        playwright, product, tmp_path):
    wav = conversation_wav(tmp_path / "one.wav", ["What is the capital of France?", 120.0])
    with Conversation(playwright, product, wav, SLOW_MIC) as t:
        t.wait("() => window.s2sTestMic.asked", 30_000)
        # words said before the microphone opens would be lost: the page must not invite them
        assert t.js("() => s2s.state") == "idle" and t.status() == "Opening the microphone…", t.status()
        t.js("() => s2sTestMic.open()")
        listening(t)
        assert t.status() == "Listening… just talk."
        t.wait("() => s2s.marks.some(m => m.name === 'done')", TURN_MS)
        t.wait("() => s2s.state === 'listening'", TURN_MS)  # played to its end
        (turn,) = answers(t)
        session = t.js("() => s2s.marks.find(m => m.name === 'done').sessionId")
        chunks = t.js("id => s2s.chunks.filter(c => c.sessionId === id)", session)
        assert len(chunks) >= 2 and sum(c["duration"] for c in chunks) > 4000, chunks  # a long answer
        assert all(c["live"] and not c["stopped"] and c["endedAt"] for c in chunks), chunks
        assert len(marks(t, "speech_started")) == 1 and not marks(t, "interrupted"), t.js("() => s2s.marks")
        assert not [s for s in t.js("() => s2s.sent") if s[1] in ("conversation.item.truncate", "response.cancel")]
        assert not turn["note"], turn
        # each chunk that was there in time starts where the previous one ends; one that TTS
        # delivered late (slower than real time: a loaded machine) starts as soon as it arrives
        for prev, c in zip(chunks, chunks[1:]):
            if c["late"]:
                assert c["gap"] <= c["arrivedAt"] - (prev["startedAt"] + prev["duration"]) + LATE_SLACK_MS, (prev, c)
            else:
                assert 0 <= c["gap"] < MAX_GAP_MS, (prev, c)
