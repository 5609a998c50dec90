"""LLM stage: persona prompt + history in, sentences streamed out as soon as each is complete."""

from __future__ import annotations

import logging
import time
from typing import Iterator

import proto
from proto import ChatMessage, LlmDone, LlmRequest, LlmSentence
from services.llm import openai_compatible
from services.llm.chunker import CHUNKING_MODES, DEPRECATED_CHUNKING, iter_chunks
from services.llm.limits import CANCEL, END_OF_TEXT, TOKEN_CAP, ReplyRules
from services.personas import DEFAULT_PERSONA, HISTORY_MESSAGES, PERSONAS, SPOKEN_RULE, system_prompt
from services.runtime.errors import BadRequest, ConfigError
from services.runtime.logs import turn_fields
from services.models import remote
from services.models.resolve import plan_llm, plan_remote_llm
from services.models.settings import LLM_BACKEND, LLM_DEVICE, LLM_DTYPE, LLM_MODEL
from services.runtime.settings import EnvLine, Setting, StageSettings
from services.runtime.stage import BackendStage
from services.runtime.worker import NICE, PARALLEL, THREADS, Output, StageInfo, StopCheck

ROLES = {"user", "assistant"}
log = logging.getLogger("s2s.llm")

# The reply's shape, S2S_LLM_<KEY> (each declared once, here).
MAX_NEW_TOKENS = Setting("MAX_NEW_TOKENS", int, proto.MAX_NEW_TOKENS, "reply length cap, in tokens")
MAX_SENTENCES = Setting("MAX_SENTENCES", int, 4, "the reply ends after this many sentences, and at the first "
                        "repeated sentence, whatever the model writes (the personas' spoken rule)")
CHUNKING = Setting("CHUNKING", str, "fast", "`fast`: a short first clause, then sentences; `sentences`: the "
                   "original's chunker (sentences of at least 8 words from the start; `original`, its old name, "
                   "still works)")
FIRST_MIN_WORDS = Setting("FIRST_MIN_WORDS", int, 3, "fast chunking: words before the first clause may be cut "
                          "(at , ; : . ! ?)")
MIN_WORDS = Setting("MIN_WORDS", int, 8, "sentence chunker: words in a chunk before it is cut at a sentence end")
SETTINGS = (MAX_NEW_TOKENS, MAX_SENTENCES, CHUNKING, FIRST_MIN_WORDS, MIN_WORDS)

# config/llm.env, as it ships (scripts/settings_docs.py writes it from this)
ENV_FILE = (
    EnvLine(LLM_BACKEND),
    EnvLine(LLM_MODEL),
    EnvLine(LLM_DEVICE),
    EnvLine(LLM_DTYPE, note="int8 made SmolLM2's answers worse (docs/BENCHMARKS.md)."),
    EnvLine(MAX_NEW_TOKENS),
    EnvLine(MAX_SENTENCES, note="The rest of the reply is never generated."),
    EnvLine(CHUNKING),
    EnvLine(FIRST_MIN_WORDS),
    EnvLine(MIN_WORDS),
    EnvLine(THREADS, "1", note="Decoding is memory-bound: a second thread adds little."),
    EnvLine(NICE, "10", note="On a CPU shared with TTS, nice 10 lets TTS speak the first sentence first while the "
            "LLM writes the rest (it writes far faster than speech plays)."),
    EnvLine(PARALLEL, "4", note="Decoding is bound by reading the weights, so four replies cost little more than one, "
            "and under load a new question starts at once instead of waiting for whole replies ahead of it."),
    EnvLine(remote.BASE_URL, commented=True, note="S2S_LLM_BACKEND=openai-compatible: the replies come from "
            "a server with the OpenAI chat-completions streaming API (vLLM, SGLang, llama.cpp's llama-server, Ollama, "
            "`transformers serve`), on this machine or another one: the way to scale the LLM past one machine. "
            "S2S_LLM_MODEL is then the name the server serves it under; the stage checks at start that GET "
            "<base>/models lists it (exit 78 naming the URL if the server is down or does not serve it). DEVICE, "
            "DTYPE, GGUF_FILE and SOURCE do not apply; set S2S_LLM_THREADS=0, so the stage does not even load torch. "
            "MAX_NEW_TOKENS, the chunking and PARALLEL (replies in flight at once; the server batches them) apply "
            "as above."),
    EnvLine(remote.API_KEY_FILE, "/home/me/.config/s2s/llm-api.key", commented=True,
            note="Use https:// when the key crosses a network you do not trust."),
    EnvLine(remote.TEMPERATURE, commented=True),
    EnvLine(remote.CONNECT_TIMEOUT_S, commented=True),
    EnvLine(remote.READ_TIMEOUT_S, commented=True),
    EnvLine(remote.SERVER_WAIT_S, commented=True),
)


class LlmStage(BackendStage):
    name = "llm"
    request_type = LlmRequest
    BACKENDS = {"transformers": "services.llm.backends:TransformersBackend",
                openai_compatible.NAME: "services.llm.openai_compatible:OpenAICompatibleBackend"}
    backend_setting, device_setting = LLM_BACKEND, LLM_DEVICE
    planner = staticmethod(plan_llm)

    def __init__(self, settings: StageSettings):
        super().__init__(settings)
        self.max_new_tokens = settings.value(MAX_NEW_TOKENS)
        self.min_words = settings.value(MIN_WORDS)
        self.first_min_words = settings.value(FIRST_MIN_WORDS)
        # the persona's spoken rule ("a maximum of 4 sentences"), kept here whatever the model does
        self.max_sentences = settings.value(MAX_SENTENCES)
        self.chunking = settings.value(CHUNKING).strip().lower()
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
