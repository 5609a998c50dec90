"""Random and malformed frames thrown at every stage worker and at the gateway (issue 5).

Each receiver must count and drop what it cannot use, and keep serving: alive, heart-beating,
answering a good request correctly afterwards. The workers are the real stages (tiny random-weight
models); the gateway is the real app, with scripted stages behind it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import typing
import urllib.request
from contextlib import ExitStack

import msgspec
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import proto
from proto.messages import (ASR_REQUESTS, PROTOCOL_VERSION, AsrFinal, AsrRequest, ChatMessage, LlmDone, LlmRequest, LlmSentence,
                            Message, ProtocolError, StageError, StageHeartbeat, StageReady, TtsAudio, TtsDone,
                            TtsRequest, TurnCancel)
from services.personas import DEFAULT_PERSONA, PERSONAS, VOICES
from services.runtime.audio import float_to_pcm16
from services.runtime.endpoints import STAGES, events_endpoint
from tests.gateway_harness import turn, wait_ready
from tests.product import tiny_env
from tests.worker_process import WorkerProcess, private_run_dir

pytestmark = pytest.mark.timeout(120)

REQUEST_TYPES = {"asr": ASR_REQUESTS, "llm": (LlmRequest,), "tts": (TtsRequest,)}
MESSAGE_TYPES = typing.get_args(Message)
RESULT_TYPES = tuple(cls for cls in MESSAGE_TYPES if cls not in (*sum(REQUEST_TYPES.values(), ()), TurnCancel))  # to the gateway
TAGS = [cls.__struct_config__.tag for cls in MESSAGE_TYPES]
FIELD_NAMES = sorted({"tag"} | {f.name for cls in MESSAGE_TYPES for f in msgspec.structs.fields(cls)})

# --- frames ------------------------------------------------------------------------------------

INTS = st.integers(-(2**63), 2**64 - 1)  # every integer msgpack can carry


def floats(finite: bool):
    return st.floats(allow_nan=not finite, allow_infinity=not finite)


def any_value(finite: bool):
    """A value of any msgpack type: what a sender gets wrong in place of the right one."""
    return st.one_of(st.none(), st.booleans(), INTS, floats(finite), st.text(max_size=12), st.binary(max_size=12),
                     st.lists(st.integers(-3, 3), max_size=3),
                     st.dictionaries(st.text(max_size=4), INTS, max_size=2))


def chat_messages(roles):
    return st.lists(st.builds(ChatMessage, role=roles, content=st.text(max_size=40)), max_size=3)


def typed(annotation, finite: bool):
    """Any value of a field's declared type."""
    if annotation is bool:  # before int: a bool field still meets the ints a peer may send
        return st.booleans() | INTS
    if annotation is int:
        return INTS
    if annotation is float:
        return floats(finite)
    if annotation is str:
        return st.text(max_size=24)
    if typing.get_origin(annotation) is typing.Literal:  # a closed vocabulary (proto/states.py)
        return st.sampled_from(typing.get_args(annotation)) | st.text(max_size=24)  # and words outside it
    if annotation == list[ChatMessage]:
        return chat_messages(st.text(max_size=10) | st.sampled_from(["user", "assistant", "system"]))
    raise AssertionError(f"no strategy for a {annotation!r} field: teach typed() the new field type")


# Values a stage accepts, mixed in so that some requests get past validation into the real model.
PLAUSIBLE = {
    "v": st.just(PROTOCOL_VERSION),
    "stage": st.sampled_from(STAGES),
    "sample_rate": st.just(16000),
    "persona": st.sampled_from(sorted(PERSONAS)),
    "history": chat_messages(st.sampled_from(["user", "assistant"])).map(
        lambda history: [*history, ChatMessage("user", "Tell me more.")]),
    "max_new_tokens": st.integers(-2, 6),
    "voice": st.sampled_from(VOICES),
    "speed": st.just(1.0),
    "deadline": st.just(0.0),
}


def messages(cls, finite: bool):
    fields = {}
    for field in msgspec.structs.fields(cls):
        values = typed(field.type, finite)
        fields[field.name] = st.one_of(PLAUSIBLE[field.name], values) if field.name in PLAUSIBLE else values
    return st.fixed_dictionaries(fields).map(lambda kwargs: cls(**kwargs))


def payload_frames_of(message) -> int:
    try:
        proto.encode(message)
        return 0
    except ProtocolError:  # a tag that carries PCM
        return 1


@st.composite
def message_frames(draw, finite: bool, favoured: tuple[type, ...]) -> list[bytes]:
    """A well-typed message, of a favoured type half the time, else of any (often another stage's),
    with a right or wrong payload count."""
    types = st.sampled_from(MESSAGE_TYPES)
    if favoured:
        types = st.one_of(st.sampled_from(favoured), types)
    message = draw(types.flatmap(lambda cls: messages(cls, finite)))
    count = draw(st.one_of(st.just(payload_frames_of(message)), st.integers(0, 2)))
    return [msgspec.msgpack.encode(message), *(draw(st.binary(max_size=2000)) for _ in range(count))]


@st.composite
def damaged_frames(draw, finite: bool, favoured: tuple[type, ...]) -> list[bytes]:
    """A well-typed message, then broken in one way."""
    header, *payload = draw(message_frames(finite, favoured))
    damage = draw(st.sampled_from(["truncated", "retyped", "missing", "not_utf8", "nested", "version"]))
    if damage == "truncated":
        return [header[:draw(st.integers(0, len(header) - 1))], *payload]
    fields = msgspec.msgpack.decode(header)
    if damage == "retyped":
        fields[draw(st.sampled_from(sorted(fields)))] = draw(any_value(finite))
    elif damage == "missing":
        del fields[draw(st.sampled_from(sorted(fields)))]
    elif damage == "not_utf8":  # in a string field (the tag at least is one)
        name = draw(st.sampled_from(sorted(k for k, value in fields.items() if isinstance(value, str))))
        fields[name] = msgspec.Raw(b"\xa2\xc3\x28")  # a 2-byte string that is not UTF-8
    elif damage == "nested":  # an unknown field: skipped, unless deeper than the decoder can go
        depth = draw(st.one_of(st.integers(1, 50), st.integers(2000, 5000)))
        fields["added_later"] = msgspec.Raw(b"\x91" * depth + b"\xc0")
    else:
        fields["v"] = draw(INTS)
    return [msgspec.msgpack.encode(fields), *payload]


def header_maps(finite: bool):
    """A map of protocol field names to values of any type, and any payload."""
    values = st.one_of(st.sampled_from(TAGS), any_value(finite))
    return st.tuples(st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=8),
                     st.lists(st.binary(max_size=16), max_size=2)).map(
        lambda made: [msgspec.msgpack.encode(made[0]), *made[1]])


def storms(finite: bool, favoured: tuple[type, ...] = ()):
    """A burst of multipart messages. finite: no NaN or infinity anywhere (see the xfail test below);
    favoured: the types the receiver takes, so that many get past its decoder."""
    random_frames = st.lists(st.binary(max_size=64), min_size=1, max_size=4)
    one = st.one_of(random_frames, header_maps(finite), message_frames(finite, favoured),
                    damaged_frames(finite, favoured))
    return st.lists(one, min_size=1, max_size=10)


def decoded(frames: list[bytes]):
    """The message, or None where a receiver must count the frames as dropped."""
    try:
        return proto.decode(frames)[0]
    except Exception:  # any failure to decode is a drop (test_proto checks it is a ProtocolError)
        return None


# No shrinking: a receiver that broke stays broken, so every smaller example would fail too and the
# one reported would not be the one that broke it.
FUZZ = settings(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- stage workers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage_workers(tiny_whisper, tiny_qwen2, tiny_kokoro) -> dict[str, WorkerProcess]:
    """Each stage's real worker process on its tiny model, ready; started together so loads overlap."""
    models = tiny_env(tiny_whisper, tiny_qwen2, tiny_kokoro)
    with ExitStack() as stack:
        workers = {}
        for stage in STAGES:
            env = stack.enter_context(private_run_dir())
            workers[stage] = WorkerProcess({**env, **models}, module=f"services.{stage}")
            stack.callback(workers[stage].stop)  # before its run dir goes
        for worker in workers.values():
            worker.ready(timeout=90)
        yield workers


def heartbeat_counting(worker: WorkerProcess, dropped: int) -> StageHeartbeat:
    try:
        return worker.bus.wait_for(lambda m: isinstance(m, StageHeartbeat) and m.dropped_frames == dropped,
                                   timeout=10)
    except AssertionError:
        beats = [m.dropped_frames for m in worker.bus.seen if isinstance(m, StageHeartbeat)]
        raise AssertionError(f"no heartbeat counting {dropped} dropped frames (the last counted {beats[-3:]}); "
                             f"worker alive: {worker.proc.poll() is None}; its log ends:\n{worker.output()[-4000:]}"
                             ) from None


def answer(worker: WorkerProcess, stage: str, request, *payload: bytes) -> tuple:
    """The request's final result (or its error), and every message the worker sent for it."""
    worker.bus.send(stage, request, *payload)
    last = worker.bus.wait_for(lambda m: m.session == request.session and isinstance(m, (AsrFinal, LlmDone, TtsDone,
                                                                                          StageError)), timeout=30)
    assert not isinstance(last, StageError), last
    return last, [m for m in worker.bus.seen if m.session == request.session]


def assert_answers_correctly(worker: WorkerProcess, stage: str) -> None:
    session = f"after-fuzz-{secrets.token_hex(4)}"  # a session the fuzz cannot have touched
    if stage == "asr":
        tone = 0.25 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        final, _ = answer(worker, stage, AsrRequest(session=session, turn=1), float_to_pcm16(tone))
        assert "hello" in final.text.lower() and final.audio_s == 1.0  # what the tiny model always says
    elif stage == "llm":
        done, sent = answer(worker, stage, LlmRequest(session=session, turn=1, persona=DEFAULT_PERSONA,
                                                      history=[ChatMessage("user", "Hello!")], max_new_tokens=6))
        sentences = [m for m in sent if isinstance(m, LlmSentence)]
        assert done.tokens >= 1 and done.full_text  # the tiny model never says EOS: it always says something
        assert [m.index for m in sentences] == list(range(done.sentences))
        assert done.full_text == " ".join(m.text for m in sentences)
    else:
        done, sent = answer(worker, stage, TtsRequest(session=session, turn=1, index=0, text="Hello there.",
                                                      voice="af_heart"))
        parts = [m for m in sent if isinstance(m, TtsAudio)]
        assert done.parts >= 1 and [p.part for p in parts] == list(range(done.parts)) and done.audio_s > 0
        assert {p.sample_rate for p in parts} == {24000}


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_worker_drops_malformed_frames_and_keeps_serving(stage_workers, stage):
    worker = stage_workers[stage]
    request_types = REQUEST_TYPES[stage]
    dropped = 0
    requests_sent: set[tuple[str, int]] = set()

    @settings(FUZZ, max_examples=50)
    @given(storm=storms(finite=False, favoured=(*request_types, TurnCancel)))
    def throw(storm):
        nonlocal dropped
        for frames in storm:
            try:
                worker.bus.send_raw(stage, frames)
            except zmq.Again:
                raise AssertionError(f"the {stage} worker stopped reading its socket; "
                                     f"its log ends:\n{worker.output()[-4000:]}") from None
            message = decoded(frames)
            if message is None or not isinstance(message, (*request_types, TurnCancel)):
                dropped += 1
            elif isinstance(message, request_types):
                requests_sent.add((message.session, message.turn))
        assert worker.proc.poll() is None, worker.output()[-4000:]

    throw()
    # The model's answers to the fuzz's valid requests are not what this test waits for.
    for session, number in requests_sent:
        worker.bus.send(stage, TurnCancel(session=session, turn=number))
    assert dropped > 0  # the fuzz really threw malformed frames
    beat = heartbeat_counting(worker, dropped)
    assert beat.state in ("ready", "busy")
    assert_answers_correctly(worker, stage)
    worker.bus.wait_for(lambda m: isinstance(m, StageHeartbeat))
    assert worker.proc.poll() is None


# --- the gateway -------------------------------------------------------------------------------


def strict_json(text: str):
    """JSON as a browser reads it: NaN and Infinity are not JSON."""
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


# From a thread, to the test server on loopback; never through a proxy the environment names.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[int, str]:
    with _http.open(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def assert_gateway_dropped(base_url: str, dropped: int, timeout: float = 5.0) -> None:
    """/api/stages is valid JSON and soon counts `dropped` frames (the gateway reads its bus meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(f"{base_url}/api/stages")
        assert status == 200
        stages_json = strict_json(body)
        assert set(stages_json["stages"]) == set(STAGES)
        if stages_json["dropped_frames"] == dropped or time.monotonic() > deadline:
            assert stages_json["dropped_frames"] == dropped
            return
        time.sleep(0.01)


def events_push(bus_env) -> tuple[zmq.Context, zmq.Socket]:
    """A stranger on the gateway's events socket."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDTIMEO, 10_000)  # a gateway that stopped reading fails the test, not hangs it
    push.connect(events_endpoint(bus_env))
    return ctx, push


async def test_the_gateway_drops_malformed_frames_and_keeps_serving(make_client, stages, bus_env):
    client = await make_client()
    await wait_ready(client)
    base_url = f"http://{client.host}:{client.port}"

    def fuzz() -> int:
        ctx, push = events_push(bus_env)
        dropped = 0
        try:
            @settings(FUZZ, max_examples=80)
            @given(storm=storms(finite=False, favoured=RESULT_TYPES))
            def throw(storm):
                nonlocal dropped
                for frames in storm:
                    push.send_multipart(frames)
                    dropped += decoded(frames) is None
                assert get(f"{base_url}/healthz")[0] == 200
                assert_gateway_dropped(base_url, dropped)

            throw()
        finally:
            push.close(linger=0)
            ctx.term()
        return dropped

    async def taking_requests() -> dict[str, set[str]]:  # stage -> the workers that look ready or busy
        board = (await (await client.get("/api/stages")).json())["stages"]
        return {stage: {w["instance"] for w in info["workers"] if w["state"] in ("ready", "busy")}
                for stage, info in board.items()}

    scripted = await taking_requests()
    # On a thread: the event loop goes on serving HTTP and reading the bus meanwhile.
    dropped = await asyncio.to_thread(fuzz)
    assert dropped > 0
    await wait_ready(client)  # the scripted stages' next heartbeats undo any state the fuzz claimed
    # A well-formed heartbeat from a stranger (a declared state, "ready" among them) lists a worker
    # with no inbox until its beats are missed: the turn below must meet only the scripted ones.
    deadline = time.monotonic() + 30
    while await taking_requests() != scripted:
        assert time.monotonic() < deadline, await taking_requests()
        await asyncio.sleep(0.1)
    _, events = await turn(client)
    assert [name for name, _ in events] == ["transcript", "chunk", "chunk", "done"]
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    assert strict_json(await (await client.get("/api/stages")).text())["dropped_frames"] == dropped


async def test_non_finite_numbers_from_a_stage_still_give_valid_json(make_client, bus_env):
    client = await make_client()
    ctx, push = events_push(bus_env)
    try:
        push.send_multipart(proto.encode(StageReady(stage="llm", backend="odd", model="odd", device="cpu",
                                                    load_s=float("nan"))))
        for _ in range(100):
            body = await (await client.get("/api/stages")).text()
            if json.loads(body)["stages"]["llm"]["backend"] == "odd":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the gateway never saw the stage.ready")
    finally:
        push.close(linger=0)
        ctx.term()
    strict_json(body)
