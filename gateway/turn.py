"""One turn as a pure state machine: bus messages in, actions out. No sockets, no HTTP.

Order of a turn: asr.request -> asr.final -> llm.request -> llm.sentence* (each sent on to TTS
at once) -> tts.audio*/tts.done per sentence -> llm.done -> `done` once every sentence is spoken.
Chunks are released to the browser strictly in sentence order, whatever order results come in.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from proto import (MAX_NEW_TOKENS, AsrFinal, AsrRequest, ChatMessage, Envelope, LlmDone, LlmRequest, LlmSentence,
                   StageError, TtsAudio, TtsDone, TtsRequest)
from proto import events
from proto.events import SseEvent, TurnErrorKind
from services.runtime.audio import wav_bytes


@dataclass
class Send:
    stage: str
    message: Envelope
    payload: tuple[bytes, ...] = ()


@dataclass
class Emit:
    event: SseEvent
    data: dict


@dataclass
class Finish:
    ok: bool
    user_text: str = ""
    reply_text: str = ""


Action = Send | Emit | Finish


@dataclass
class _Sentence:
    text: str
    parts: dict[int, TtsAudio] = field(default_factory=dict)
    pcm: dict[int, bytes] = field(default_factory=dict)
    released: int = 0  # parts already emitted as chunks
    total_parts: int | None = None  # known once tts.done arrives
    compute_s: float = 0.0


class TurnState:
    def __init__(self, session: str, turn: int, persona: str, voice: str, history: list[ChatMessage],
                 clock, max_new_tokens: int = MAX_NEW_TOKENS, instructions: str = "", wav_chunks: bool = True):
        self.session, self.turn = session, turn
        self.persona, self.voice = persona, voice
        self.instructions = instructions  # "" : the persona's own prompt
        # chunks as base64 WAV files (SSE) or, for the realtime socket, as raw PCM with its rate
        self.wav_chunks = wav_chunks
        self.history = history
        self.max_new_tokens = max_new_tokens
        self.clock = clock
        self.started = clock()
        self.phase = "asr"  # asr -> llm -> ended
        self.user_text = ""
        self.sentences: list[_Sentence] = []
        self.next_sentence = 0  # first sentence not fully released
        self.chunks = 0
        self.llm_done: LlmDone | None = None
        self.timing: dict[events.StageTiming | events.TurnTiming, float] = {}
        self.ended = False
        # kept until the turn ends, to send again if the stage that holds it is restarted
        self.pcm = b""
        self.llm_request: LlmRequest | None = None

    # --- helpers -------------------------------------------------------------------------------

    def _ids(self, message: Envelope) -> Envelope:
        message.session, message.turn = self.session, self.turn
        return message

    def waiting_on(self) -> str | None:
        """The stage this turn is waiting for now, for timeouts and error messages."""
        if self.ended:
            return None
        if self.phase == "asr":
            return "asr"
        if self.llm_done is None:
            return "llm"
        return "tts"

    def _end(self) -> None:
        self.ended = True
        self.pcm, self.llm_request = b"", None  # nothing will be sent again

    def _end_error(self, message: str, stage: str | None, kind: TurnErrorKind) -> list[Action]:
        """kind: metrics and clients count by it."""
        self._end()
        return [Emit(*events.error(message, kind, stage)), Finish(ok=False)]

    # --- inputs --------------------------------------------------------------------------------

    def start(self, pcm: bytes) -> list[Action]:
        self.pcm = pcm
        return self.requests_on("asr")

    def start_reply(self, user_text: str) -> list[Action]:
        """Answer a transcript the caller already has (the realtime socket recognises speech
        itself): the turn starts at the LLM."""
        return self._on_transcript(AsrFinal(text=user_text, compute_s=0.0, audio_s=0.0))

    def requests_on(self, stage: str) -> list[Send]:
        """The turn's requests the stage has not finished, as they were sent. Sent again to a
        restarted stage, what already came back is dropped: sentences and parts by their index."""
        if self.ended:
            return []
        if stage == "asr" and self.phase == "asr":
            return [Send("asr", self._ids(AsrRequest(sample_rate=16000)), (self.pcm,))]
        if stage == "llm" and self.phase == "llm" and self.llm_done is None and self.llm_request:
            return [Send("llm", self.llm_request)]
        if stage == "tts":
            return [self._tts_request(i) for i, s in enumerate(self.sentences) if s.total_parts is None]
        return []

    def on_message(self, message: Envelope, payload: list[bytes]) -> list[Action]:
        if self.ended or (message.session, message.turn) != (self.session, self.turn):
            return []  # late or foreign results never reach another turn
        if isinstance(message, StageError):
            return self._end_error(f"The {message.stage.upper()} stage failed: {message.message}", message.stage,
                                   "stage_error")
        if isinstance(message, AsrFinal) and self.phase == "asr":
            return self._on_transcript(message)
        if self.phase != "llm":
            return []
        if isinstance(message, LlmSentence):
            return self._on_sentence(message)
        if isinstance(message, TtsAudio):
            return self._on_audio(message, payload[0])
        if isinstance(message, TtsDone):
            return self._on_tts_done(message)
        if isinstance(message, LlmDone):
            self.llm_done = message
            self.timing["llm"] = message.compute_s
            self.timing["llm_first_sentence"] = message.first_sentence_s
            return self._release()
        return []

    def on_timeout(self) -> list[Action]:
        stage = self.waiting_on()
        if stage is None:
            return []
        return self._end_error(f"The {stage.upper()} stage did not answer in time.", stage, "timeout")

    def on_stage_down(self, stage: str, reason: str) -> list[Action]:
        if self.ended:
            return []
        return self._end_error(f"The {stage.upper()} stage is not available: {reason}", stage, "unavailable")

    # --- transitions ---------------------------------------------------------------------------

    def _on_transcript(self, message: AsrFinal) -> list[Action]:
        self.user_text = message.text.strip()
        self.timing["asr"] = message.compute_s
        actions: list[Action] = [Emit(*events.transcript(self.user_text, message.compute_s))]
        if not self.user_text:
            return actions + self._end_error("No speech was recognized. Please try again.", "asr", "no_speech")
        self.phase = "llm"
        history = [*self.history, ChatMessage("user", self.user_text)]
        self.llm_request = self._ids(LlmRequest(persona=self.persona, history=history,
                                                max_new_tokens=self.max_new_tokens,
                                                instructions=self.instructions))
        self.pcm = b""
        return actions + [Send("llm", self.llm_request)]

    def _on_sentence(self, message: LlmSentence) -> list[Action]:
        if message.index != len(self.sentences):
            return []  # duplicate or out of order: never speak a sentence twice
        self.sentences.append(_Sentence(message.text))
        return [self._tts_request(message.index)]

    def _tts_request(self, index: int) -> Send:
        request = TtsRequest(index=index, text=self.sentences[index].text, voice=self.voice)
        return Send("tts", self._ids(request))

    def _sentence(self, index: int) -> _Sentence | None:
        return self.sentences[index] if 0 <= index < len(self.sentences) else None

    def _on_audio(self, message: TtsAudio, pcm: bytes) -> list[Action]:
        sentence = self._sentence(message.index)
        if sentence is None or message.part in sentence.parts or message.part < sentence.released:
            return []
        sentence.parts[message.part] = message
        sentence.pcm[message.part] = pcm
        return self._release()

    def _on_tts_done(self, message: TtsDone) -> list[Action]:
        sentence = self._sentence(message.index)
        if sentence is None or sentence.total_parts is not None:
            return []
        sentence.total_parts = message.parts
        sentence.compute_s = message.compute_s
        self.timing["tts"] = round(self.timing.get("tts", 0.0) + message.compute_s, 4)
        return self._release()

    def _release(self) -> list[Action]:
        """Emit every chunk that is next in order, then finish if everything is spoken."""
        actions: list[Action] = []
        while (sentence := self._sentence(self.next_sentence)) is not None:
            while sentence.released in sentence.parts:
                part = sentence.parts.pop(sentence.released)
                pcm = sentence.pcm.pop(sentence.released)
                actions.append(self._chunk(sentence, part, pcm))
                sentence.released += 1
            if sentence.total_parts is None or sentence.released < sentence.total_parts:
                break
            self.next_sentence += 1
        if self.llm_done is not None and self.next_sentence == len(self.sentences):
            actions += self._finish()
        return actions

    def _chunk(self, sentence: _Sentence, part: TtsAudio, pcm: bytes) -> Emit:
        if self.chunks == 0:
            self.timing["tts_first_chunk"] = part.compute_s
            self.timing["first_audio"] = round(self.clock() - self.started, 4)
        if self.wav_chunks:
            audio = {"b64": base64.b64encode(wav_bytes(pcm, part.sample_rate)).decode("ascii")}
        else:
            audio = {"pcm": pcm, "sample_rate": part.sample_rate}
        self.chunks += 1
        return Emit(*events.chunk(self.chunks - 1, sentence.text if part.part == 0 else "", **audio))

    def _finish(self) -> list[Action]:
        self._end()
        reply = self.llm_done.full_text if self.llm_done else ""
        self.timing["total"] = round(self.clock() - self.started, 4)
        # the voice the reply was spoken in, as the TTS stage was asked for it; why the reply
        # ended, as the LLM stage said
        done = events.done(reply, self.chunks, dict(self.timing), self.persona, self.voice,
                           self.llm_done.end_reason if self.llm_done else "")
        return [Emit(*done), Finish(ok=True, user_text=self.user_text, reply_text=reply)]
