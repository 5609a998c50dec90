"""One /v1/realtime socket: its session, its conversation, the audio it streams in, the
responses it hears. Events in and out follow gateway/realtime/protocol.py.

Three kinds of work run at once and never block the reader: the input (appended audio in order:
turn detection, then the utterance streamed to ASR), transcriptions (awaiting their final
transcript, published in item order), and at most one response (LLM and TTS, driven by the
gateway's own turn loop). A closed socket cancels all of it on every stage.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

from aiohttp import WSMsgType, web

from gateway.conversations import Conversation
from gateway.http import write_or_abort
from gateway.realtime.detection import make_detector
from gateway.realtime.protocol import (SAMPLE_RATE, ClientError, Item, audio_ms, cancelled, decode_audio,
                                       error_event, failed, new_id, parse_client_event, response_object,
                                       user_text_of)
from gateway.realtime.session import SessionConfig
from gateway.listening import Resampler24kTo16k, SpeechStarted, SpeechStopped, resample_24k_to_16k
from gateway.realtime.transcription import Utterance
from gateway.turn import TurnState
from proto import ChatMessage, events
from services.personas import HISTORY_MESSAGES, PERSONAS
from services.runtime.logs import log_turn

log = logging.getLogger("s2s.gateway.realtime")

MIN_COMMIT_MS = 100  # the protocol's least audio in a commit
SPEECH_TAIL_MS = 150  # audio kept past the detector's end of speech for the ASR
# With turn detection on and nobody speaking, the buffer keeps only this much recent audio: enough
# for a start the detector dates back (its minimum speech, a gap, the prefix padding), so hours
# of silence between turns never fill it.
LISTENING_KEEP_MS = 5000
MAX_ITEMS = 200  # conversation items kept per socket (the LLM gets the last HISTORY_MESSAGES)


class Connection:
    def __init__(self, gateway, hub, request: web.Request, ws: web.WebSocketResponse, client: str):
        self.gateway, self.hub, self.request, self.ws, self.client = gateway, hub, request, ws, client
        self.settings = hub.settings
        self.conversation = Conversation(new_id("conv"))  # the bus session of all its turns
        self.config = SessionConfig(new_id("sess"))
        self.items: list[Item] = []
        self.send_lock = asyncio.Lock()
        self.closed = False
        # input: appended audio and buffer commands, handled in order by one task
        self.inputs: asyncio.Queue = asyncio.Queue()
        self.queued = 0  # bytes of appended audio in `inputs`, not yet handled
        self.buffer = bytearray()  # 24 kHz PCM16 not yet committed
        self.consumed = 0  # bytes of the stream before the buffer (committed, cleared or trimmed)
        self.detector = None
        self.resampler = Resampler24kTo16k()
        self.utterance: Utterance | None = None  # streaming to ASR while speech goes on
        self.speech_item: str | None = None
        self.transcribing: asyncio.Task | None = None  # the latest; each waits for the one before
        self.response: "Response | None" = None
        self.tasks: set[asyncio.Task] = set()
        self.partials: dict[str, str] = {}  # item id -> the partial transcript sent so far
        self.held_partial: str | None = None  # push-to-talk: the last partial before the commit

    # --- plumbing --------------------------------------------------------------------------------

    async def send(self, event: dict) -> bool:
        if self.closed or self.ws.closed:
            return False
        event.setdefault("event_id", new_id("event"))
        async with self.send_lock:
            sent = await write_or_abort(self.request, self.ws.send_json(event), self.settings.write_timeout_s,
                                        "a realtime socket")
        self.closed = self.closed or not sent
        return sent

    async def error(self, exc: ClientError) -> None:
        await self.send(error_event(exc))

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("realtime task failed", exc_info=task.exception())

    def open_turn(self):
        """A bus turn of this socket (an utterance's ASR, or a response), registered so that its
        results, a stage's departure and shutdown reach it."""
        return self.gateway.open_turn(self.conversation, self.conversation.next_turn(), f"realtime:{self.client}")

    def close_turn(self, turn, finished: bool, reason: str = "") -> None:
        """The turn is over here; unfinished, its work stops on each worker that holds a part."""
        self.gateway.live.pop((self.conversation.id, turn.number), None)
        if not finished:
            self.gateway.dispatch.cancel(self.conversation.id, turn.number, reason or "cancelled")
        self.gateway.dispatch.end_turn(self.conversation.id, turn.number)

    # --- the socket's life -------------------------------------------------------------------------

    async def run(self) -> None:
        self.detector, self.config.turn_detection_effective = make_detector(self.hub.listening, "default", 0)
        self.config.turn_detection = self.config.turn_detection_effective
        await self.send({"type": "session.created", "session": self.config.as_dict()})
        inputs = self.spawn(self._input_loop())
        try:
            while not self.ws.closed:
                try:
                    message = await self.ws.receive(timeout=self.settings.idle_timeout_s)
                except asyncio.TimeoutError:
                    if self._busy():
                        continue
                    await self.error(ClientError(f"No event for {self.settings.idle_timeout_s:.0f} s: closing.",
                                                 code="idle_timeout"))
                    break
                if message.type == WSMsgType.TEXT:
                    await self.on_text(message.data)
                elif message.type == WSMsgType.BINARY:
                    await self.error(ClientError("Events are JSON text messages (audio goes base64 in "
                                                 "input_audio_buffer.append).", code="invalid_event"))
                elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                elif message.type == WSMsgType.ERROR:
                    log.info("realtime socket error: %s", self.ws.exception())
                    break
        finally:
            self.closed = True
            inputs.cancel()
            await self.stop_all("socket closed")

    def _busy(self) -> bool:
        return self.response is not None or (self.transcribing is not None and not self.transcribing.done())

    async def stop_all(self, reason: str) -> None:
        """Everything this socket started stops, here and on every stage."""
        if self.response is not None:
            self.response.turn.cancel(reason)
        self._drop_utterance(reason)
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for key in [k for k in self.gateway.live if k[0] == self.conversation.id]:
            turn = self.gateway.live[key]
            self.close_turn(turn, False, reason)
            turn.cancel(reason)

    # --- client events ---------------------------------------------------------------------------

    async def on_text(self, text: str) -> None:
        try:
            if len(text.encode()) > self.settings.max_message_bytes:
                raise ClientError(f"A message is at most {self.settings.max_message_bytes} bytes.",
                                  code="message_too_large")
            event = parse_client_event(text)
            handler = getattr(self, "on_" + event["type"].replace(".", "_"))
            await handler(event)
        except ClientError as exc:
            if exc.event_id is None and "event" in locals() and isinstance(event.get("event_id"), str):
                exc.event_id = event["event_id"]
            await self.error(exc)

    async def on_session_update(self, event: dict) -> None:
        given_detection = self.config.update(event.get("session"))
        if given_detection:
            self.inputs.put_nowait(("detection", self.config.turn_detection))
        else:
            await self.send({"type": "session.updated", "session": self.config.as_dict()})

    async def on_input_audio_buffer_append(self, event: dict) -> None:
        pcm = decode_audio(event, self.settings.max_message_bytes)
        if self.queued + len(pcm) > self.buffer_cap():  # sent faster than turn detection keeps up
            raise ClientError("Audio is arriving faster than it can be handled: slow down.",
                              code="input_audio_buffer_full")
        self.queued += len(pcm)
        self.inputs.put_nowait(("append", pcm, event.get("event_id")))

    async def on_input_audio_buffer_commit(self, event: dict) -> None:
        self.inputs.put_nowait(("commit", event.get("event_id")))

    async def on_input_audio_buffer_clear(self, event: dict) -> None:
        self.inputs.put_nowait(("clear",))

    async def on_conversation_item_create(self, event: dict) -> None:
        text = user_text_of(event.get("item"))
        item = Item(id=event["item"].get("id") or new_id("item"), role="user", text=text)
        if any(i.id == item.id for i in self.items):
            raise ClientError(f"An item with id {item.id!r} exists.", param="item.id")
        await self.add_item(item, done=True, position=self._position_after(event.get("previous_item_id")))

    def _position_after(self, previous_id: object) -> int:
        """Where an item goes given its previous_item_id: absent or null, at the end; "root", at
        the start; else just after that item (an id the conversation lacks is an error)."""
        if previous_id is None:
            return len(self.items)
        if previous_id == "root":
            return 0
        for index, item in enumerate(self.items):
            if item.id == previous_id:
                return index + 1
        raise ClientError(f"No item {previous_id!r} in the conversation to insert after.", code="item_not_found",
                          param="previous_item_id")

    async def on_conversation_item_truncate(self, event: dict) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        item = next((i for i in self.items if i.id == item_id), None)
        if item is None or item.role != "assistant":
            raise ClientError(f"No assistant item {item_id!r} to truncate.", code="item_not_found", param="item_id")
        if event.get("content_index", 0) != 0:
            raise ClientError("An assistant item has one content part (0).", param="content_index")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise ClientError("`audio_end_ms` must be a non-negative integer.", param="audio_end_ms")
        if self.response is not None and self.response.item.id == item_id:
            raise ClientError("That item is still being spoken: cancel the response first.",
                              code="item_in_progress", param="item_id")
        spoken_ms = item.pieces[-1][0] if item.pieces else 0
        if end_ms > spoken_ms:
            raise ClientError(f"`audio_end_ms` {end_ms} is past the item's audio ({spoken_ms} ms).",
                              code="invalid_audio_end_ms", param="audio_end_ms")
        item.text = heard_text(item.pieces, end_ms)
        item.pieces = [(end, text) for end, text in item.pieces if end <= end_ms] + [(end_ms, "")]
        await self.send({"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0,
                         "audio_end_ms": end_ms})

    def find_item(self, event: dict) -> Item:
        item_id = event.get("item_id")
        item = next((i for i in self.items if i.id == item_id), None)
        if item is None:
            raise ClientError(f"No item {item_id!r} in the conversation.", code="item_not_found", param="item_id")
        return item

    async def on_conversation_item_delete(self, event: dict) -> None:
        """The item leaves the conversation (and so what the LLM reads); one still being
        transcribed is dropped when its transcript comes, one being spoken needs a cancel first."""
        item = self.find_item(event)
        if self.response is not None and self.response.item.id == item.id:
            raise ClientError("That item is still being spoken: cancel the response first.",
                              code="item_in_progress", param="item_id")
        self.items.remove(item)
        self.partials.pop(item.id, None)
        await self.send({"type": "conversation.item.deleted", "item_id": item.id})

    async def on_conversation_item_retrieve(self, event: dict) -> None:
        await self.send({"type": "conversation.item.retrieved", "item": self.find_item(event).as_dict()})

    async def on_response_create(self, event: dict) -> None:
        if self.response is not None:
            raise ClientError("A response is in progress: wait for response.done or cancel it.",
                              code="conversation_already_has_active_response")
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise ClientError("`response` must be an object.", param="response")
        instructions = params.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ClientError("`instructions` must be a string.", param="response.instructions")
        # the question still being recognised is answered once its transcript is in; the response
        # waits for it, not this reader (a response.cancel sent meanwhile is read at once)
        self.start_response(instructions or None, after=self.transcribing)

    async def on_response_cancel(self, event: dict) -> None:
        response = self.response
        wanted = event.get("response_id")
        if response is None or (wanted and wanted != response.id):
            raise ClientError("No response in progress" + (f" with id {wanted!r}." if wanted else "."),
                              code="response_cancel_not_active")
        response.cancel("client_cancelled")

    # --- the conversation ----------------------------------------------------------------------------

    def insert_item(self, item: Item, position: int | None = None) -> str | None:
        """Into the conversation at `position` (None: at the end); the id of the item before it."""
        position = len(self.items) if position is None else position
        previous = self.items[position - 1].id if position else None
        self.items.insert(position, item)
        del self.items[:-MAX_ITEMS]
        return previous

    async def add_item(self, item: Item, done: bool, position: int | None = None) -> None:
        """Into the conversation at `position` (None: at the end), and the client is told where."""
        previous = self.insert_item(item, position)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_dict()})
        if done:
            await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                             "item": item.as_dict()})

    def history(self) -> list[ChatMessage] | None:
        """What the LLM reads: the items with text, the last HISTORY_MESSAGES of them; None when
        there is no user message to answer after the last reply."""
        said = [ChatMessage(i.role, i.text) for i in self.items if i.text and i.status != "in_progress"]
        if not said or said[-1].role != "user":
            return None
        return said[-HISTORY_MESSAGES:]

    def start_response(self, instructions: str | None = None, after: asyncio.Task | None = None) -> None:
        self.response = Response(self, instructions, after)
        self.spawn(self.response.run())

    # --- audio in ------------------------------------------------------------------------------------

    async def _input_loop(self) -> None:
        while True:
            command, *args = await self.inputs.get()
            try:
                await getattr(self, "_input_" + command)(*args)
            except ClientError as exc:
                await self.error(exc)
            except Exception:  # a bug must not leave the socket deaf to audio: say so, go on
                log.exception("realtime input %s failed", command)
                await self.error(ClientError("The gateway failed on this audio.", code="server_error",
                                             type_="server_error"))

    async def _input_detection(self, requested: dict | None) -> None:
        """A session.update that sets turn detection: takes effect between appends."""
        if self.speech_item is not None:
            await self._speech_stopped(None)
        else:  # push-to-talk audio not committed: it stays in the buffer, no longer streamed to ASR
            self._drop_utterance("turn detection changed")
        self.resampler = Resampler24kTo16k()
        self.detector, self.config.turn_detection_effective = make_detector(self.hub.listening, requested,
                                                                            self.position_ms())
        await self.send({"type": "session.updated", "session": self.config.as_dict()})

    def buffer_cap(self) -> int:
        return int(self.settings.max_buffer_s * SAMPLE_RATE) * 2

    async def _input_append(self, pcm: bytes, event_id: str | None) -> None:
        self.queued -= len(pcm)
        if self.detector is not None and self.utterance is None:
            self._forget_before(self.position_ms() - LISTENING_KEEP_MS)
        if len(self.buffer) + len(pcm) > self.buffer_cap():
            raise ClientError(f"The input audio buffer holds at most {self.settings.max_buffer_s:.0f} s: commit "
                              "or clear it.", code="input_audio_buffer_full", event_id=event_id)
        self.buffer += pcm
        if self.detector is None and self.utterance is None:
            # push-to-talk: the audio streams to ASR while it is held, so that at the commit only
            # what ASR has not decoded yet is left (not the whole buffer, sent and decoded then)
            self.resampler.reset()
            await self._open_utterance(b"", paced=False)
        pcm16k = self.resampler.process(pcm)
        if self.utterance is not None:
            self.utterance.feed(pcm16k)
            self.utterance.drain_partials()
        if self.detector is None:
            return
        events = await asyncio.get_running_loop().run_in_executor(self.hub.executor, self.detector.feed, pcm16k)
        for event in events:
            if isinstance(event, SpeechStarted):
                await self._speech_started(event.audio_start_ms)
            elif isinstance(event, SpeechStopped) and self.speech_item is not None:
                await self._speech_stopped(event)

    @property
    def buffer_start_ms(self) -> int:
        """Where the buffer starts in all the audio appended so far."""
        return audio_ms(self.consumed)

    def position_ms(self) -> int:
        """Where the stream is: all the audio appended so far, in ms (the protocol's timeline)."""
        return audio_ms(self.consumed + len(self.buffer))

    def _forget_before(self, at_ms: int) -> None:
        """Drop the buffered audio before a stream position (it will never be part of a turn)."""
        cut = self._cut(at_ms)
        del self.buffer[:cut]
        self.consumed += cut

    def _cut(self, at_ms: int) -> int:
        """Byte offset of a stream position in the buffer (whole samples, within it)."""
        offset = (at_ms - self.buffer_start_ms) * SAMPLE_RATE * 2 // 1000
        return min(max(0, offset - offset % 2), len(self.buffer))

    async def _speech_started(self, start_ms: int) -> None:
        self.speech_item = new_id("item")
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms,
                         "item_id": self.speech_item})
        if self.response is not None and (self.config.turn_detection_effective or {}).get("interrupt_response", True):
            self.response.cancel("turn_detected")
        # the utterance starts at the detector's start (its prefix padding included): the buffer
        # is trimmed to there and streamed to ASR from it
        self._forget_before(start_ms)
        await self._open_utterance(bytes(self.buffer))

    async def _open_utterance(self, pcm24: bytes, paced: bool = True) -> None:
        """Streams the utterance to ASR from pcm24 on (paced: decoded as it grows, for partials;
        else only at pauses and the end). Its partial transcripts go out once it is an item:
        push-to-talk audio becomes one at the commit (until then, speech_item is None)."""
        turn = self.open_turn()
        self.held_partial = None
        # its frames are kept for a re-send up to the buffer's cap (at ASR's 16 kHz)
        self.utterance = Utterance(self.gateway, turn, self._partials_of(self.speech_item),
                                   keep_bytes=self.buffer_cap() * 2 // 3, paced=paced)
        await self.utterance.begin()
        self.utterance.feed(resample_24k_to_16k(pcm24))

    async def _speech_stopped(self, event: SpeechStopped | None) -> None:
        """The detector says the turn ended (None: turn detection was switched off mid-speech)."""
        if event is None:
            await self._commit(self.speech_item, -1.0, respond=False)
            return
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": event.audio_end_ms,
                         "item_id": self.speech_item})
        # the last loud frame, plus a little: a soft final consonant ("-ts") scores as silence
        speech_end_ms = event.audio_end_ms if event.speech_end_ms is None else \
            min(event.speech_end_ms + SPEECH_TAIL_MS, event.audio_end_ms)
        create = (self.config.turn_detection_effective or {}).get("create_response", True)
        await self._commit(self.speech_item, (speech_end_ms - self.buffer_start_ms) / 1000, respond=create,
                           end_ms=event.audio_end_ms)

    async def _input_commit(self, event_id: str | None) -> None:
        if (self.utterance is None or self.speech_item is None) and audio_ms(len(self.buffer)) < MIN_COMMIT_MS:
            raise ClientError(f"The buffer holds {audio_ms(len(self.buffer))} ms of audio; a commit needs at "
                              f"least {MIN_COMMIT_MS} ms.", code="input_audio_buffer_commit_empty",
                              event_id=event_id)
        item_id = self.speech_item or new_id("item")
        if self.utterance is None:
            self.speech_item = item_id
            await self._open_utterance(bytes(self.buffer), paced=False)  # all of it at once: one decode
        elif self.speech_item is None:  # push-to-talk audio, streamed to ASR since its first append
            self.utterance.on_partial = self._partials_of(item_id)
        await self._commit(item_id, -1.0, respond=False)

    async def _commit(self, item_id: str, speech_end_s: float, respond: bool, end_ms: int | None = None) -> None:
        """The utterance is over: its audio ends at end_ms (the detector's; None: all buffered),
        and what came after stays in the buffer for the next."""
        utterance = self.utterance
        self.utterance, self.speech_item = None, None
        cut = len(self.buffer) if end_ms is None else self._cut(end_ms)
        self.consumed += cut
        del self.buffer[:cut]
        # the item and its transcription exist before the client hears of them: a response.create
        # sent on `committed` finds both
        item = Item(id=item_id, role="user", audio=True, transcribed=False)
        previous = self.insert_item(item)
        announced = asyncio.Event()
        before = self.transcribing
        self.transcribing = self.spawn(self._transcribe(utterance, item, speech_end_s, before, respond, announced))
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_dict()})
        if self.held_partial is not None:  # push-to-talk: what ASR had heard before the commit
            self._partial(item_id, self.held_partial)
            self.held_partial = None
        announced.set()

    async def _transcribe(self, utterance: Utterance, item: Item, speech_end_s: float, before, respond: bool,
                          announced: asyncio.Event):
        try:
            text, problem = await utterance.finish(speech_end_s)
        finally:
            self.close_turn(utterance.turn, True)
        await announced.wait()  # its transcript follows the item's conversation.item.added
        if before is not None:
            await asyncio.wait([before])  # items are published in the order they were spoken
        if item not in self.items:
            return  # deleted meanwhile (conversation.item.delete): nothing to publish or answer
        item.text, item.transcribed = text, True
        self.partials.pop(item.id, None)
        if problem is None:
            if self.config.transcription is not None:
                await self.send({"type": "conversation.item.input_audio_transcription.completed",
                                 "item_id": item.id, "content_index": 0, "transcript": text,
                                 "usage": {"type": "duration", "seconds": round(utterance.audio_s, 3)}})
        else:
            kind, stage, message = problem
            await self.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": item.id,
                             "content_index": 0, "error": {"type": kind, "code": stage, "message": message}})
        previous = self.items[self.items.index(item) - 1].id if self.items.index(item) else None
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_dict()})
        if respond and problem is None and text:  # not awaited: a response waits for this task
            self.spawn(self._answer_when_free())

    async def _answer_when_free(self) -> None:
        """A detected turn is answered once the response still playing (interrupt_response
        false) has ended; not when the person has started speaking again meanwhile (the turn
        that ends next is answered with both in the history)."""
        while self.response is not None:
            await self.response.ended.wait()
        if self.speech_item is None and self.history() is not None:  # not answered meanwhile
            self.start_response()

    def _partials_of(self, item_id: str | None):
        """What an utterance does with its partial transcripts: sends them as this item's (none
        yet: keeps the last, which goes out once the commit made it an item)."""
        if item_id is None:
            return lambda text: setattr(self, "held_partial", text)
        return lambda text: self._partial(item_id, text)

    def _partial(self, item_id: str, text: str) -> None:
        """A partial transcript: the protocol's deltas only append, so only what extends the text
        sent so far goes out (the completed event carries the final text)."""
        sent = self.partials.get(item_id, "")
        if self.config.transcription is None or not text.startswith(sent) or text == sent:
            return
        self.partials[item_id] = text
        self.spawn(self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                              "content_index": 0, "delta": text[len(sent):]}))

    def _drop_utterance(self, reason: str) -> None:
        """The utterance streaming to ASR will not be committed: its ASR work stops."""
        if self.utterance is not None:
            self.utterance.turn.cancel(reason)
            self.close_turn(self.utterance.turn, False, reason)
            self.utterance, self.speech_item = None, None

    async def _input_clear(self) -> None:
        self._drop_utterance("cleared")
        self.consumed += len(self.buffer)
        self.buffer.clear()
        if self.detector is not None:
            self.detector.reset()
        await self.send({"type": "input_audio_buffer.cleared"})


def heard_text(pieces: list[tuple[int, str]], end_ms: int) -> str:
    """The words of the audio up to end_ms: whole pieces that ended by then, and of the piece
    playing at the cut, the share of its words that its played share of audio holds."""
    words, start = [], 0
    for end, text in pieces:
        if end <= end_ms:
            words += text.split()
        else:
            if end_ms > start:
                part = text.split()
                words += part[:round(len(part) * (end_ms - start) / (end - start))]
            break
        start = end
    return " ".join(words)


class Response:
    """One spoken answer: the conversation so far to the LLM, its sentences to TTS, the audio to
    the client with its transcript in step. Cancelled by response.cancel or by speech that starts
    (barge-in); the conversation keeps only the text of the audio delivered before the cut."""

    def __init__(self, connection: Connection, instructions: str | None, after: asyncio.Task | None = None):
        self.connection = connection
        self.after = after  # the transcription to wait for before the LLM reads the conversation
        self.id = new_id("resp")
        self.item = Item(id=new_id("item"), role="assistant", audio=True, status="in_progress", pieces=[])
        self.instructions = instructions
        self.turn = connection.open_turn()
        self.audio_bytes = 0
        self.reason = ""  # why it was cancelled: turn_detected | client_cancelled
        self.ended = asyncio.Event()
        self.outcome: dict | None = None  # status details once known

    def cancel(self, reason: str) -> None:
        if not self.turn.cancelled.is_set():
            self.reason = reason
            self.turn.cancel(reason)
            # on every stage at once (each worker holding a part), not when the turn loop next wakes
            self.connection.gateway.dispatch.cancel(self.connection.conversation.id, self.turn.number, reason)

    def _ids(self) -> dict:
        return {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}

    async def run(self) -> None:
        c = self.connection
        finished = False
        try:
            await c.send({"type": "response.created", "response": self._object("in_progress", [])})
            await c.send({"type": "response.output_item.added", "response_id": self.id, "output_index": 0,
                          "item": self.item.as_dict()})
            await c.add_item(self.item, done=False)
            await c.send({"type": "response.content_part.added", **self._ids(),
                          "part": {"type": "audio", "transcript": ""}})
            if not await self._transcribed():
                self.outcome = cancelled(self.reason or "client_cancelled")
                return
            history = c.history()
            if history is None:
                self.outcome = failed("invalid_request_error", None,
                                      "There is no user message to answer after the last reply.")
            else:
                persona = PERSONAS[c.config.persona]
                state = TurnState(c.conversation.id, self.turn.number, persona.key, c.config.voice, history[:-1],
                                  time.monotonic, max_new_tokens=c.config.max_output_tokens,
                                  instructions=self.instructions or c.config.instructions or "", wav_chunks=False)
                finished = await c.gateway.run_turn(self.turn, state, state.start_reply(history[-1].content), self,
                                                    lambda: c.closed or c.ws.closed)
        finally:
            c.close_turn(self.turn, finished, self.reason or "response ended")
            self._log_end(finished)
            try:
                if not c.closed:
                    await self._finish()
            finally:  # only now may another response start: its events follow this one's response.done
                c.response = None
                self.ended.set()

    def _log_end(self, finished: bool) -> None:
        """One line per response, as an upload's turn has its done or error line: how it ended and why."""
        outcome = self.outcome or cancelled(self.reason or ("socket closed" if self.connection.closed else ""))
        failure = outcome.get("error") or {}
        log_turn(log, f"response {outcome['type']}", self.connection.conversation.id, self.turn.number,
                 level=logging.WARNING if outcome["type"] == "failed" else logging.INFO, finished=finished,
                 reason=outcome.get("reason") or failure.get("message", ""), stage=failure.get("code"),
                 audio_s=round(self.audio_bytes / (2 * SAMPLE_RATE), 3), client_gone=self.connection.closed)

    async def _transcribed(self) -> bool:
        """Wait for the transcription still running when the response was asked for; False when
        the response was cancelled meanwhile."""
        if self.after is not None and not self.after.done():
            cancelled_wait = asyncio.ensure_future(self.turn.cancelled.wait())
            try:
                await asyncio.wait([self.after, cancelled_wait], return_when=asyncio.FIRST_COMPLETED)
            finally:
                cancelled_wait.cancel()
        return not self.turn.cancelled.is_set()

    # --- the turn loop's sink (what SseWriter is for an upload's turn) -----------------------------

    async def send(self, event: events.SseEvent, data: dict) -> bool:
        c = self.connection
        if event == events.CHUNK:
            if data["text"]:
                await c.send({"type": "response.output_audio_transcript.delta", **self._ids(), "delta":
                              (" " if self.item.text else "") + data["text"]})
                self.item.text = (self.item.text + " " + data["text"]).strip()
            pcm = data["pcm"]
            self.audio_bytes += len(pcm)
            piece_text = data["text"]
            if self.item.pieces and not piece_text:  # a later part of the same sentence
                end, text = self.item.pieces.pop()
                piece_text = text
            self.item.pieces.append((audio_ms(self.audio_bytes), piece_text))
            return await c.send({"type": "response.output_audio.delta", **self._ids(),
                                 "delta": base64.b64encode(pcm).decode("ascii")})
        if event == events.DONE:
            self.outcome = {"type": "completed"}
        elif event == events.ERROR:
            if data.get("kind") == "cancelled":
                self.outcome = cancelled(self.reason or "client_cancelled")
            else:
                self.outcome = failed(data.get("kind") or "error", data.get("stage"), data.get("message", ""))
        return not (c.closed or c.ws.closed)

    async def keepalive(self, every_s: float) -> bool:
        return not (self.connection.closed or self.connection.ws.closed)

    # --- the end ------------------------------------------------------------------------------------

    def _object(self, status: str, output: list, details: dict | None = None) -> dict:
        c = self.connection
        return response_object(self.id, c.conversation.id, status, c.config.voice, output, details)

    async def _finish(self) -> None:
        c = self.connection
        outcome = self.outcome or cancelled(self.reason or "client_cancelled")
        status = outcome["type"]
        self.item.status = "completed" if status == "completed" else "incomplete"
        if status != "completed" and not self.item.text:
            c.items.remove(self.item)  # nothing was heard: the conversation does not hold it
        transcript = self.item.text
        await c.send({"type": "response.output_audio.done", **self._ids()})
        await c.send({"type": "response.output_audio_transcript.done", **self._ids(), "transcript": transcript})
        await c.send({"type": "response.content_part.done", **self._ids(),
                      "part": {"type": "audio", "transcript": transcript}})
        await c.send({"type": "response.output_item.done", "response_id": self.id, "output_index": 0,
                      "item": self.item.as_dict()})
        await c.send({"type": "conversation.item.done", "previous_item_id": None, "item": self.item.as_dict()})
        await c.send({"type": "response.done", "response": self._object(status, [self.item.as_dict()], outcome)})
