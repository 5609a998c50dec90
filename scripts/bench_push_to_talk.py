"""Push-to-talk in the page, streamed over /v1/realtime against recorded and uploaded (the path
kept for browsers without AudioWorklet): from letting go of the button to the transcript and to
the first audio. The product on the weights `scripts/run.sh` loads (config/*.env; the registry
weights where the hub is unreachable), on loopback; Debian's headless Chromium, whose microphone
says the benchmarks' eight questions (scripts/speak_questions.sh). The button is held while a
question is spoken and let go 300 ms after it ends. The two paths take turns, question by
question, each turn in a fresh page (a conversation with no history). Everything it starts is
stopped at the end.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_push_to_talk.py [--turns 8] [--out FILE.json]

CPU-heavy (three real models on this machine): run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.product import running  # noqa: E402
from tests.test_browser import ARGS, CHROMIUM, DESKTOP, FAKE_UI  # noqa: E402
from tests.test_browser_realtime import AUTOPLAY, INJECTED_MIC  # noqa: E402
from tools.loadtest.report import percentile  # noqa: E402

PATHS = {"socket": None, "upload": "delete window.AudioWorkletNode;"}  # path -> the page's init script
RELEASE_AFTER_MS = 300  # the button is let go this long after the question ends
TURN_MS = 180_000  # a turn on real weights on a small, shared CPU
# after the last turn's `done`: its release, its transcript and the first audio played after it
TURN_TIMES = """() => {
    const release = s2s.marks.filter(m => m.name === 'release').pop().at;
    const transcript = s2s.marks.find(m => m.name === 'transcript' && m.at > release);
    const played = s2s.chunks.filter(c => c.startedAt && c.startedAt > release).map(c => c.startedAt);
    return {transcript_s: transcript ? (transcript.at - release) / 1000 : null,
            first_audio_s: played.length ? (Math.min(...played) - release) / 1000 : null,
            user: document.querySelector('#conversation > li:last-child .msg--user .msg__text').textContent};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8, help="questions per path (the eight, repeated)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest-results" / "push-to-talk.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["bash", str(ROOT / "scripts" / "speak_questions.sh"), tmp], check=True)
        wavs = sorted(Path(tmp).glob("q*.wav"), key=lambda p: int(p.stem[1:]))
        clips = [base64.b64encode(w.read_bytes()).decode() for w in wavs]
        lengths_ms = [wav_ms(w) for w in wavs]
    turns = []
    with running({}) as product, sync_playwright() as pw:
        print("product ready at", product.url, flush=True)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, FAKE_UI, AUTOPLAY])
        try:
            for n in range(args.turns):
                i = n % len(clips)
                for path, init in PATHS.items():
                    times = turn(browser, product.url, clips, init, i, lengths_ms[i])
                    turns.append({"path": path, "question": i + 1, **times})
                    print(json.dumps(turns[-1]), flush=True)
        finally:
            browser.close()
    summary = {path: summarize([t for t in turns if t["path"] == path]) for path in PATHS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"turns": turns, "summary": summary}, indent=2))
    print("\n| path | turns | release -> transcript p50 / p90 | release -> first audio p50 / p90 |")
    print("|---|---|---|---|")
    for path, s in summary.items():
        print(f"| {path} | {s['turns']} | {s['transcript_p50']:.2f} / {s['transcript_p90']:.2f} s "
              f"| {s['first_audio_p50']:.2f} / {s['first_audio_p90']:.2f} s |")
    print("written to", args.out)


def wav_ms(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() * 1000 / w.getframerate()


def turn(browser, url: str, clips: list[str], init: str | None, i: int, length_ms: float) -> dict:
    """One question in a fresh page: held while it is spoken, let go, answered."""
    context = browser.new_context(viewport=DESKTOP)
    try:
        context.grant_permissions(["microphone"], origin=url)
        context.add_init_script("localStorage.setItem('s2s.mode', 'push-to-talk')")
        if init:
            context.add_init_script(init)
        context.add_init_script(INJECTED_MIC % json.dumps(clips))
        page = context.new_page()
        page.goto(url + "/")
        wait(page, "() => window.s2s && s2s.state === 'idle' && [...document.querySelectorAll('#stages .stage')]"
                   ".every(s => s.dataset.stageState === 'ready')", 60_000)
        page.keyboard.down("Space")
        wait(page, "() => s2s.state === 'listening' && window.s2sTestMic.constraints && "
                   "document.getElementById('status').textContent.startsWith('Listening')", 30_000)
        page.evaluate("i => s2sTestMic.say(i)", i)
        page.wait_for_timeout(length_ms + RELEASE_AFTER_MS)
        page.keyboard.up("Space")
        ending = wait(page, "() => { const m = s2s.marks.find(m => m.name === 'done' || m.name === 'error');"
                            " return m && !['speaking', 'thinking'].includes(s2s.state) && m.name; }")
        if ending != "done":
            raise RuntimeError(f"question {i + 1}: the turn ended in an error: "
                               f"{page.locator('#status').text_content()}")
        return page.evaluate(TURN_TIMES)
    finally:
        context.close()


def wait(page, expression: str, timeout: float = TURN_MS):
    return page.wait_for_function(expression, timeout=timeout, polling=50).json_value()


def summarize(turns: list[dict]) -> dict:
    out = {"turns": len(turns)}
    for key in ("transcript", "first_audio"):
        values = [t[f"{key}_s"] for t in turns]
        for name, q in (("p50", 50.0), ("p90", 90.0)):
            out[f"{key}_{name}"] = percentile(values, q)
    return out

if __name__ == "__main__":
    main()
