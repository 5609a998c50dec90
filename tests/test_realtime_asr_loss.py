"""/v1/realtime when the ASR worker holding a streamed utterance dies (as after kill -9), against
the real gateway and bus with fake workers on real ZeroMQ sockets: the gateway re-sends the whole
stream it kept (start, every frame, the end if it was sent) to another ready worker, and the turn
completes."""

from __future__ import annotations

import base64
import contextlib

import pytest
from openai import AsyncOpenAI

from gateway.app import GATEWAY
from proto import AsrStreamAudio, AsrStreamEnd, AsrStreamStart
from tests.fakes.fake_stages import FakeStages
from tests.gateway_harness import eventually, wait_ready
from tests.test_realtime import TONE, push_to_talk, question_pcm, settings, stream, until  # noqa: F401

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def two_asr_workers(make_client, bus_env):
    """A gateway whose only ASR worker (`first`) holds what it takes without answering; LLM and
    TTS answer. Yields the SDK connection, the gateway, the first ASR and a maker of a second."""
    with FakeStages(bus_env, stages=("llm", "tts")), FakeStages(bus_env, name="first", stages=("asr",)) as first:
        first.silent = {"asr"}
        client = await make_client(settings())
        await wait_ready(client)
        gateway = client.app[GATEWAY]
        sdk = AsyncOpenAI(api_key="x", websocket_base_url=f"ws://127.0.0.1:{client.server.port}/v1")
        async with sdk.realtime.connect(model="s2s") as connection:
            await until(connection, "session.created")
            yield connection, gateway, first


@contextlib.contextmanager
def second_worker(bus_env):
    """Another ASR worker, holding what it takes until the test lets it answer."""
    with FakeStages(bus_env, name="second", stages=("asr",)) as second:
        second.silent = {"asr"}
        yield second


def stream_of(fake) -> list[tuple[type, int | None, bytes]]:
    """What a fake ASR worker took of utterances: (message type, frame index, payload)."""
    return [(type(m), getattr(m, "index", None), payload[0] if payload else b"") for m, payload in fake.held
            if isinstance(m, (AsrStreamStart, AsrStreamAudio, AsrStreamEnd))]


def has_end(fake) -> bool:
    return any(isinstance(m, AsrStreamEnd) for m, _ in fake.held)


async def test_a_committed_utterance_whose_worker_dies_goes_whole_to_another(make_client, bus_env):
    async with two_asr_workers(make_client, bus_env) as (connection, gateway, first):
        await push_to_talk(connection)
        pcm = TONE * 2  # 2 s: ten frames
        for start in range(0, len(pcm), 9600):
            await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + 9600]).decode())
        await connection.input_audio_buffer.commit()
        committed = await until(connection, "input_audio_buffer.committed")
        assert await eventually(lambda: has_end(first))  # the first worker holds all of it, unanswered
        with second_worker(bus_env) as second:
            assert await eventually(lambda: "second-asr" in gateway.board.ready_instances("asr"))
            first.kill()
            assert await eventually(lambda: has_end(second), timeout=10)
            assert stream_of(second) == stream_of(first)  # exactly what the lost worker held
            second.answer_held.set()
            seen: list = []
            completed = await until(connection, "conversation.item.input_audio_transcription.completed", seen)
    assert completed.item_id == committed.item_id and completed.transcript == second.transcript
    assert "conversation.item.input_audio_transcription.failed" not in [e.type for e in seen]
    kinds = [kind for kind, _, _ in stream_of(first)]
    assert kinds == [AsrStreamStart] + [AsrStreamAudio] * 10 + [AsrStreamEnd]
    assert gateway.resent_requests == 1


async def test_an_utterance_whose_worker_dies_mid_speech_goes_on_with_another(make_client, bus_env, question_pcm):
    pcm, speech_start, _ = question_pcm
    head = 48 * (speech_start + 600)  # the first 0.6 s of speech (24 kHz PCM16: 48 bytes a ms)
    async with two_asr_workers(make_client, bus_env) as (connection, gateway, first):
        await stream(connection, pcm[:head])
        started = await until(connection, "input_audio_buffer.speech_started")
        assert await eventually(lambda: any(isinstance(m, AsrStreamAudio) for m, _ in first.held))
        with second_worker(bus_env) as second:
            assert await eventually(lambda: "second-asr" in gateway.board.ready_instances("asr"))
            first.kill()
            assert await eventually(lambda: gateway.board.is_gone("first-asr"))
            await stream(connection, pcm[head:])  # the person speaks on
            await until(connection, "input_audio_buffer.speech_stopped")
            assert await eventually(lambda: has_end(second), timeout=10)
            held, took = stream_of(first), stream_of(second)
            end = next(m for m, _ in second.held if isinstance(m, AsrStreamEnd))
            second.answer_held.set()
            completed = await until(connection, "conversation.item.input_audio_transcription.completed")
            done = await until(connection, "response.done")
    assert completed.item_id == started.item_id and completed.transcript == second.transcript
    assert done.response.status == "completed"
    assert took[:len(held)] == held  # all the lost worker held, then the rest of the utterance
    frames = [index for kind, index, _ in took if kind is AsrStreamAudio]
    assert frames == list(range(len(frames))) and len(frames) > len(held) - 1
    assert end.frames == len(frames)
