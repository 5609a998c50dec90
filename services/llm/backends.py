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
        # The KV caches of the prompts already read (services/llm/prompt_cache.py): a turn
        # prefills only what its conversation added since its last one, or after its system prompt.
        self.prompts = None  # built by load()
        self._batch_lock = threading.Lock()
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
        from services.llm.prompt_cache import PromptCache

        self.prompts = PromptCache()

    def _cached_start(self, messages: list[dict], input_ids):
        """(tokens cached, a copy of their KV cache) for the longest start of the prompt read
        before; a system prompt is read once and kept, as each conversation starts with one."""
        import torch
        from transformers import DynamicCache

        def prefill(ids):
            with torch.inference_mode():
                return self.model(input_ids=ids[None], past_key_values=DynamicCache(), use_cache=True).past_key_values

        if messages and messages[0].get("role") == "system":
            text = self.tokenizer.apply_chat_template(messages[:1], tokenize=False)
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)
            self.prompts.ensure(ids[0], prefill)
        return self.prompts.longest(input_ids[0])

    def _batcher(self):
        """The one decode batch every reply of this backend joins (built on first use)."""
        with self._batch_lock:
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
        cached, prefix = self._cached_start(messages, input_ids)
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
            on_prefilled=lambda cache: self.prompts.add(input_ids[0], cache),
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

