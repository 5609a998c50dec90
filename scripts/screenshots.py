"""The README's screenshots of a real conversation: the product on the weights `scripts/run.sh`
loads (config/*.env; the registry weights where the hub is unreachable), on loopback, and the
page in Debian's headless Chromium, whose microphone says espeak-ng questions when this script
chooses (the browser tests' injected microphone). Everything it starts is stopped at the end.

    PYTHONPATH=$PWD .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--only SCENE ...]

CPU-heavy (three real models on this machine): run it once, on a quiet machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.product import running  # noqa: E402
from tests.test_browser import ARGS, CHROMIUM, DESKTOP, FAKE_UI, PHONE  # noqa: E402
from tests.test_browser_realtime import AUTOPLAY, INJECTED_MIC, conversation_wav  # noqa: E402

QUESTIONS = ["What is the capital of France?",
             "Tell me about the planets of the solar system.",
             "Wait, which planet is the biggest?"]
TURN_MS = 180_000  # a turn on real weights on a small, shared CPU
HEARD_MS = 2500  # the interruption comes this far into the second answer (past the echo guard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--only", nargs="+", choices=SCENES, help="these scenes only (default: all)")
    args = parser.parse_args()
    out, scenes = args.out, args.only or list(SCENES)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".wav"
    tmp.mkdir(exist_ok=True)
    clips = [base64.b64encode(conversation_wav(tmp / f"{i}.wav", [text, 0.5]).read_bytes()).decode()
             for i, text in enumerate(QUESTIONS)]
    with running({}) as product, sync_playwright() as pw:
        print("product ready at", product.url, flush=True)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, FAKE_UI, AUTOPLAY])
        try:
            for scene in scenes:
                SCENES[scene](browser, product.url, clips, out)
        finally:
            browser.close()
    for wav in tmp.iterdir():
        wav.unlink()
    tmp.rmdir()


def page_of(browser, url: str, clips: list[str], mode: str | None, viewport=DESKTOP, **options):
    context = browser.new_context(viewport=viewport, **options)
    context.grant_permissions(["microphone"], origin=url)
    if mode:
        context.add_init_script(f"localStorage.setItem('s2s.mode', '{mode}')")
    context.add_init_script(INJECTED_MIC % json.dumps(clips))
    page = context.new_page()
    page.goto(url + "/")
    return page


def wait(page, expression: str, timeout: float = TURN_MS, arg=None):
    try:
        return page.wait_for_function(expression, arg=arg, timeout=timeout, polling=50).json_value()
    except PlaywrightTimeout:  # say where the page was
        print(page.evaluate("() => [s2s.state, document.getElementById('status').textContent, "
                            "s2s.marks.map(m => m.name + ':' + (m.sessionId || '').slice(-4))]"), flush=True)
        raise


def hands_free(browser, url: str, clips: list[str], out: Path) -> None:
    page = page_of(browser, url, clips, None)
    wait(page, "() => window.s2s && s2s.state === 'listening'", 60_000)
    page.evaluate("() => s2sTestMic.say(0)")
    wait(page, "() => s2s.state === 'speaking' && s2s.chunks.length > 0 && "
               "document.querySelector('#conversation .msg--assistant .msg__text').textContent.trim()")
    page.screenshot(path=str(out / "speaking.png"))
    wait(page, "() => s2s.marks.some(m => m.name === 'done') && s2s.state === 'listening'")
    page.evaluate("() => s2sTestMic.say(1)")
    # well into the second answer, the third question interrupts it
    wait(page, """ms => { const answer = s2s.marks.filter(m => m.name === 'response')[1];
                         const c = answer && s2s.chunks.filter(x => x.sessionId === answer.sessionId && x.startedAt);
                         return c && c.length && performance.now() - c[0].startedAt > ms; }""", arg=HEARD_MS)
    page.evaluate("() => s2sTestMic.say(2)")
    wait(page, "() => s2s.marks.some(m => m.name === 'interrupted')")
    wait(page, "() => s2s.marks.filter(m => m.name === 'done').length >= 2 && s2s.state === 'listening'")
    page.set_viewport_size({"width": DESKTOP["width"], "height": 1000})  # the whole conversation
    page.screenshot(path=str(out / "hands-free.png"))
    page.context.close()


def push_to_talk(browser, url: str, clips: list[str], out: Path) -> None:
    page = page_of(browser, url, clips, "push-to-talk")
    wait(page, "() => window.s2s && s2s.state === 'idle' && "
               "[...document.querySelectorAll('#stages .stage')].every(s => s.dataset.stageState === 'ready')", 60_000)
    page.screenshot(path=str(out / "idle.png"))
    page.keyboard.down("Space")
    wait(page, "() => s2s.state === 'listening' && window.s2sTestMic.constraints && "
               "document.getElementById('status').textContent.startsWith('Listening')", 30_000)  # the mic is open
    page.evaluate("() => s2sTestMic.say(0)")
    page.wait_for_timeout(1200)  # mid-question, for the picture only
    page.screenshot(path=str(out / "listening.png"))
    page.wait_for_timeout(1800)  # the rest of the question (2.5 s with its pause)
    page.keyboard.up("Space")
    wait(page, "() => s2s.marks.some(m => m.name === 'done') && s2s.state === 'idle'")
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(out / "phone.png"))
    page.context.close()


# scene -> what it takes: hands-free.png and speaking.png; idle, listening and phone.png
SCENES = {"hands-free": hands_free, "push-to-talk": push_to_talk}

if __name__ == "__main__":
    main()
