"""LLM stage: persona prompt + history in, sentences streamed out as soon as each is complete."""

from __future__ import annotations

import logging
import time
from typing import Iterator

from proto import ChatMessage, LlmDone, LlmRequest, LlmSentence
from services.llm import openai_compatible
from services.llm.chunker import CHUNKING_MODES, DEPRECATED_CHUNKING, iter_chunks
from services.llm.limits import CANCEL, END_OF_TEXT, TOKEN_CAP, ReplyRules
from services.personas import DEFAULT_PERSONA, HISTORY_MESSAGES, PERSONAS, SPOKEN_RULE, system_prompt
from services.runtime.errors import BadRequest, ConfigError
from services.runtime.logs import turn_fields
from services.models.resolve import plan_llm, plan_remote_llm
from services.runtime.settings import StageSettings
from services.runtime.stage import BackendStage
from services.runtime.worker import Output, StageInfo, StopCheck

ROLES = {"user", "assistant"}
log = logging.getLogger("s2s.llm")


class LlmStage(BackendStage):
    name = "llm"
    request_type = LlmRequest
    BACKENDS = {"transformers": "services.llm.backends:TransformersBackend",
                openai_compatible.NAME: "services.llm.openai_compatible:OpenAICompatibleBackend"}
    DEFAULT_BACKEND = "transformers"
    planner = staticmethod(plan_llm)

    def __init__(self, settings: StageSettings):
        super().__init__(settings)
        self.max_new_tokens = settings.get_int("MAX_NEW_TOKENS", 220)
        self.min_words = settings.get_int("MIN_WORDS", 8)
        self.first_min_words = settings.get_int("FIRST_MIN_WORDS", 3)
        # the persona's spoken rule ("a maximum of 4 sentences"), kept here whatever the model does
        self.max_sentences = settings.get_int("MAX_SENTENCES", 4)
        self.chunking = (settings.get("CHUNKING", "fast") or "fast").strip().lower()
        if self.chunking in DEPRECATED_CHUNKING:
            log.warning("S2S_LLM_CHUNKING=%s is deprecated: it is now called %s", self.chunking,
                        DEPRECATED_CHUNKING[self.chunking])
            self.chunking = DEPRECATED_CHUNKING[self.chunking]
        if self.chunking not in CHUNKING_MODES:
            raise ConfigError(f"S2S_LLM_CHUNKING must be {' or '.join(CHUNKING_MODES)}, got {self.chunking!r}")
        if self.min_words < 1 or self.first_min_words < 1:
            raise ConfigError("S2S_LLM_MIN_WORDS and S2S_LLM_FIRST_MIN_WORDS must be at least 1")
        if self.max_sentences < 1:
            raise ConfigError(f"S2S_LLM_MAX_SENTENCES must be at least 1, got {self.max_sentences}")
        if self.backend_name == openai_compatible.NAME:
            plan_remote_llm(settings)  # a bad S2S_LLM_BASE_URL or timeout: exit 78 before starting

    def describe(self) -> StageInfo:
        if self.backend_name == openai_compatible.NAME:  # backend, model, device "remote: <host>"
            return openai_compatible.stage_info(self.settings)
        return super().describe()

    def warmup_request(self):
        # a real prompt (system prompt and chat template), a few tokens: prefill and decode both run
        return LlmRequest(session="warm-up", persona=DEFAULT_PERSONA, max_new_tokens=4,
                          history=[ChatMessage("user", "Hello!")]), []

    def prompt(self, request: LlmRequest) -> list[dict]:
        if request.persona not in PERSONAS:
            raise BadRequest(f"unknown persona {request.persona!r}")
        history = request.history[-HISTORY_MESSAGES:]
        if not history or history[-1].role != "user":
            raise BadRequest("the history must end with the user's message")
        if any(m.role not in ROLES for m in history):
            raise BadRequest("history roles must be user or assistant")
        system = request.instructions + SPOKEN_RULE if request.instructions else system_prompt(request.persona)
        return [{"role": "system", "content": system}] + [
            {"role": m.role, "content": m.content} for m in history
        ]

    def handle(self, request: LlmRequest, payload: list[bytes], stop: StopCheck) -> Iterator[Output]:
        messages = self.prompt(request)
        max_new = min(request.max_new_tokens, self.max_new_tokens)
        started = time.monotonic()
        pieces = 0
        sentences: list[str] = []
        first_s = -1.0
        finish = ""  # what the backend's stream returned: eos | length | stopped
        rules = ReplyRules(self.max_sentences)  # cuts the text passed on to the chunker
        # The same rules, fed the same pieces where they are generated: the backend stops right
        # after the piece that ends the reply, so no token is computed past the cut.
        guard = ReplyRules(self.max_sentences)

        def counted(stream):
            nonlocal pieces, finish
            while True:
                try:
                    piece = next(stream)
                except StopIteration as end:
                    finish = end.value or "eos"
                    return
                pieces += 1
                yield piece

        stream = self.backend.stream(messages, max_new_tokens=max_new, should_stop=stop.should_stop,
                                     until=guard.ends_with)
        reason = CANCEL  # unless the loop below runs to its end: the worker stopped reading
        try:
            for sentence in iter_chunks(rules.filter(counted(stream)), self.chunking, self.min_words,
                                        self.first_min_words):
                elapsed = time.monotonic() - started
                if not sentences:
                    first_s = elapsed
                yield LlmSentence(index=len(sentences), text=sentence, elapsed_s=round(elapsed, 4)), ()
                sentences.append(sentence)
            reason = rules.end_reason or (CANCEL if stop.should_stop() or finish == "stopped"
                                          else TOKEN_CAP if finish == "length" else END_OF_TEXT)
        except Exception:
            reason = "error"  # the log line only: the worker sends the stage.error
            raise
        finally:
            stream.close()  # stops generation and joins the generate thread
            log.info("reply ended: %s", reason, extra=turn_fields(
                request.session, request.turn, end_reason=reason, sentences=len(rules.sentences),
                chunks=len(sentences), pieces=pieces, compute_s=round(time.monotonic() - started, 4)))
        yield LlmDone(full_text=" ".join(sentences), sentences=len(sentences), tokens=pieces,
                      compute_s=round(time.monotonic() - started, 4),
                      first_sentence_s=round(first_s, 4), end_reason=reason), ()
