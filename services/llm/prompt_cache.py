"""KV caches of prompts the LLM has already read, so that a prompt that begins like one of them
reads only the rest.

A conversation's next prompt is its last prompt, then the answer and the new question. With the
last prompt's cache, a turn prefills those tokens only, not its whole history again: the history
grows by about a hundred tokens a turn, and on a CPU its prefill was most of the wait for the
first sentence late in a conversation. A persona's system prompt is the first entry any
conversation starts from. The least recently used entries go first, past a budget of tokens.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections import OrderedDict
from typing import Callable

import torch
from transformers import DynamicCache

MAX_TOKENS = 8192  # about 0.4 GB of KV for SmolLM2-135M or Qwen2.5-1.5B in float32


def _common(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two 1-D token id tensors share."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


class PromptCache:
    def __init__(self, max_tokens: int = MAX_TOKENS):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, tuple[torch.Tensor, DynamicCache]] = OrderedDict()
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self.hits = 0  # lookups that reused a cache
        self.reused_tokens = 0  # prompt tokens those lookups did not prefill

    def tokens(self) -> int:
        with self._lock:
            return sum(len(ids) for ids, _ in self._entries.values())

    def longest(self, ids: torch.Tensor) -> tuple[int, DynamicCache | None]:
        """(n, a copy of the cache of ids[:n]) for the longest start of `ids` some entry covers,
        leaving at least one token to prefill; (0, None) when none does."""
        with self._lock:
            best, best_key = 0, None
            for key, (cached, _) in self._entries.items():
                n = _common(cached, ids)
                if n > best:
                    best, best_key = n, key
            best = min(best, len(ids) - 1)
            if best_key is None or best <= 0:
                return 0, None
            self._entries.move_to_end(best_key)
            cached_ids, cached = self._entries[best_key]
            cache = copy.deepcopy(cached)  # the reply appends to the cache it gets
            self.hits += 1
            self.reused_tokens += best
        cache.crop(best - len(cached_ids))  # a negative crop removes that many tokens from the end
        return best, cache

    def add(self, ids: torch.Tensor, cache: DynamicCache) -> None:
        """Keep a copy of `cache`, the KV of the tokens `ids`. Entries it extends are dropped."""
        if len(ids) > self.max_tokens:
            return
        kept = copy.deepcopy(cache)
        ids = ids.detach().clone()
        with self._lock:
            for key, (cached, _) in list(self._entries.items()):
                if len(cached) <= len(ids) and _common(cached, ids) == len(cached):
                    del self._entries[key]
            self._entries[next(self._keys)] = (ids, kept)
            while sum(len(i) for i, _ in self._entries.values()) > self.max_tokens:
                self._entries.popitem(last=False)

    def ensure(self, ids: torch.Tensor, prefill: Callable[[torch.Tensor], DynamicCache]) -> None:
        """Cache the prompt start `ids` (a system prompt) unless an entry already covers it."""
        with self._lock:
            covered = any(_common(cached, ids) == len(ids) for cached, _ in self._entries.values())
        if not covered:
            self.add(ids, prefill(ids))
