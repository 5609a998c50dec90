"""The openai-compatible LLM backend against a real server: `transformers serve` (the serving
extras are in the `test` extra) on 127.0.0.1, serving the tiny random-weight Qwen2 model from a
private hub cache, offline, with a log of the request bodies it receives. Then the real LLM worker process against it: sentences stream out, the
persona prompt and history reach the model, a cancel stops the reply, a server that is down at
load is exit 78, and a server that dies mid-reply is that turn's error, not the worker's end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from proto import ChatMessage, LlmDone, LlmRequest, LlmSentence, StageError, StageHello, TurnCancel
from services.llm.openai_compatible import OpenAICompatibleBackend
from services.llm.stage import LlmStage
from services.personas import system_prompt
from services.runtime.errors import EXIT_CONFIG
from services.runtime.settings import StageSettings
from tests.worker_process import WorkerProcess, private_run_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MODEL = "s2s-test/tiny-qwen2"  # the name it is served under (a repo id in the server's hub cache)
QUESTION = "Tell me about whales."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve MODEL` in its own process group, offline, on a free loopback port; the
    chat requests it receives are logged (tests/fakes/logged_transformers_serve.py)."""

    def __init__(self, model_dir: Path, home: Path):
        hub = home / "hub"
        snapshot = hub / f"models--{MODEL.replace('/', '--')}" / "snapshots" / ("0" * 40)
        shutil.copytree(model_dir, snapshot)  # the hub cache layout: GET /models lists it, offline
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text(snapshot.name)
        self.url = f"http://127.0.0.1:{free_port()}/v1"
        self.requests_path = home / "requests.jsonl"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(hub),
               "S2S_TEST_REQUEST_LOG": str(self.requests_path)}
        self.log_path = home / "serve.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.logged_transformers_serve", "serve", MODEL, "--host", "127.0.0.1",
                 "--port", self.url.split(":")[2].split("/")[0], "--device", "cpu", "--log-level", "info"],
                env=env, cwd=Path(__file__).resolve().parents[1], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"transformers serve was not ready in {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests(self) -> list[dict]:
        """The chat-completions request bodies the server has received, in order."""
        if not self.requests_path.exists():
            return []
        return [json.loads(line) for line in self.requests_path.read_text().splitlines()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tiny_qwen2, tmp_path_factory, request):
    from transformers.utils.import_utils import is_serve_available

    assert is_serve_available(), "transformers serve needs fastapi, uvicorn and openai: pip install -e '.[test]'"
    started = Server(tiny_qwen2, tmp_path_factory.mktemp("hf-home"))
    try:
        request.getfixturevalue("reference")  # loads while the server starts
        yield started.wait_ready()
    finally:
        started.kill()


@pytest.fixture(scope="module")
def reference(tiny_qwen2):
    """The reply the same model gives in this process, greedy, for exactly these messages."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2).eval()

    def reply(messages: list[dict], max_new_tokens: int) -> str:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return reply


def settings_for(url: str, **more: str) -> dict[str, str]:
    return {"S2S_LLM_BACKEND": "openai-compatible", "S2S_LLM_BASE_URL": url, "S2S_LLM_MODEL": MODEL, **more}


REQUESTS = [  # the persona alone differs between the first two, the history alone between the first and last
    LlmRequest(session="a", persona="wildlife_expert", history=[ChatMessage("user", QUESTION)]),
    LlmRequest(session="b", persona="astronaut", history=[ChatMessage("user", QUESTION)]),
    LlmRequest(session="c", persona="wildlife_expert", history=[
        ChatMessage("user", "Hi!"), ChatMessage("assistant", "Hello, nice to meet you."), ChatMessage("user", QUESTION)]),
]

# this persona's reply has a clause early on, so the stage sends a first sentence before the rest
WORKER_REQUEST = LlmRequest(session="s", persona="astronaut", history=REQUESTS[2].history)


def test_replies_follow_the_persona_prompt_and_the_history(server, reference):
    stage = LlmStage(StageSettings("llm", settings_for(server.url)))
    backend = OpenAICompatibleBackend(base_url=server.url, model=MODEL)
    backend.load()
    replies = []
    for request in REQUESTS:
        messages = stage.prompt(request)
        replies.append("".join(backend.stream(messages, max_new_tokens=20)))
        # what the server received: the persona's system prompt, the history, the settings
        assert server.requests()[-1] == {"model": MODEL, "messages": messages, "stream": True, "max_tokens": 20,
                                         "temperature": 0.0}
        assert messages[0]["content"] == system_prompt(request.persona) and len(messages) == len(request.history) + 1
        # and its greedy reply is the model's reply to exactly those messages
        assert replies[-1] == reference(messages, 20)
    # The reply depends on the persona. (With random weights the tiny model hardly looks past its
    # long system prompt, so an earlier exchange does not change its words: the log above shows it arrived.)
    assert replies[0] != replies[1]


def test_a_stop_ends_the_reply_within_one_piece(server):
    backend = OpenAICompatibleBackend(base_url=server.url, model=MODEL)
    backend.load()
    messages = LlmStage(StageSettings("llm", settings_for(server.url))).prompt(REQUESTS[0])
    got, stop = [], False
    started = time.monotonic()
    for piece in backend.stream(messages, max_new_tokens=2000, should_stop=lambda: stop):
        got.append(piece)
        stop = len(got) >= 3
    assert len(got) == 3 and time.monotonic() - started < 10
    assert "".join(backend.stream(messages, max_new_tokens=5))  # the server serves the next reply


def test_the_llm_worker_streams_from_the_server_and_survives_its_death(server, reference):
    """Last in this module: it kills the server."""
    with private_run_dir() as env:
        worker = WorkerProcess(env, module="services.llm", **settings_for(
            server.url, S2S_LLM_ENV_FILE=str(Path(env["S2S_RUN_DIR"]) / "none.env"), S2S_LLM_THREADS="0",
            S2S_LLM_NICE="0", S2S_LLM_MAX_NEW_TOKENS="2000", HF_HUB_OFFLINE="1"))
        try:
            bus = worker.bus
            hello = bus.wait_for(lambda m: isinstance(m, StageHello), timeout=30)
            port = server.url.split(":")[2].split("/")[0]
            assert (hello.backend, hello.model, hello.device) == ("openai-compatible", MODEL, f"remote: 127.0.0.1:{port}")
            worker.ready(timeout=60)

            def ask(turn: int, max_new_tokens: int, request=WORKER_REQUEST) -> None:
                bus.send("llm", LlmRequest(session="s", turn=turn, persona=request.persona, history=request.history,
                                           max_new_tokens=max_new_tokens))

            def of(turn, kind):
                return lambda m: isinstance(m, kind) and m.turn == turn

            # a whole reply: sentences as they complete, then done; persona and history reached the model
            ask(1, 40)
            done = bus.wait_for(of(1, LlmDone), timeout=30)
            sentences = [m for m in bus.seen if of(1, LlmSentence)(m)]
            assert len(sentences) >= 2 and sentences[0].elapsed_s < done.compute_s
            assert done.full_text == " ".join(s.text for s in sentences)
            messages = LlmStage(StageSettings("llm", settings_for(server.url))).prompt(WORKER_REQUEST)
            assert server.requests()[-1]["messages"] == messages
            assert done.full_text.split() == reference(messages, 40).split()

            # a cancelled turn stops: no more than what was in flight, and no done
            ask(2, 2000)
            bus.wait_for(of(2, LlmSentence), timeout=30)
            bus.send("llm", TurnCancel(session="s", turn=2))
            after = bus.collect(1.0)
            assert not any(of(2, LlmDone)(m) for m in after)
            assert len([m for m in after if of(2, LlmSentence)(m)]) <= 2

            # the server dies mid-reply: that turn ends with an error naming it; the worker lives on
            ask(3, 2000)
            bus.wait_for(of(3, LlmSentence), timeout=30)
            server.kill()
            error = bus.wait_for(of(3, StageError), timeout=20)
            assert error.kind == "failed" and server.url in error.message and "mid-reply" in error.message
            assert not any(of(3, LlmDone)(m) for m in bus.seen)
            ask(4, 40)
            error = bus.wait_for(of(4, StageError), timeout=20)
            assert f"cannot reach the LLM server at {server.url}" in error.message
            assert worker.proc.poll() is None
        finally:
            worker.stop()


def test_a_worker_whose_server_is_down_exits_78_naming_it():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with private_run_dir() as env:
        worker = WorkerProcess(env, module="services.llm", **settings_for(
            url, S2S_LLM_ENV_FILE=str(Path(env["S2S_RUN_DIR"]) / "none.env"), S2S_LLM_THREADS="0"))
        try:
            error = worker.bus.wait_for(lambda m: isinstance(m, StageError), timeout=30)
            assert error.kind == "load_failed" and f"cannot reach the LLM server at {url}" in error.message
            assert worker.proc.wait(20) == EXIT_CONFIG
            assert url in worker.output()
        finally:
            worker.stop()
