"""Chat LLM backends. The LLM worker calls load() once, then stream() per turn."""

from __future__ import annotations

import threading
from typing import Callable, Generator

from proto import MAX_NEW_TOKENS
from services.runtime.devices import resolve_device, resolve_dtype
from services.runtime.backend import Backend
from services.runtime.errors import ConfigError


class TransformersBackend(Backend):
    """Hugging Face transformers causal LM (hub id or local dir; optional GGUF file inside it)."""

    name = "transformers"
    # Several replies may be generated at once: each stream() joins one shared decode batch
    # (services/llm/batching.py), which runs them all in one forward pass per token.
    thread_safe = True

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        gguf_file: str | None = None,
        max_batch: int = 8,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
    ):
        self.model_label = model if not gguf_file else f"{model}/{gguf_file}"
        self.model_id = model
        self.requested_device = device
        self.requested_dtype = dtype
        self.gguf_file = gguf_file
        self.device = device
        self.dtype = None
        self.tokenizer = None
        self.model = None
        # The KV cache of each system prompt (one per persona), computed once: a turn then only
        # prefills its history and question, which brings its first sentence sooner.
        self._prefix_caches: dict[str, tuple] = {}  # system prompt text -> (its token ids, its KV cache)
        self._prefix_lock = threading.Lock()
        self.prefix_hits = 0
        self.max_batch = max_batch
        # Decoding that resists loops, from the model's plan (services/models/resolve.py); None:
        # the model's own generation config decides.
        self.repetition_penalty = repetition_penalty
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self._decode_batch = None

    def load(self) -> None:
        self.device = resolve_device(self.requested_device)
        self.dtype = resolve_dtype(self.requested_dtype, self.device)
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ConfigError(f"transformers is not installed ({e})") from e
        extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_id, **extra)
            model = AutoModelForCausalLM.from_pretrained(self.model_id, dtype=self.dtype, **extra)
        except Exception as e:
            raise ConfigError(
                f"cannot load LLM {self.model_label!r}: {e} "
                "(check the path or hub id; the Hugging Face hub may be unreachable, "
                "so pre-download the model or point to a local directory)"
            ) from e
        self.model = model.to(self.device).eval()

    def _prefix_cache(self, messages: list[dict], input_ids):
        """A copy of the cached KV of the leading system message, if the prompt starts with it."""
        if not messages or messages[0].get("role") != "system":
            return None
        text = self.tokenizer.apply_chat_template(messages[:1], tokenize=False)
        with self._prefix_lock:
            return self._copy_prefix(text, input_ids)

    def _copy_prefix(self, text: str, input_ids):
        """Under the lock: the cache of `text` (computed once), copied for one generation."""
        import copy

        import torch
        from transformers import DynamicCache

        cached = self._prefix_caches.get(text)
        if cached is None:
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
            with torch.inference_mode():
                cache = self.model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True).past_key_values
            cached = (ids, cache)
            if len(self._prefix_caches) >= 8:
                self._prefix_caches.pop(next(iter(self._prefix_caches)))
            self._prefix_caches[text] = cached
        ids, cache = cached
        n = ids.shape[1]
        # Only when the prompt's tokens really begin with the prefix's (and go beyond it).
        if input_ids.shape[1] <= n or not torch.equal(input_ids[0, :n], ids[0]):
            return None
        self.prefix_hits += 1
        return copy.deepcopy(cache)  # generate() appends to the cache it is given

    def _batcher(self):
        """The one decode batch every reply of this backend joins (built on first use)."""
        with self._prefix_lock:
            if self._decode_batch is None:
                from services.llm.batching import DecodeBatcher

                config = self.model.generation_config
                eos = config.eos_token_id
                eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
                if self.tokenizer.eos_token_id is not None:
                    eos.add(self.tokenizer.eos_token_id)
                penalty, ngram = self.decoding()
                self._decode_batch = DecodeBatcher(self.model, eos, max_batch=self.max_batch,
                                                   repetition_penalty=penalty, no_repeat_ngram_size=ngram)
            return self._decode_batch

    def decoding(self) -> tuple[float, int]:
        """(repetition penalty, no-repeat n-gram size): the plan's, else the model's generation config."""
        config = self.model.generation_config
        penalty = self.repetition_penalty if self.repetition_penalty is not None else config.repetition_penalty
        ngram = self.no_repeat_ngram_size if self.no_repeat_ngram_size is not None else config.no_repeat_ngram_size
        return float(penalty or 1.0), int(ngram or 0)

    def stream(
        self,
        messages: list[dict],
        max_new_tokens: int = MAX_NEW_TOKENS,
        should_stop: Callable[[], bool] = lambda: False,
        until: Callable[[str], bool] = lambda piece: False,
    ) -> Generator[str, None, str]:
        """Yield reply text pieces (greedy). Closing the generator early ends the reply at the next step.

        `until(piece)` is called on the decode thread as each piece is made; when it says True,
        that piece is the last: no further token is computed. Returns why the reply ended:
        eos, length (max_new_tokens) or stopped."""
        if self.model is None:
            raise RuntimeError("TransformersBackend.stream() called before load()")
        import torch
        from transformers import DynamicCache

        from services.llm.batching import PieceStreamer, Reply

        tok = self.tokenizer
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already carries any BOS/special tokens.
        input_ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
        prefix = self._prefix_cache(messages, input_ids)
        cached = prefix.get_seq_length() if prefix is not None else 0
        closed, ended = threading.Event(), threading.Event()  # closed: the reader left, or `until` cut
        streamer = PieceStreamer(tok, until=until, cut=closed)
        error: list[BaseException] = []

        def on_end(e: BaseException | None) -> None:
            if e is not None:
                error.append(e)
            ended.set()
            streamer.end()  # always unblock the consumer, even after an exception

        reply = Reply(
            input_ids=input_ids[:, cached:], prompt_ids=input_ids[0],
            cache=prefix if prefix is not None else DynamicCache(),
            max_new_tokens=max_new_tokens,
            # checked at every decode step, so a stop costs at most one more step
            should_stop=lambda: closed.is_set() or bool(should_stop()),
            on_token=lambda token: streamer.put(torch.tensor([token])),
            on_end=on_end,
        )
        self._batcher().submit(reply)
        try:
            for piece in streamer:
                if error:
                    break
                if piece:
                    yield piece
        finally:
            closed.set()
            ended.wait()
        if error:
            raise error[0]
        return reply.finish

