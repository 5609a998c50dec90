"""/v1/realtime against the real gateway and bus, scripted stages behind it (tests/fakes):
the openai SDK's own client for conversations, a raw WebSocket for each bad input."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os

import numpy as np
import pytest
from openai import AsyncOpenAI

from gateway.app import GATEWAY
from proto import AsrStreamAudio, AsrStreamEnd, AsrStreamStart
from gateway.realtime import REALTIME
from gateway.realtime.limits import RealtimeSettings
from tests.gateway_harness import SETTINGS, eventually, wait_ready

pytestmark = pytest.mark.timeout(60)

TONE = (np.sin(np.arange(24000) * 2 * np.pi * 220 / 24000) * 8000).astype("<i2").tobytes()  # 1 s, 24 kHz
FIRST_SENTENCE = "Paris is the capital of France."


def settings(stage_timeout_s: float = SETTINGS.stage_timeout_s, **realtime):
    from dataclasses import replace

    return replace(SETTINGS, stage_timeout_s=stage_timeout_s, realtime=RealtimeSettings(**realtime))


@contextlib.asynccontextmanager
async def realtime_session(make_client, **limits):
    """The openai SDK's realtime connection to a fresh gateway, and its session.created."""
    client = await make_client(settings(**limits))
    await wait_ready(client)
    sdk = AsyncOpenAI(api_key="x", websocket_base_url=f"ws://127.0.0.1:{client.server.port}/v1")
    async with sdk.realtime.connect(model="s2s") as connection:
        yield connection, await until(connection, "session.created")


async def until(connection, event_type: str, seen: list | None = None):
    """Events up to and including the first of `event_type` (all kept in `seen`)."""
    async with asyncio.timeout(20):
        while True:
            event = await connection.recv()
            if seen is not None:
                seen.append(event)
            if event.type == event_type:
                return event


async def push_to_talk(connection):
    await connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    updated = await until(connection, "session.updated")
    assert updated.session.audio.input.turn_detection is None


async def say(connection, pcm: bytes = TONE) -> str:
    """Append audio, commit it, and return the user item's transcript."""
    for start in range(0, len(pcm), 9600):
        await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + 9600]).decode())
    await connection.input_audio_buffer.commit()
    committed = await until(connection, "input_audio_buffer.committed")
    seen: list = []
    completed = await until(connection, "conversation.item.input_audio_transcription.completed", seen)
    assert completed.item_id == committed.item_id
    deltas = [e.delta for e in seen if e.type == "conversation.item.input_audio_transcription.delta"]
    assert deltas and completed.transcript.startswith("".join(deltas))  # the fake ASR's partial: "What"
    done = await until(connection, "conversation.item.done")
    assert done.item.id == committed.item_id and done.item.content[0].transcript == completed.transcript
    return completed.transcript


async def type_and_ask(connection, text: str, until_event: str = "response.done"):
    """A typed user message and a response to it; the events up to `until_event`'s first."""
    await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": text}]})
    await connection.response.create()
    return await until(connection, until_event)


async def test_a_spoken_turn_push_to_talk_with_the_sdk(make_client, stages):
    async with realtime_session(make_client) as (connection, created):
        assert created.session.audio.output.format.rate == 24000
        await push_to_talk(connection)
        assert await say(connection) == "What is the capital of France?"
        await connection.response.create()
        seen: list = []
        done = await until(connection, "response.done", seen)
    kinds = [e.type for e in seen]
    assert kinds[:4] == ["response.created", "response.output_item.added", "conversation.item.added",
                         "response.content_part.added"]
    assert done.response.status == "completed"
    audio = b"".join(base64.b64decode(e.delta) for e in seen if e.type == "response.output_audio.delta")
    assert len(audio) == 2 * 4800  # the fake TTS: 0.1 s at 24 kHz per sentence, two sentences
    transcript = "".join(e.delta for e in seen if e.type == "response.output_audio_transcript.delta")
    assert transcript == " ".join(stages.sentences)
    assert done.response.output[0].content[0].transcript == transcript
    # the whole utterance went to one ASR stream, and the LLM got the transcript
    assert stages.asr_streams and stages.asr_streams[0].frames == 5  # 1 s at 16 kHz in 0.2 s frames
    assert stages.llm_requests[-1].history[-1].content == "What is the capital of France?"


def asr_frames(stages, turn: int | None = None) -> list:
    """The streamed audio frames the fake ASR has taken (of one bus turn, or all)."""
    return [m for stage, m in stages.received
            if stage == "asr" and isinstance(m, AsrStreamAudio) and turn in (None, m.turn)]


def asr_starts(stages) -> list:
    return [m for stage, m in stages.received if stage == "asr" and isinstance(m, AsrStreamStart)]


async def test_push_to_talk_audio_reaches_asr_while_it_is_held_and_a_clear_stops_it(make_client, stages):
    """Held audio is recognised as it comes: by the commit, ASR has every frame, so only the
    final decode of what it has not decoded yet is left (not the whole buffer sent and decoded
    then). The partial heard before the commit goes out after it, as the item's."""
    async with realtime_session(make_client) as (connection, created):
        await push_to_talk(connection)
        await stream(connection, TONE)  # 1 s: five 0.2 s frames at ASR's 16 kHz, nothing committed
        assert await eventually(lambda: len(asr_frames(stages)) == 5, 20), asr_frames(stages)
        assert not stages.asr_streams  # not ended: the ASR stream is open, waiting for more
        await connection.input_audio_buffer.commit()
        seen: list = []
        completed = await until(connection, "conversation.item.input_audio_transcription.completed", seen)
        kinds = [e.type for e in seen]
        assert kinds.index("input_audio_buffer.committed") < kinds.index("conversation.item.added") \
            < kinds.index("conversation.item.input_audio_transcription.delta")
        delta = next(e for e in seen if e.type == "conversation.item.input_audio_transcription.delta")
        assert delta.item_id == completed.item_id and delta.delta == "What"  # the fake ASR's partial
        assert completed.transcript == "What is the capital of France?"
        assert [s.frames for s in stages.asr_streams] == [5]
        # held and let go without a commit (the page's too-short press): that ASR stream stops
        await stream(connection, TONE)
        assert await eventually(lambda: len(asr_frames(stages)) == 10, 20), asr_frames(stages)
        held_turn = (asr_frames(stages))[-1].turn
        await connection.input_audio_buffer.clear()
        await until(connection, "input_audio_buffer.cleared")
        assert await eventually(lambda: any(c.turn == held_turn for c in stages.cancels["asr"]), 20)
        # and the next press streams afresh, into a turn of its own
        assert await say(connection) == "What is the capital of France?"
    assert [s.frames for s in stages.asr_streams] == [5, 5]
    assert len({m.turn for m in asr_frames(stages)}) == 3
    # decoded at pauses and the end only: none under way at the release to delay the final
    assert [m.paced for m in asr_starts(stages)] == [False] * 3


async def test_a_two_turn_conversation_remembers_and_instructions_apply(make_client, stages):
    async with realtime_session(make_client) as (connection, created):
        await connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "semantic_vad", "eagerness": "high"}}}})
        detection = (await until(connection, "session.updated")).session.audio.input.turn_detection
        assert (detection.type, detection.eagerness, detection.create_response) == ("semantic_vad", "high", True)
        await connection.session.update(session={"type": "realtime", "instructions": "Answer like a pirate.",
                                                 "audio": {"output": {"voice": "bm_george"}}})
        updated = await until(connection, "session.updated")
        assert updated.session.instructions == "Answer like a pirate."
        assert updated.session.audio.output.voice == "bm_george"
        assert (await type_and_ask(connection, "Hello there.")).response.status == "completed"
        assert (await type_and_ask(connection, "And again?")).response.status == "completed"
    first, second = stages.llm_requests[-2:]
    assert [(m.role, m.content) for m in second.history] == [
        ("user", "Hello there."), ("assistant", " ".join(stages.sentences)), ("user", "And again?")]
    assert second.instructions == "Answer like a pirate."
    assert {r.voice for r in stages.tts_requests[-4:]} == {"bm_george"}


async def test_response_cancel_keeps_only_what_was_delivered(make_client, stages):
    stages.tts_delay = 0.5  # the second sentence comes late: the cancel lands between them
    async with realtime_session(make_client) as (connection, created):
        await type_and_ask(connection, "Tell me about Paris.", "response.output_audio.delta")
        await connection.response.cancel()
        done = await until(connection, "response.done")
        assert done.response.status == "cancelled"
        assert done.response.status_details.reason == "client_cancelled"
        assert done.response.output[0].status == "incomplete"
        assert done.response.output[0].content[0].transcript == FIRST_SENTENCE
        turn = stages.llm_requests[-1].turn
        assert await eventually(lambda: any(c.turn == turn for got in stages.cancels.values() for c in got))
        stages.tts_delay = 0.0
        assert (await type_and_ask(connection, "Go on.")).response.status == "completed"
    assert [m.content for m in stages.llm_requests[-1].history] == ["Tell me about Paris.", FIRST_SENTENCE, "Go on."]


async def test_response_cancel_is_read_while_the_response_waits_for_the_transcript(make_client, stages):
    stages.silent = {"asr"}  # the ASR holds the utterance: its transcript cannot come before the cancel
    # the transcript is held for as long as the cancel's round trip takes: on a loaded machine that
    # can pass the harness's 5 s stage timeout, which is not what this test is about
    async with realtime_session(make_client, stage_timeout_s=60) as (connection, created):
        await push_to_talk(connection)
        for start in range(0, len(TONE), 9600):
            await connection.input_audio_buffer.append(audio=base64.b64encode(TONE[start:start + 9600]).decode())
        await connection.input_audio_buffer.commit()
        committed = await until(connection, "input_audio_buffer.committed")
        await connection.response.create()
        await connection.response.cancel()
        seen: list = []
        done = await until(connection, "response.done", seen)
        assert done.response.status == "cancelled" and done.response.status_details.reason == "client_cancelled"
        assert done.response.output[0].content[0].transcript == ""
        assert "conversation.item.input_audio_transcription.completed" not in [e.type for e in seen]
        assert not stages.llm_requests  # cancelled before the LLM was asked
        # the utterance's end may reach the ASR after the cancel's answer: released before it came,
        # it would be held for ever
        assert await eventually(lambda: any(isinstance(m, AsrStreamEnd) for m, _ in stages.held))
        stages.answer_held.set()  # now the transcript comes, and the socket goes on
        completed = await until(connection, "conversation.item.input_audio_transcription.completed")
        assert completed.item_id == committed.item_id and completed.transcript == stages.transcript
        await connection.response.create()
        assert (await until(connection, "response.done")).response.status == "completed"
    assert [m.content for m in stages.llm_requests[-1].history] == [stages.transcript]


async def test_an_item_goes_where_its_previous_item_id_says(make_client, stages):
    async with realtime_session(make_client) as (connection, created):
        ids = {}

        async def create(text: str, **where):
            await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": text}]}, **where)
            added = await until(connection, "conversation.item.added")
            ids[text] = added.item.id
            return added.previous_item_id

        assert await create("A.") is None
        assert await create("B.") == ids["A."]
        assert await create("C.", previous_item_id=ids["A."]) == ids["A."]  # between A and B
        assert await create("D.", previous_item_id="root") is None  # at the start
        await connection.conversation.item.create(previous_item_id="item_nope", event_id="evt_1", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "E."}]})
        error = await until(connection, "error")
        assert (error.error.code, error.error.param, error.error.event_id) == (
            "item_not_found", "previous_item_id", "evt_1")
        await connection.response.create()
        assert (await until(connection, "response.done")).response.status == "completed"
    assert [m.content for m in stages.llm_requests[-1].history] == ["D.", "A.", "C.", "B."]  # E. was not added


async def test_truncate_changes_what_the_next_answer_knows(make_client, stages):
    async with realtime_session(make_client) as (connection, created):
        done = await type_and_ask(connection, "Tell me about Paris.")
        item_id = done.response.output[0].id
        # each fake sentence is 100 ms of audio: the listener heard the first and half the second
        await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=150)
        truncated = await until(connection, "conversation.item.truncated")
        assert (truncated.item_id, truncated.audio_end_ms) == (item_id, 150)
        await connection.conversation.item.retrieve(item_id=item_id)  # the server's record of it
        retrieved = await until(connection, "conversation.item.retrieved")
        assert retrieved.item.id == item_id and retrieved.item.content[0].transcript == FIRST_SENTENCE + " It is"
        await type_and_ask(connection, "What did you say?")
    heard = stages.llm_requests[-1].history[1]
    assert (heard.role, heard.content) == ("assistant", FIRST_SENTENCE + " It is")


# --- raw WebSocket: bad input gets an error event, and the socket stays open --------------------


async def open_raw(client, **headers):
    ws = await client.ws_connect("/v1/realtime", headers=headers)
    first = await ws.receive_json(timeout=10)
    assert first["type"] == "session.created"  # the session exists before any event is read
    return ws


async def assert_error(ws, code: str) -> dict:
    event = await ws.receive_json(timeout=10)
    assert event["type"] == "error", event
    assert event["error"]["code"] == code, event
    await ws.send_json({"type": "session.update", "session": {"type": "realtime"}})  # still listening
    assert (await ws.receive_json(timeout=10))["type"] == "session.updated"
    return event


def append(pcm: bytes) -> dict:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


@pytest.mark.parametrize("message, code", [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_event"),
    (json.dumps({"type": "response.explode", "event_id": "e1"}), "unknown_event"),
    (json.dumps({"type": "output_audio_buffer.clear"}), "unsupported_event"),
    (json.dumps({"type": "conversation.item.delete", "item_id": "x"}), "item_not_found"),
    (json.dumps({"type": "conversation.item.retrieve", "item_id": "x"}), "item_not_found"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}), "invalid_base64"),
    (json.dumps(append(b"\x00\x01\x02")), "invalid_audio_format"),
    (json.dumps(append(b"RIFF\x24\x00\x00\x00WAVEfmt ")), "invalid_audio_format"),
    (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
    (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
    (json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0,
                 "audio_end_ms": 10}), "item_not_found"),
    (json.dumps({"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}}),
     "invalid_request_error"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}),
     "unsupported_audio_format"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
        "type": "server_vad", "threshold": 5}}}}}), "invalid_request_error"),
    (json.dumps({"type": "response.create"}), None),  # nothing to answer: a failed response, below
])
async def test_bad_input_gets_an_error_event_and_the_socket_stays_open(make_client, stages, message, code):
    client = await make_client(settings())
    await wait_ready(client)
    ws = await open_raw(client)
    await ws.send_str(message)
    if code is None:
        events = []
        while not events or events[-1]["type"] != "response.done":
            events.append(await ws.receive_json(timeout=10))
        assert events[-1]["response"]["status"] == "failed"
        assert "no user message" in events[-1]["response"]["status_details"]["error"]["message"]
    else:
        event = await assert_error(ws, code)
        if "e1" in message:
            assert event["error"]["event_id"] == "e1"
    await ws.close()


async def test_oversize_messages_and_a_full_buffer(make_client, stages):
    client = await make_client(settings(max_message_bytes=50_000, max_buffer_s=0.5))
    await wait_ready(client)
    ws = await open_raw(client)
    await ws.send_str(json.dumps(append(b"\x00" * 60_000)))
    await assert_error(ws, "message_too_large")
    for _ in range(2):
        await ws.send_str(json.dumps(append(b"\x00" * 16_000)))  # 1/3 s each: the second overflows 0.5 s
    await assert_error(ws, "input_audio_buffer_full")
    await ws.send_bytes(b"\x00\x01")
    await assert_error(ws, "invalid_event")
    with contextlib.suppress(ConnectionError):  # the gateway hangs up at the frame's header, mid-send
        await ws.send_str(" " * (client.app[REALTIME].settings.hard_message_bytes + 1))
    closing = await ws.receive(timeout=10)
    assert (closing.type.name, closing.data) == ("CLOSE", 1009) or closing.type.name in ("CLOSED", "ERROR")
    assert await eventually(lambda: not client.app[REALTIME].connections, 10)  # closed, never read whole


async def test_too_many_sessions_from_one_client(make_client, stages):
    client = await make_client(settings(max_sessions_per_client=2))
    await wait_ready(client)
    first, second = await open_raw(client), await open_raw(client)
    third = await client.ws_connect("/v1/realtime")
    event = await third.receive_json(timeout=10)
    assert event["type"] == "error" and event["error"]["code"] == "too_many_sessions"
    assert (await third.receive(timeout=10)).type.name in ("CLOSE", "CLOSED")
    await first.close()
    await eventually(lambda: not client.app[REALTIME].sessions.get("127.0.0.1"))
    fourth = await open_raw(client)  # a closed one makes room
    for ws in (second, fourth):
        await ws.close()


async def test_idle_timeout(make_client, stages):
    client = await make_client(settings(idle_timeout_s=0.3))
    await wait_ready(client)
    ws = await open_raw(client)
    event = await ws.receive_json(timeout=10)
    assert event["type"] == "error" and event["error"]["code"] == "idle_timeout"
    assert (await ws.receive(timeout=10)).type.name in ("CLOSE", "CLOSED")


def masked_text_frame(event: dict) -> bytes:
    """One WebSocket text frame as a client must send it (masked), for a socket the test drives raw."""
    payload = json.dumps(event).encode()
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    mask = os.urandom(4)
    return bytes([0x81]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_client_that_stops_reading_is_closed_and_its_turn_released(make_client, stages, caplog):
    from tests.test_gateway_hostile import raw_connection, request_head

    # ~12 MB of transcript deltas: more than the socket buffers of both ends hold (raw_connection keeps
    # them small), in 12 sentences: 200 such requests at once could fill the TTS worker's queue (100)
    stages.sentences = tuple(f"Sentence {i} " + "word " * 200_000 + "end." for i in range(12))
    caplog.set_level(logging.INFO, logger="s2s.gateway.realtime")
    client = await make_client(settings(write_timeout_s=1.0))
    await wait_ready(client)
    head = request_head(client, "GET", "/v1/realtime", Upgrade="websocket", Connection="Upgrade",
                        Sec_WebSocket_Version="13", Sec_WebSocket_Key=base64.b64encode(b"0" * 16).decode())
    reader, writer = await raw_connection(client, head, rcvbuf=4096)
    try:
        assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # then it reads no more
        writer.write(masked_text_frame({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello."}]}}))
        writer.write(masked_text_frame({"type": "response.create"}))
        await writer.drain()
        gateway, hub = client.app[GATEWAY], client.app[REALTIME]
        assert await eventually(lambda: stages.llm_requests, 10), "the response never started"
        # well before the WebSocket heartbeat (30 s, then 15 s for the pong) would notice
        assert await eventually(lambda: not gateway.live, 20), "a stalled reader held its response's turn"
        ended = [r.getMessage() + f" {getattr(r, 'reason', '')}" for r in caplog.records if "response" in r.getMessage()]
        assert await eventually(lambda: not hub.connections and not hub.sessions, 5), f"still open; {ended}"
        # closed by the write timeout, not by a response that got through (or failed)
        assert "a realtime socket's client stopped reading for 1 s: closing it" in caplog.text, ended
        assert [m.split()[:2] for m in ended] == [["response", "cancelled"]], ended  # its log line says so
    finally:
        writer.close()


async def test_origins(make_client, stages):
    client = await make_client(settings(allowed_origins=("https://app.example",)))
    await wait_ready(client)
    host = f"127.0.0.1:{client.server.port}"
    for origin in (f"http://{host}", "https://app.example"):
        await (await open_raw(client, Origin=origin)).close()
    resp = await client.get("/v1/realtime", headers={"Origin": "https://evil.example", "Connection": "Upgrade",
                                                     "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                                     "Sec-WebSocket-Key": base64.b64encode(b"0" * 16).decode()})
    assert resp.status == 403


async def test_a_closed_socket_cancels_its_response_on_every_stage(make_client, stages):
    stages.tts_delay = 0.5
    client = await make_client(settings())
    await wait_ready(client)
    gateway = client.app[GATEWAY]
    ws = await open_raw(client)
    await ws.send_json({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Talk to me."}]}})
    await ws.send_json({"type": "response.create"})
    while (await ws.receive_json(timeout=10))["type"] != "response.output_audio.delta":
        pass
    await ws.close()
    turn = stages.llm_requests[-1].turn
    assert await eventually(lambda: any(c.turn == turn for got in stages.cancels.values() for c in got))
    assert await eventually(lambda: not gateway.live and not client.app[REALTIME].connections)


# --- hands-free: server_vad (Silero) on spoken audio, and barge-in --------------------------------


def spoken_pcm24(wav_path) -> tuple[bytes, int, int]:
    """A spoken WAV file as 24 kHz PCM16 with 0.3 s of silence before it and 1 s after, and where
    its speech starts and ends in ms."""
    import wave

    with wave.open(str(wav_path)) as w:
        rate, audio = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
    audio = np.interp(np.arange(0, len(audio), rate / 24000), np.arange(len(audio)), audio)
    voiced = np.flatnonzero(np.abs(audio) > 500)
    pcm = np.concatenate([np.zeros(7200), audio, np.zeros(24000)]).astype("<i2").tobytes()
    return pcm, int(300 + voiced[0] * 1000 // 24000), int(300 + voiced[-1] * 1000 // 24000)


@pytest.fixture(scope="module")
def question_pcm(tmp_path_factory):
    from tests.audio import spoken_wav

    return spoken_pcm24(spoken_wav("What is the capital of France?", tmp_path_factory.mktemp("rt") / "q.wav"))


async def stream(connection, pcm: bytes, chunk_ms: int = 100):
    step = 48 * chunk_ms
    for start in range(0, len(pcm), step):
        await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + step]).decode())


async def test_a_spoken_turn_with_server_vad(make_client, stages, question_pcm):
    pcm, speech_start, speech_end = question_pcm
    async with realtime_session(make_client) as (connection, created):
        assert created.session.audio.input.turn_detection.type == "server_vad"  # the default
        await stream(connection, pcm)
        started = await until(connection, "input_audio_buffer.speech_started")
        stopped = await until(connection, "input_audio_buffer.speech_stopped")
        assert speech_start - 300 - 100 <= started.audio_start_ms <= speech_start  # prefix padding 300 ms
        assert speech_end <= stopped.audio_end_ms <= speech_end + 500 + 150  # after 500 ms of silence
        committed = await until(connection, "input_audio_buffer.committed")
        assert committed.item_id == started.item_id == stopped.item_id
        completed = await until(connection, "conversation.item.input_audio_transcription.completed")
        assert completed.transcript == stages.transcript
        done = await until(connection, "response.done")  # create_response: answered unasked
        assert done.response.status == "completed"
    # the utterance streamed to ASR is the speech with its padding, not the whole buffer
    utterance_s = stages.asr_streams[-1].frames * 0.2
    assert abs(utterance_s - (stopped.audio_end_ms - started.audio_start_ms) / 1000) <= 0.2
    assert [m.paced for m in asr_starts(stages)] == [True]  # decoded as it grows: partials while spoken


async def test_barge_in_cancels_the_answer_and_keeps_what_was_heard(make_client, stages, question_pcm):
    pcm, _, _ = question_pcm
    stages.tts_delay = 1.0  # the second sentence comes late: the person interrupts before it
    async with realtime_session(make_client) as (connection, created):
        await type_and_ask(connection, "Tell me about Paris.", "response.output_audio.delta")
        answering = stages.llm_requests[-1].turn
        # a cough: 150 ms of speech, then silence; shorter than the detector's minimum speech
        first_word = pcm[48 * 300:48 * 450]
        await stream(connection, first_word + bytes(48 * 600))
        seen: list = []
        await stream(connection, pcm)
        done = await until(connection, "response.done", seen)
        kinds = [e.type for e in seen]
        assert kinds.count("input_audio_buffer.speech_started") == 1  # the question's, not the cough's
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
        assert done.response.status == "cancelled" and done.response.status_details.reason == "turn_detected"
        assert done.response.output[0].content[0].transcript == FIRST_SENTENCE
        assert await eventually(lambda: any(c.turn == answering for got in stages.cancels.values() for c in got))
        stages.tts_delay = 0.0
        assert (await until(connection, "response.done")).response.status == "completed"  # the new question's
    assert [m.content for m in stages.llm_requests[-1].history] == [
        "Tell me about Paris.", FIRST_SENTENCE, stages.transcript]


async def test_without_interrupt_response_the_next_turn_waits_for_the_answer(make_client, stages, question_pcm):
    pcm, _, _ = question_pcm
    stages.hold_tts = True  # the answer's second sentence waits until the next question is recognised
    async with realtime_session(make_client) as (connection, created):
        await connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "interrupt_response": False}}}})
        await until(connection, "session.updated")
        await type_and_ask(connection, "Tell me about Paris.", "response.output_audio.delta")
        await stream(connection, pcm)
        seen: list = []
        await until(connection, "conversation.item.input_audio_transcription.completed", seen)
        stages.hold_tts = False
        first = await until(connection, "response.done", seen)
        second = await until(connection, "response.done", seen)
    kinds = [e.type for e in seen]
    assert "input_audio_buffer.speech_started" in kinds
    assert first.response.status == "completed"  # heard out, not interrupted
    assert kinds.index("response.created") > kinds.index("response.done")  # one response at a time
    assert second.response.status == "completed" and second.response.id != first.response.id
    assert [m.content for m in stages.llm_requests[-1].history] == [
        "Tell me about Paris.", " ".join(stages.sentences), stages.transcript]


async def test_gateway_shutdown_tells_every_socket_and_closes_it(make_client, stages):
    client = await make_client(settings())
    await wait_ready(client)
    ws = await open_raw(client)
    closing = asyncio.create_task(client.server.close())  # what SIGTERM runs: on_shutdown, cleanup
    event = await ws.receive_json(timeout=10)
    assert event["type"] == "error" and event["error"]["code"] == "shutting_down"
    assert (await ws.receive(timeout=10)).type.name in ("CLOSE", "CLOSED")
    await closing


async def test_every_frame_of_an_utterance_reaches_the_worker_that_holds_it(make_client, stages, bus_env):
    from tests.fakes.fake_stages import FakeStages

    with FakeStages(bus_env, name="second", stages=("asr",)) as second:
        async with realtime_session(make_client) as (connection, created):
            await push_to_talk(connection)
            for _ in range(3):
                await say(connection, TONE * 2)  # 2 s: ten frames each
    utterances: dict[tuple[str, int], set[str]] = {}
    for fake in (stages, second):
        for stage, message in fake.received:
            if stage == "asr" and message.session:
                utterances.setdefault((message.session, message.turn), set()).add(fake.instances["asr"])
    assert len(utterances) == 3 and all(len(workers) == 1 for workers in utterances.values()), utterances
    # and the work was shared out: the two workers each held an utterance
    assert len(set.union(*utterances.values())) == 2


async def test_silence_between_turns_never_fills_the_buffer(make_client, stages, question_pcm):
    pcm, _, _ = question_pcm
    async with realtime_session(make_client, max_buffer_s=6.0) as (connection, created):
        for _ in range(3):  # 12 s of silence, more than the buffer holds, at most 4 s in flight at once
            await stream(connection, bytes(48 * 4000))
            # a turn_detection update is handled in line with the audio: its answer means all is in
            await connection.session.update(session={"type": "realtime", "audio": {"input": {
                "turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}})
            updated = await until(connection, "session.updated")
            assert updated.session.audio.input.turn_detection.idle_timeout_ms is None  # not honoured: said so
        await stream(connection, pcm)
        seen: list = []
        started = await until(connection, "input_audio_buffer.speech_started", seen)
        await until(connection, "response.done", seen)
    assert "error" not in [e.type for e in seen]
    assert started.audio_start_ms > 12_000  # positions still count every appended sample




async def test_a_deleted_item_is_neither_answered_nor_remembered(make_client, stages, question_pcm):
    """What a client rejects (its echo guard: the assistant's own voice) leaves the conversation:
    deleted while its transcript is still coming, it is never published, answered or read by the LLM."""
    pcm, _, _ = question_pcm
    stages.silent.add("asr")  # the transcript comes only once the item is deleted
    async with realtime_session(make_client) as (connection, created):
        await connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "create_response": True, "interrupt_response": False}}}})
        await until(connection, "session.updated")
        seen: list = []
        await stream(connection, pcm)
        committed = await until(connection, "input_audio_buffer.committed", seen)
        await connection.conversation.item.delete(item_id=committed.item_id)
        deleted = await until(connection, "conversation.item.deleted", seen)
        assert deleted.item_id == committed.item_id
        await connection.conversation.item.retrieve(item_id=committed.item_id)
        assert (await until(connection, "error", seen)).error.code == "item_not_found"
        stages.silent.discard("asr")
        stages.answer_held.set()
        await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Hello there."}]})
        # response.create waits for the transcript still coming: what the deleted item did, it did by now
        await connection.response.create()
        done = await until(connection, "response.done", seen)
        assert done.response.status == "completed"
    kinds = [e.type for e in seen]
    assert "conversation.item.input_audio_transcription.completed" not in kinds, kinds
    assert kinds.count("response.created") == 1, kinds  # the typed question's only
    assert [(m.role, m.content) for m in stages.llm_requests[-1].history] == [("user", "Hello there.")]
