"""Chat LLM backends. The LLM worker calls load() once, then stream() per turn."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from services.runtime.devices import resolve_device, resolve_dtype
from services.runtime.errors import ConfigError


class TransformersBackend:
    """Hugging Face transformers causal LM (hub id or local dir; optional GGUF file inside it)."""

    name = "transformers"

    def __init__(
        self,
        model: str = "Qwen/Qwen2.5-1.5B-Instruct",
        device: str = "auto",
        dtype: str = "auto",
        gguf_file: str | None = None,
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

    def stream(
        self,
        messages: list[dict],
        max_new_tokens: int = 220,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Yield reply text pieces. Closing the generator early stops generation and joins its thread."""
        if self.model is None:
            raise RuntimeError("TransformersBackend.stream() called before load()")
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        tok = self.tokenizer
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already carries any BOS/special tokens.
        inputs = tok(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        closed = threading.Event()

        class _Stop(StoppingCriteria):
            # Checked by generate() after every token, so a stop request costs at most one more step.
            def __call__(self, input_ids, scores, **kwargs):
                stop = closed.is_set() or bool(should_stop())
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        gen_kwargs = dict(
            **inputs,
            streamer=streamer,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([_Stop()]),
        )
        if tok.pad_token_id is None:
            gen_kwargs["pad_token_id"] = tok.eos_token_id
        error: list[BaseException] = []

        def run() -> None:
            try:
                self.model.generate(**gen_kwargs)
            except BaseException as e:  # surfaced in the consumer below
                error.append(e)
            finally:
                streamer.end()  # always unblock the consumer, even after an exception

        thread = threading.Thread(target=run, name="llm-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if error:
                    break
                if piece:
                    yield piece
        finally:
            closed.set()
            thread.join()
        if error:
            raise error[0]
