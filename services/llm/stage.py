"""LLM stage: persona prompt + history in, sentences streamed out as soon as each is complete."""

from __future__ import annotations

import time
from typing import Iterator

from proto import ChatMessage, LlmDone, LlmRequest, LlmSentence
from services.llm import openai_compatible
from services.llm.chunker import CHUNKING_MODES, iter_chunks
from services.personas import DEFAULT_PERSONA, HISTORY_MESSAGES, PERSONAS, SPOKEN_RULE, system_prompt
from services.runtime.errors import BadRequest, ConfigError
from services.models.resolve import plan_llm
from services.runtime.settings import StageSettings
from services.runtime.stage import BackendStage
from services.runtime.worker import Output, StageInfo, TurnContext

ROLES = {"user", "assistant"}


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
        self.chunking = (settings.get("CHUNKING", "fast") or "fast").strip().lower()
        if self.chunking not in CHUNKING_MODES:
            raise ConfigError(f"S2S_LLM_CHUNKING must be {' or '.join(CHUNKING_MODES)}, got {self.chunking!r}")
        if self.min_words < 1 or self.first_min_words < 1:
            raise ConfigError("S2S_LLM_MIN_WORDS and S2S_LLM_FIRST_MIN_WORDS must be at least 1")
        if self.backend_name == openai_compatible.NAME:
            openai_compatible.plan(settings)  # a bad S2S_LLM_BASE_URL or timeout: exit 78 before starting

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

    def handle(self, request: LlmRequest, payload: list[bytes], turn: TurnContext) -> Iterator[Output]:
        messages = self.prompt(request)
        max_new = min(request.max_new_tokens, self.max_new_tokens)
        started = time.monotonic()
        pieces = 0
        sentences: list[str] = []
        first_s = -1.0

        def counted(stream):
            nonlocal pieces
            for piece in stream:
                pieces += 1
                yield piece

        stream = self.backend.stream(messages, max_new_tokens=max_new, should_stop=turn.should_stop)
        try:
            for sentence in iter_chunks(counted(stream), self.chunking, self.min_words, self.first_min_words):
                elapsed = time.monotonic() - started
                if not sentences:
                    first_s = elapsed
                yield LlmSentence(index=len(sentences), text=sentence, elapsed_s=round(elapsed, 4)), ()
                sentences.append(sentence)
        finally:
            stream.close()  # stops generation and joins the generate thread
        yield LlmDone(full_text=" ".join(sentences), sentences=len(sentences), tokens=pieces,
                      compute_s=round(time.monotonic() - started, 4),
                      first_sentence_s=round(first_s, 4)), ()
