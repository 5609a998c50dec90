"""The openai-compatible LLM backend against a hand-written server: the request it sends, the
event streams it reads, every way a reply can fail, cancellation, load() checks, the stage on top.
tests/test_llm_openai_server.py runs it against a real server (`transformers serve`)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import pytest

from proto import ChatMessage, LlmDone, LlmRequest, LlmSentence
from services.llm.openai_compatible import OpenAICompatibleBackend, RemoteLlmError, sse_events
from services.llm.stage import LlmStage
from services.personas import system_prompt
from services.runtime.errors import ConfigError
from services.runtime.settings import StageSettings
from services.runtime.stage import InProcessStopCheck
from tests.fakes.openai_server import Answer, FakeOpenAI, data, stream_of

pytestmark = pytest.mark.timeout(30)

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}]
WORDS = ["Hello", " there", ",", " friend", ".", " How", " are", " you", "?"]


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def backend(fake, **kw) -> OpenAICompatibleBackend:
    b = OpenAICompatibleBackend(base_url=fake.url, model="fake-model", **{"read_timeout_s": 5.0, **kw})
    b.load()
    return b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_requests(fake):
    return [r for r in fake.requests if r[1] == "/v1/chat/completions"]


# --- the happy path -------------------------------------------------------------------------


def test_streams_the_pieces_and_sends_the_prompt_and_settings(fake):
    fake.answers["/v1/chat/completions"] = Answer(events=[b": keep-alive\n\n"] + stream_of(WORDS))
    b = backend(fake, temperature=0.7)
    assert list(b.stream(MESSAGES, max_new_tokens=42)) == WORDS
    (method, path, headers, body), = chat_requests(fake)
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert body == {"model": "fake-model", "messages": MESSAGES, "stream": True, "max_tokens": 42,
                    "temperature": 0.7}
    assert headers["Accept"] == "text/event-stream" and "Authorization" not in headers


def test_greedy_by_default(fake):
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of(["Hi."]))
    assert list(backend(fake).stream(MESSAGES)) == ["Hi."]
    assert chat_requests(fake)[0][3]["temperature"] == 0.0 and chat_requests(fake)[0][3]["max_tokens"] == 220


def test_a_stream_that_ends_after_finish_reason_without_done_is_complete(fake):
    # transformers serve ends with the finish_reason chunk and no [DONE]
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of(WORDS, done=False))
    assert "".join(backend(fake).stream(MESSAGES)) == "".join(WORDS)


def test_events_split_over_lines_and_chunks_are_reassembled():
    class Lines:
        def __init__(self, raw: bytes):
            self.lines = raw.splitlines(keepends=True)

        def readline(self, limit):
            return self.lines.pop(0) if self.lines else b""

    raw = b"event: note\ndata: one\ndata:two\r\n\r\n: comment\n\ndata: [DONE]\n\ndata: cut off"
    assert list(sse_events(Lines(raw))) == [("note", "one\ntwo"), ("message", "[DONE]")]


def test_the_stage_streams_sentences_of_the_persona_prompt_and_history(fake):
    words = "Sure thing, here it is. Whales are large mammals that live in every ocean of the world .".split()
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of([" " + w for w in words]))
    settings = StageSettings("llm", {"S2S_LLM_BACKEND": "openai-compatible", "S2S_LLM_BASE_URL": fake.url,
                                     "S2S_LLM_MODEL": "fake-model", "S2S_LLM_MAX_NEW_TOKENS": "100"})
    stage = LlmStage(settings)
    info = stage.describe()
    assert (info.backend, info.model, info.device, info.source) == (
        "openai-compatible", "fake-model", f"remote: 127.0.0.1:{fake.server.server_port}", "remote")
    loaded = stage.load()  # no model resolution, no download: GET /models, then the warm-up request
    assert (loaded.backend, loaded.device) == ("openai-compatible", info.device) and stage.parallel_ok
    history = [ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!"), ChatMessage("user", "Whales?")]
    request = LlmRequest(session="s", persona="wildlife_expert", history=history, max_new_tokens=500)
    out = [m for m, _ in stage.handle(request, [], InProcessStopCheck())]
    sentences = [m.text for m in out if isinstance(m, LlmSentence)]
    # the stage's chunker, unchanged: a first clause of at least 3 words, then whole sentences
    assert sentences == ["Sure thing, here it is.", "Whales are large mammals that live in every ocean of the world ."]
    done = out[-1]
    assert isinstance(done, LlmDone) and done.tokens == len(words) and done.sentences == 2
    body = chat_requests(fake)[-1][3]
    assert body["messages"] == [{"role": "system", "content": system_prompt("wildlife_expert")}] + [
        {"role": m.role, "content": m.content} for m in history]
    assert body["max_tokens"] == 100  # the stage's cap, below the request's


# --- failures: one turn's error, never the worker's -------------------------------------------


@pytest.mark.parametrize("status,body,expected", [
    (500, {"error": {"message": "CUDA out of memory", "type": "InternalServerError"}}, "500: CUDA out of memory"),
    (400, {"object": "error", "message": "prompt is too long", "code": 400}, "400: prompt is too long"),
    (422, {"detail": "Unexpected fields"}, "422: Unexpected fields"),
    (404, {"error": "model 'x' not found"}, "404: model 'x' not found"),
])
def test_an_http_error_names_the_server_status_and_message(fake, status, body, expected):
    b = backend(fake)
    fake.answers["/v1/chat/completions"] = Answer(status=status, json_body=body)
    with pytest.raises(RemoteLlmError, match=expected) as err:
        list(b.stream(MESSAGES))
    assert fake.url in str(err.value)


@pytest.mark.parametrize("error", [{"error": "boom in generate"}, {"error": {"message": "boom in generate"}},
                                   {"object": "error", "message": "boom in generate"}])
def test_an_error_event_mid_stream_ends_the_reply_with_its_message(fake, error):
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of(WORDS[:3], finish=False, done=False) + [data(error)])
    got = []
    with pytest.raises(RemoteLlmError, match="failed mid-reply: boom in generate"):
        for piece in backend(fake).stream(MESSAGES):
            got.append(piece)
    assert got == WORDS[:3]


def test_a_server_that_dies_mid_stream_is_an_error(fake):
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of(WORDS[:3], finish=False, done=False), end="cut")
    with pytest.raises(RemoteLlmError, match="mid-reply") as err:
        list(backend(fake).stream(MESSAGES))
    assert "after 3 pieces" in str(err.value)


@pytest.mark.parametrize("event", [b"data: {not json\n\n", b"data: [1, 2]\n\n", b"data: \xff\xfe\n\n"])
def test_a_malformed_event_is_an_error(fake, event):
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of(WORDS[:2], finish=False, done=False) + [event])
    with pytest.raises(RemoteLlmError, match="malformed|not UTF-8"):
        list(backend(fake).stream(MESSAGES))


def test_a_json_answer_instead_of_a_stream_is_an_error(fake):
    fake.answers["/v1/chat/completions"] = Answer(events=[b"{}"], content_type="application/json")
    with pytest.raises(RemoteLlmError, match="not an event stream"):
        list(backend(fake).stream(MESSAGES))


def test_a_stalled_server_times_out(fake):
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of(WORDS[:2], finish=False, done=False), end="stall")
    started = time.monotonic()
    with pytest.raises(RemoteLlmError, match=r"sent nothing for 0.5 s"):
        list(backend(fake, read_timeout_s=0.5).stream(MESSAGES))
    assert time.monotonic() - started < 10  # the read timeout, long before the 30 s stall ends (loaded-machine margin)


def test_a_server_gone_since_load_is_an_error_of_the_turn(fake):
    b = backend(fake)
    fake.close()
    with pytest.raises(RemoteLlmError, match=f"cannot reach the LLM server at {fake.url}"):
        list(b.stream(MESSAGES))


# --- stopping ---------------------------------------------------------------------------------


# 20 s of reply: a server that saw the client leave stopped well before half of it (written < 1000)
def long_reply(fake, pieces=2000, delay_s=0.01):
    fake.answers["/v1/chat/completions"] = Answer(events=stream_of([f" w{i}," for i in range(pieces)]), delay_s=delay_s)


def wait_for_hangup(fake, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not fake.hangups and time.monotonic() < deadline:
        time.sleep(0.01)
    return fake.hangups


def test_should_stop_ends_the_reply_within_one_piece_and_hangs_up(fake):
    long_reply(fake)
    b = backend(fake)
    got, stop = [], False
    for piece in b.stream(MESSAGES, should_stop=lambda: stop):
        got.append(piece)
        if len(got) == 3:
            stop = True
    assert len(got) == 3  # not one piece after the stop
    (written, _), = wait_for_hangup(fake)
    assert written < 1000  # the server saw the client leave, and stopped


def test_closing_the_stream_hangs_up(fake):
    long_reply(fake)
    gen = backend(fake).stream(MESSAGES)
    assert next(gen) == " w0,"
    gen.close()
    (written, _), = wait_for_hangup(fake)
    assert written < 1000


def test_a_cancelled_turn_stops_the_backend_by_itself_and_hangs_up(fake):
    """The worker keeps reading the stage's outputs after the cancel (it never closes them): the
    backend sees the turn's should_stop, ends the reply within a piece and hangs up."""
    long_reply(fake)
    settings = StageSettings("llm", {"S2S_LLM_BACKEND": "openai-compatible", "S2S_LLM_BASE_URL": fake.url,
                                     "S2S_LLM_MODEL": "fake-model", "S2S_LLM_FIRST_MIN_WORDS": "1"})
    stage = LlmStage(settings)
    stage.backend = backend(fake)
    cancelled = threading.Event()
    request = LlmRequest(session="s", persona="astronaut", history=[ChatMessage("user", "Go")])
    outputs = []
    for message, _ in stage.handle(request, [], InProcessStopCheck(cancelled.is_set)):
        outputs.append(message)
        cancelled.set()  # after the first sentence
    done = outputs[-1]
    assert isinstance(done, LlmDone) and done.tokens <= 3, done  # of 2000 pieces
    (written, _), = wait_for_hangup(fake)
    assert written < 1000


# --- load -------------------------------------------------------------------------------------


def test_load_with_the_server_down_is_a_config_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConfigError, match=f"cannot reach the LLM server at {url} .*refused"):
        OpenAICompatibleBackend(base_url=url, model="m").load()


def test_load_waits_for_a_server_that_is_starting(fake):
    answers = iter([Answer(status=503, json_body={"error": "Loading model"})] * 2)
    ready = Answer(json_body={"object": "list", "data": [{"id": "fake-model"}]})
    fake.answers["/v1/models"] = lambda _: next(answers, ready)
    with pytest.raises(ConfigError, match=r"not ready \(503: Loading model\)"):
        OpenAICompatibleBackend(base_url=fake.url, model="fake-model").load()
    backend(fake, wait_s=10)
    assert len([r for r in fake.requests if r[1] == "/v1/models"]) == 3


@pytest.mark.parametrize("served,model,ok", [
    (["fake-model"], "fake-model", True),
    (["llama3.2:latest"], "llama3.2", True),  # Ollama
    (["other", "another"], "fake-model", False),
    ([], "fake-model", False),
])
def test_load_checks_that_the_server_serves_the_model(fake, served, model, ok):
    fake.answers["/v1/models"] = Answer(json_body={"object": "list", "data": [{"id": m} for m in served]})
    b = OpenAICompatibleBackend(base_url=fake.url, model=model)
    if ok:
        b.load()
        return
    with pytest.raises(ConfigError, match=f"{fake.url} does not serve '{model}'") as err:
        b.load()
    assert (", ".join(repr(m) for m in served) or "no model") in str(err.value)


def test_load_names_a_wrong_api_root(fake):
    with pytest.raises(ConfigError, match="404: S2S_LLM_BASE_URL must be the API root"):
        OpenAICompatibleBackend(base_url=fake.url.removesuffix("/v1"), model="fake-model").load()
    fake.answers["/v1/models"] = Answer(events=[b"<html>"], content_type="text/html")
    with pytest.raises(ConfigError, match="did not answer JSON"):
        OpenAICompatibleBackend(base_url=fake.url, model="fake-model").load()


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://host/v1", "http://user:secret@host/v1",
                                 "http://host:99999/v1", "http://host/v1?x=1", ""])
def test_a_bad_base_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match="S2S_LLM_BASE_URL") as err:
        LlmStage(StageSettings("llm", {"S2S_LLM_BACKEND": "openai-compatible", "S2S_LLM_BASE_URL": url or " "}))
    assert "secret" not in str(err.value)


@pytest.mark.parametrize("key,value", [("READ_TIMEOUT_S", "0"), ("CONNECT_TIMEOUT_S", "-1"),
                                       ("SERVER_WAIT_S", "-1"), ("TEMPERATURE", "hot")])
def test_bad_timeouts_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"S2S_LLM_{key}"):
        LlmStage(StageSettings("llm", {"S2S_LLM_BACKEND": "openai-compatible", f"S2S_LLM_{key}": value}))


# --- the API key -------------------------------------------------------------------------------

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "llm.key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


def test_the_api_key_is_sent_as_a_bearer_token_and_never_logged(fake, key_file, caplog):
    caplog.set_level(logging.DEBUG)
    fake.answers["/v1/chat/completions"] = Answer(status=500, json_body={"error": "boom"})
    b = backend(fake, api_key_file=str(key_file))
    with pytest.raises(RemoteLlmError) as err:
        list(b.stream(MESSAGES))
    assert all(headers.get("Authorization") == f"Bearer {KEY}" for _, _, headers, _ in fake.requests)
    assert KEY not in caplog.text and KEY not in str(err.value) and KEY not in json.dumps(b.describe())


def test_a_refused_key_is_a_config_error(fake, key_file):
    fake.answers["/v1/models"] = Answer(status=401, json_body={"error": {"message": "invalid api key"}})
    with pytest.raises(ConfigError, match="refused the request .*401: invalid api key.*S2S_LLM_API_KEY_FILE"):
        backend(fake, api_key_file=str(key_file))


def test_a_key_file_others_can_read_or_a_missing_one_is_refused(fake, key_file, tmp_path):
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by others .*0644.*chmod 600"):
        backend(fake, api_key_file=str(key_file))
    with pytest.raises(ConfigError, match="No such file"):
        backend(fake, api_key_file=str(tmp_path / "missing.key"))
    two = tmp_path / "two.key"
    two.write_text("one two\n")
    two.chmod(0o600)
    with pytest.raises(ConfigError, match="must hold the key alone") as err:
        backend(fake, api_key_file=str(two))
    assert "one two" not in str(err.value)
    assert not any(r[2].get("Authorization") for r in fake.requests)


@pytest.mark.parametrize("url,warned", [("http://192.0.2.1:8000/v1", True), ("https://192.0.2.1/v1", False),
                                        ("http://localhost:8000/v1", False), ("http://[::1]:8000/v1", False)])
def test_a_key_over_plain_http_to_another_host_is_warned_about(key_file, caplog, monkeypatch, url, warned):
    b = OpenAICompatibleBackend(base_url=url, model="m", api_key_file=str(key_file))
    monkeypatch.setattr(b, "_served_models", lambda: ["m"])  # tests talk to loopback only
    b.load()
    assert ("plain http" in caplog.text) == warned and KEY not in caplog.text
    assert os.stat(key_file).st_mode & 0o777 == 0o600
