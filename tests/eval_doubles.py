"""Test doubles for the evaluation tests: small tokenizers and a bigram model whose probabilities are known.

`BigramLM` follows the GPT interface the scorer and `gpt2kit.generate` use
(`model(idx, kv_cache=...)`, `hidden`, `head`, `wte`, `config`, `new_kv_cache`), but
its next-token distribution depends only on the current token: each token has
one successor with probability 3/4 (over a 257-token vocabulary every other
token then has 1/1024), and a token without a listed successor leads to
`<|endoftext|>`. So the log-probability of any text, and every greedy
prediction, can be worked out by hand.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit.model import GPTConfig, KVCache
from gpt2kit.tokenizer import Tokenizer

BYTE_VOCAB = 257  # 256 bytes + <|endoftext|>
LOG_SUCCESSOR = math.log(0.75)
LOG_OTHER = math.log(1 / 1024)


def byte_tokenizer() -> Tokenizer:
    """One token per byte (no merges), so a text's tokens are its bytes and <|endoftext|> is 256."""
    return Tokenizer({bytes([b]): b for b in range(256)}, name="bytes")


def word_tokenizer(words: list[str]) -> Tokenizer:
    """Bytes plus whole-word tokens for `words` (e.g. " the"), built merge by merge left to right."""
    ranks = {bytes([b]): b for b in range(256)}
    for word in words:
        data = word.encode()
        for end in range(2, len(data) + 1):
            ranks.setdefault(data[:end], len(ranks))
    return Tokenizer(ranks, name="words")


def chars(successors: dict[str, str]) -> dict[int, int]:
    """{"a": "b"} as token ids of the byte tokenizer ("<eot>" is 256)."""
    ids = lambda c: 256 if c == "<eot>" else ord(c)
    return {ids(a): ids(b) for a, b in successors.items()}


class BigramLM(nn.Module):
    def __init__(
        self,
        successors: dict[int, int],
        vocab_size: int = BYTE_VOCAB,
        n_positions: int = 64,
        strength: float = math.log(768),
        runners_up: dict[int, int] | None = None,
    ):
        """`strength` is the successor's logit (others 0): ln 768 gives 3/4 over 257 tokens. `runners_up`
        get half of it, for tests that need a ranking."""
        super().__init__()
        eot = vocab_size - 1
        self.config = GPTConfig(vocab_size=vocab_size, n_positions=n_positions, n_layer=1, n_head=1, n_embd=vocab_size)
        table = torch.zeros(vocab_size, vocab_size)
        table[:, eot] = strength
        for current, successor in successors.items():
            table[current] = 0.0
            table[current, successor] = strength
        for current, runner_up in (runners_up or {}).items():
            table[current, runner_up] = strength / 2
        self.table = nn.Embedding.from_pretrained(table)
        self.wte = nn.Embedding.from_pretrained(torch.eye(vocab_size))

    def num_parameters(self, non_embedding: bool = False) -> int:
        return 0 if non_embedding else self.table.weight.numel()

    def new_kv_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache(self.config, batch_size, max_length)

    def hidden(self, idx, *, kv_cache=None, attention_mask=None, position_ids=None):
        if kv_cache is not None:
            if kv_cache.length + idx.shape[1] > kv_cache.max_length:
                raise ValueError("KV cache is full")
            kv_cache.advance(idx.shape[1])
        return self.table(idx)

    def head(self, h, targets=None):
        return F.linear(h, self.wte.weight)

    def forward(self, idx, *, kv_cache=None, attention_mask=None, position_ids=None, logits_to_keep=0):
        h = self.hidden(idx, kv_cache=kv_cache)
        return self.head(h[:, -logits_to_keep:] if logits_to_keep > 0 else h)
