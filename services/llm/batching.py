"""Continuous batching for a transformers causal LM: replies join and leave one running batch.

Decoding a small model on a CPU is bound by reading the weights, not by arithmetic: one step for
four replies costs little more than a step for one. One decode thread therefore runs every active
reply in one forward pass per token. A new reply is prefilled on its own (after the longest start
of its prompt already cached: services/llm/prompt_cache.py) and joins the batch at the next step;
a finished or stopped reply leaves it at once.

The batch's KV cache is left-padded to a common length; the attention mask hides the padding and
each row gets its own positions, so a reply decodes the same greedy tokens as it would alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache, TextIteratorStreamer

log = logging.getLogger("s2s.llm")


@dataclass
class Reply:
    """One reply being decoded: the tokens it produced go to `on_token`, then `on_end` is called once."""

    input_ids: torch.Tensor  # [1, n] the prompt tokens still to prefill (after any cached prefix)
    prompt_ids: torch.Tensor  # [n] every prompt token (the repetition penalty looks at them)
    cache: DynamicCache  # the prefix's KV (copied) or an empty cache
    max_new_tokens: int
    should_stop: Callable[[], bool]
    on_token: Callable[[int], None]
    on_end: Callable[[BaseException | None], None]
    # given the whole prompt's KV cache once it is prefilled (to keep a copy: it is the batch's next)
    on_prefilled: Callable[[DynamicCache], None] | None = None
    produced: int = 0
    length: int = 0  # tokens in its cache (real ones, without padding)
    next_token: int = -1
    ended: bool = False
    finish: str = ""  # why it ended: eos | length | stopped
    seen: torch.Tensor | None = None  # [vocab] bool: tokens in the prompt or the reply so far
    generated: list[int] | None = None  # the reply's tokens so far (the no-repeat n-gram rule)


class PieceStreamer(TextIteratorStreamer):
    """A reply's text pieces for its reader. Each piece is shown to `until` on the decode thread as
    it is made; when `until` says it is the last, `cut` is set (the reply's should_stop then ends it
    before another step) and nothing after it reaches the reader."""

    def __init__(self, tokenizer, until: Callable[[str], bool], cut: threading.Event):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.until, self.cut = until, cut

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if self.cut.is_set():
            text = ""
        elif text and self.until(text):
            self.cut.set()
        super().on_finalized_text(text, stream_end)


def _left_pad(cache: DynamicCache, pad: int) -> None:
    if pad <= 0:
        return
    for layer in cache.layers:
        layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, pad, 0))
        layer.values = torch.nn.functional.pad(layer.values, (0, 0, pad, 0))


class DecodeBatcher:
    """One thread that decodes every submitted reply in a shared batch (greedy)."""

    def __init__(self, model, eos_token_ids: set[int], max_batch: int = 8, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0):
        self.model = model
        self.eos = set(eos_token_ids)
        # greedy decoding as generate(do_sample=False) does it, with the model plan's repetition
        # penalty and no-repeat n-gram size (services/models/resolve.py)
        self.repetition_penalty = float(repetition_penalty or 1.0)
        self.no_repeat_ngram_size = int(no_repeat_ngram_size or 0)
        self.max_batch = max(1, max_batch)
        self._incoming: queue.Queue[Reply | None] = queue.Queue()
        self._active: list[Reply] = []
        self._cache: DynamicCache | None = None  # the batch's cache, rows in the order of _active
        self._mask: torch.Tensor | None = None  # [batch, cache length]: 1 for real tokens
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.steps = 0  # decode steps run (one forward pass each)
        self.rows_decoded = 0  # replies' tokens produced by those steps
        self.max_rows = 0  # the largest batch seen
        self._unfinished = 0  # replies submitted and not yet ended

    def submit(self, reply: Reply) -> None:
        with self._lock:
            self._unfinished += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llm-batch", daemon=True)
                self._thread.start()
        self._incoming.put(reply)

    def unfinished(self) -> int:
        """Replies submitted and not yet ended (0 once every stream has returned)."""
        with self._lock:
            return self._unfinished

    # --- the decode thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._admit(block=not self._active)
                if self._active:
                    self._step()
            except BaseException as e:  # a bug here must end the replies, not hang their readers
                for reply in self._active:
                    self._finish(reply, e)
                self._reset()

    def _admit(self, block: bool) -> None:
        while len(self._active) < self.max_batch:
            try:
                reply = self._incoming.get(block=block)
            except queue.Empty:
                return
            block = False
            try:
                self._prefill(reply)
            except BaseException as e:  # a bad prompt ends its own reply, not the batch
                self._finish(reply, e)
                continue
            self._emit(reply, reply.next_token)  # its first token goes out before the copy is made
            if reply.on_prefilled is not None:
                try:
                    reply.on_prefilled(reply.cache)
                except Exception:  # a cache that is not kept costs the next turn time, not this reply
                    log.exception("the prompt's KV cache was not kept")
            if reply.ended:
                continue
            self._join(reply)

    @torch.inference_mode()
    def _prefill(self, reply: Reply) -> None:
        past = reply.cache.get_seq_length()
        n = reply.input_ids.shape[1]
        out = self.model(
            input_ids=reply.input_ids,
            past_key_values=reply.cache,
            position_ids=torch.arange(past, past + n, device=reply.input_ids.device).unsqueeze(0),
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits: the vocabulary is the costly part
        )
        reply.cache = out.past_key_values
        reply.length = past + n
        reply.seen = torch.zeros(out.logits.shape[-1], dtype=torch.bool, device=out.logits.device)
        reply.seen[reply.prompt_ids] = True
        reply.generated = []
        reply.next_token = self._pick(reply, out.logits[0, -1])

    def _pick(self, reply: Reply, logits: torch.Tensor) -> int:
        """The greedy token; with a repetition penalty, tokens already seen are made less likely;
        with a no-repeat n-gram size n, no n tokens of the reply come twice in the same order."""
        if self.repetition_penalty != 1.0:
            p = self.repetition_penalty
            seen = logits[reply.seen]
            logits = logits.clone()
            logits[reply.seen] = torch.where(seen < 0, seen * p, seen / p)
        banned = self._banned(reply.generated)
        if banned:
            logits = logits.clone()
            logits[banned] = float("-inf")
        token = int(logits.argmax())
        reply.seen[token] = True
        reply.generated.append(token)
        return token

    def _banned(self, generated: list[int]) -> list[int]:
        """Tokens that would complete an n-gram the reply already holds (as generate()'s
        no_repeat_ngram_size, over the reply's own tokens)."""
        n = self.no_repeat_ngram_size
        if n <= 0 or len(generated) < n:
            return []
        tail = generated[len(generated) - n + 1:]
        return [generated[i + n - 1] for i in range(len(generated) - n + 1) if generated[i:i + n - 1] == tail]

    def _join(self, reply: Reply) -> None:
        """Add a prefilled reply's cache as a new row of the batch's cache."""
        device = reply.input_ids.device
        if self._cache is None:
            self._cache, self._active = reply.cache, [reply]
            self._mask = torch.ones((1, reply.length), dtype=torch.long, device=device)
            return
        batch_len = self._mask.shape[1]
        if reply.length > batch_len:
            grow = reply.length - batch_len
            _left_pad(self._cache, grow)
            self._mask = torch.nn.functional.pad(self._mask, (grow, 0))
            batch_len = reply.length
        _left_pad(reply.cache, batch_len - reply.length)
        for mine, theirs in zip(self._cache.layers, reply.cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        row = torch.zeros((1, batch_len), dtype=torch.long, device=device)
        row[0, batch_len - reply.length:] = 1
        self._mask = torch.cat([self._mask, row], dim=0)
        self._active.append(reply)
        reply.cache = None  # its rows now live in the batch's cache

    @torch.inference_mode()
    def _step(self) -> None:
        device = self._mask.device
        tokens = torch.tensor([[r.next_token] for r in self._active], device=device)
        positions = torch.tensor([[r.length] for r in self._active], device=device)
        mask = torch.cat([self._mask, torch.ones((len(self._active), 1), dtype=torch.long, device=device)], dim=1)
        try:
            out = self.model(input_ids=tokens, past_key_values=self._cache, attention_mask=mask,
                             position_ids=positions, use_cache=True, logits_to_keep=1)
        except BaseException as e:  # the whole batch failed: end every reply in it with the error
            for reply in self._active:
                self._finish(reply, e)
            self._reset()
            return
        self._cache, self._mask = out.past_key_values, mask
        self.steps += 1
        self.rows_decoded += len(self._active)
        self.max_rows = max(self.max_rows, len(self._active))
        logits = out.logits[:, -1]
        for row, reply in enumerate(self._active):
            reply.length += 1
            self._emit(reply, self._pick(reply, logits[row]))
        self._drop_ended()

    def _emit(self, reply: Reply, token: int) -> None:
        """Hand one produced token to its reply; end the reply at EOS, its limit or a stop."""
        reply.next_token = token
        stopped = bool(reply.should_stop())
        if not stopped and token not in self.eos:
            reply.produced += 1
            try:
                reply.on_token(token)
            except BaseException as e:
                self._finish(reply, e)
                return
            # the token may have ended the reply (the stage's rules cut it there): leave the
            # batch now, before another step is computed for it
            stopped = bool(reply.should_stop())
        if stopped or token in self.eos or reply.produced >= reply.max_new_tokens:
            reply.finish = "stopped" if stopped else "eos" if token in self.eos else "length"
            self._finish(reply, None)

    def _finish(self, reply: Reply, error: BaseException | None) -> None:
        if not reply.ended:
            reply.ended = True
            with self._lock:
                self._unfinished -= 1
            reply.on_end(error)

    def _drop_ended(self) -> None:
        keep = [i for i, r in enumerate(self._active) if not r.ended]
        if len(keep) == len(self._active):
            return
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._active = [self._active[i] for i in keep]
        self._mask = self._mask.index_select(0, index)
        # columns that are padding in every remaining row are dropped, so the cache stays as
        # long as its longest reply
        first_real = int(self._mask.argmax(dim=1).min())
        self._mask = self._mask[:, first_real:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first_real:]
            layer.values = layer.values.index_select(0, index)[:, :, first_real:]

    def _reset(self) -> None:
        self._active, self._cache, self._mask = [], None, None
