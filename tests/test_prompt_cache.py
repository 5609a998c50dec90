"""The LLM's cache of prompts already read (services/llm/prompt_cache.py), on made-up KV tensors."""

import torch
from transformers import DynamicCache

from services.llm.prompt_cache import PromptCache


def kv(n: int) -> DynamicCache:
    """A one-layer cache of n tokens whose keys and values are their positions."""
    cache = DynamicCache()
    positions = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1)
    cache.update(positions, positions.clone(), 0)
    return cache


def ids(*tokens: int) -> torch.Tensor:
    return torch.tensor(tokens)


def test_the_longest_cached_start_is_given_as_a_copy_cut_to_it():
    prompts = PromptCache(max_tokens=100)
    prompts.add(ids(1, 2, 3, 4, 5), kv(5))
    n, cache = prompts.longest(ids(1, 2, 3, 9, 9))
    assert n == 3 and cache.get_seq_length() == 3
    assert cache.layers[0].keys.flatten().tolist() == [0, 1, 2]
    cache.update(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), 0)  # a reply appends to its copy
    assert prompts.longest(ids(1, 2, 3, 4, 5, 6))[0] == 5  # the kept entry is whole
    assert prompts.hits == 2 and prompts.reused_tokens == 8


def test_a_prompt_read_before_leaves_its_last_token_to_read():
    prompts = PromptCache(max_tokens=100)
    prompts.add(ids(1, 2, 3), kv(3))
    n, cache = prompts.longest(ids(1, 2, 3))
    assert n == 2 and cache.get_seq_length() == 2  # the model must read one token for the next one's logits
    assert prompts.longest(ids(7, 8)) == (0, None)


def test_an_entry_a_newer_prompt_extends_is_dropped_and_the_oldest_go_past_the_budget():
    prompts = PromptCache(max_tokens=8)
    prompts.add(ids(1, 2), kv(2))
    prompts.add(ids(1, 2, 3, 4), kv(4))  # the next turn of the same conversation
    assert prompts.tokens() == 4
    prompts.add(ids(5, 6, 7), kv(3))
    assert prompts.tokens() == 7
    prompts.longest(ids(1, 2, 3, 4, 0))  # used: now the most recent
    prompts.add(ids(8, 9), kv(2))  # 9 tokens: the least recently used entry goes
    assert prompts.tokens() == 6
    assert prompts.longest(ids(5, 6, 7, 0)) == (0, None)
    assert prompts.longest(ids(1, 2, 3, 4, 0))[0] == 4


def test_a_system_prompt_is_read_once():
    prompts = PromptCache()
    reads = []

    def prefill(tokens):
        reads.append(len(tokens))
        return kv(len(tokens))

    prompts.ensure(ids(1, 2, 3), prefill)
    prompts.ensure(ids(1, 2, 3), prefill)
    prompts.add(ids(1, 2, 3, 4, 5), kv(5))  # a conversation that starts with it
    prompts.ensure(ids(1, 2, 3), prefill)  # covered by the conversation's entry
    assert reads == [3]
    assert prompts.longest(ids(1, 2, 3, 7))[0] == 3
