"""The scoring core: log-probabilities of continuations given contexts, batched.

Every scored task reduces to `ScoreRequest`s (context tokens, continuation
tokens). The scorer returns, per request, the summed log-probability of the
continuation (accumulated in float64), whether greedy decoding would produce
it, and the per-token values.

Two ways through the model:
- independent requests are sorted by length, so windows of similar length share
  a batch, and right-padded (causal attention never looks right, so padding
  needs no mask);
- requests that share a `group` (CBT's 10 candidates, Winograd's two options)
  share a prefix: the longest common prefix is encoded once into a KV cache,
  which `KVCache.repeat` hands to every member; only the suffixes run after it.

The output layer is evaluated only where a target is scored: the model's body
(`GPT.hidden`) gives the final hidden states, and its head (`GPT.head`) turns
the scored positions into logits in chunks. With a 50k vocabulary the output layer is most of a small
model's compute, and a full (batch, time, vocab) logits tensor would not fit in
memory for 1024-token windows.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from gpt2kit.errors import GPT2KitError
from gpt2kit.generate import common_prefix_length
from gpt2kit.model import GPT
from gpt2kit.windows import rolling_windows

# Rows of (position, vocab) logits computed at once by the output layer.
HEAD_CHUNK = 1024


@dataclass(frozen=True)
class ScoreRequest:
    """Score `continuation` after `context` (both token ids; the context must not be empty)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    group: Hashable | None = None  # requests with the same group share their common prefix


@dataclass
class ContinuationScore:
    logprob: float  # sum of the continuation's token log-probabilities (natural log)
    is_greedy: bool  # every continuation token is the argmax of its distribution
    token_logprobs: list[float]
    token_greedy: list[bool]

    @property
    def n_tokens(self) -> int:
        return len(self.token_logprobs)


def score_positions(model: GPT, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (float64) and greedy flags of `targets` (N,) given hidden states (N, n_embd)."""
    logprobs, greedy = [], []
    for start in range(0, hidden.shape[0], HEAD_CHUNK):
        logits = model.head(hidden[start : start + HEAD_CHUNK]).float()
        target = targets[start : start + HEAD_CHUNK]
        picked = logits.gather(1, target[:, None])[:, 0]
        logprobs.append(picked.double() - torch.logsumexp(logits, dim=-1).double())
        greedy.append(logits.argmax(dim=-1) == target)
        del logits
    if not logprobs:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    return torch.cat(logprobs), torch.cat(greedy)


def _fit(request: ScoreRequest, max_length: int) -> list[ScoreRequest]:
    """The request as pieces whose model input (context + continuation - 1) fits `max_length`.

    The context loses tokens from the left. A continuation longer than half the
    window is scored in pieces of half a window, each conditioned on everything
    before it that fits, so no piece is scored with less than half a window.
    """
    if not request.context:
        raise GPT2KitError("score request: the context is empty (condition on <|endoftext|> instead)")
    if not request.continuation:
        raise GPT2KitError("score request: the continuation is empty")
    if len(request.context) + len(request.continuation) - 1 <= max_length:
        return [request]
    if len(request.continuation) < max_length // 2:
        overflow = len(request.context) + len(request.continuation) - 1 - max_length
        return [ScoreRequest(request.context[overflow:], request.continuation, request.group)]
    full = request.context + request.continuation
    piece = max(1, max_length // 2)
    pieces = []
    for start in range(len(request.context), len(full), piece):
        end = min(start + piece, len(full))
        context_start = max(0, end - 1 - max_length)
        pieces.append(ScoreRequest(full[context_start:start], full[start:end]))
    return pieces


def _join_pieces(pieces: list[ContinuationScore | None], owner: list[int], n: int) -> list[ContinuationScore]:
    logprobs: list[list[float]] = [[] for _ in range(n)]
    greedy: list[list[bool]] = [[] for _ in range(n)]
    for piece, i in zip(pieces, owner, strict=True):
        logprobs[i] += piece.token_logprobs
        greedy[i] += piece.token_greedy
    return [
        ContinuationScore(math.fsum(values), all(flags), values, flags)
        for values, flags in zip(logprobs, greedy, strict=True)
    ]


def _shared_prefix_length(requests: list[ScoreRequest]) -> int:
    """Tokens that every request starts with, ending no later than the shortest context (so all targets follow it)."""
    common = common_prefix_length([r.context + r.continuation for r in requests])
    return min(common, min(len(r.context) for r in requests))


def _device(model: GPT) -> torch.device:
    return model.wte.weight.device


class Scorer:
    """Scores requests with a model; `batch_size` rows per forward pass never changes the results."""

    def __init__(self, model: GPT, batch_size: int = 8, max_length: int | None = None):
        if batch_size < 1:
            raise GPT2KitError(f"batch size must be at least 1, got {batch_size}")
        limit = model.config.n_positions
        if max_length is not None and not 1 < max_length <= limit:
            raise GPT2KitError(f"context length must be in 2..{limit} for this model, got {max_length}")
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length or limit

    # -- public ------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, requests: Sequence[ScoreRequest]) -> list[ContinuationScore]:
        """Scores in request order."""
        was_training = self.model.training
        self.model.eval()
        try:
            fitted: list[ScoreRequest] = []
            owner: list[int] = []  # the request each piece belongs to
            for i, request in enumerate(requests):
                pieces = _fit(request, self.max_length)
                fitted += pieces
                owner += [i] * len(pieces)
            results: list[ContinuationScore | None] = [None] * len(fitted)
            groups: dict[Hashable, list[int]] = {}
            single: list[int] = []
            for i, request in enumerate(fitted):
                if request.group is None:
                    single.append(i)
                else:
                    groups.setdefault(request.group, []).append(i)
            shared: list[tuple[list[int], int]] = []
            for members in groups.values():
                prefix = _shared_prefix_length([fitted[i] for i in members])
                if len(members) == 1 or prefix == 0:
                    single.extend(members)
                else:
                    shared.append((members, prefix))
            self._score_shared_prefixes(fitted, shared, results)
            self._score_independent(fitted, sorted(single), results)
            return _join_pieces(results, owner, len(requests))
        finally:
            self.model.train(was_training)

    # -- independent requests ------------------------------------------------------------
    def _score_independent(
        self, requests: list[ScoreRequest], indices: list[int], results: list[ContinuationScore | None]
    ) -> None:
        device = _device(self.model)
        # Longest first, ties by index: the order (hence the batches) is deterministic.
        order = sorted(indices, key=lambda i: (-(len(requests[i].context) + len(requests[i].continuation)), i))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = [list(requests[i].context + requests[i].continuation)[:-1] for i in batch]
            width = max(map(len, inputs))
            idx = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(inputs):
                idx[row, : len(ids)] = torch.tensor(ids)
            hidden = self.model.hidden(idx.to(device))
            rows, positions, targets = [], [], []
            for row, i in enumerate(batch):
                n = len(requests[i].continuation)
                end = len(inputs[row])
                rows += [row] * n
                positions += range(end - n, end)
                targets += requests[i].continuation
            picked = hidden[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]
            logprobs, greedy = score_positions(self.model, picked, torch.tensor(targets, device=device))
            self._distribute(requests, batch, logprobs, greedy, results)

    # -- shared prefixes -----------------------------------------------------------------
    def _score_shared_prefixes(
        self, requests: list[ScoreRequest], groups: list[tuple[list[int], int]], results: list[ContinuationScore | None]
    ) -> None:
        """Groups of similar prefix length share batches: prefixes run once, members' suffixes run after them."""
        groups = sorted(groups, key=lambda g: (-g[1], g[0][0]))
        chunk: list[tuple[list[int], int]] = []
        rows = 0
        for group in groups:
            if chunk and (len(chunk) == self.batch_size or rows + len(group[0]) > self.batch_size):
                self._score_group_chunk(requests, chunk, results)
                chunk, rows = [], 0
            chunk.append(group)
            rows += len(group[0])
        if chunk:
            self._score_group_chunk(requests, chunk, results)

    def _score_group_chunk(
        self, requests: list[ScoreRequest], groups: list[tuple[list[int], int]], results: list[ContinuationScore | None]
    ) -> None:
        model, device = self.model, _device(self.model)
        prefixes = [requests[members[0]].context[:prefix] for members, prefix in groups]
        # Each member: (its request, its group's row, the suffix it still has to run after the prefix).
        members = [
            (i, g, list((requests[i].context + requests[i].continuation)[prefix:-1]))
            for g, (group_members, prefix) in enumerate(groups)
            for i in group_members
        ]
        prefix_width = max(map(len, prefixes))
        suffix_width = max(len(suffix) for _, _, suffix in members)
        idx = torch.zeros((len(groups), prefix_width), dtype=torch.long)
        prefix_mask = torch.zeros((len(groups), prefix_width), dtype=torch.long)
        for g, tokens in enumerate(prefixes):
            idx[g, : len(tokens)] = torch.tensor(tokens)
            prefix_mask[g, : len(tokens)] = 1
        cache = model.new_kv_cache(len(groups), prefix_width + suffix_width)
        # Right padding: causal attention keeps each prefix's own states exact.
        prefix_hidden = model.hidden(idx.to(device), kv_cache=cache)
        last_states = prefix_hidden[
            torch.arange(len(groups), device=device), torch.tensor([len(p) - 1 for p in prefixes], device=device)
        ]
        ragged = any(len(p) != prefix_width for p in prefixes)
        for start in range(0, len(members), self.batch_size):
            batch = members[start : start + self.batch_size]
            owners = torch.tensor([g for _, g, _ in batch], device=device)
            suffix_hidden = None
            if suffix_width:
                rows_cache = cache.repeat(1)
                rows_cache.select(owners)
                suffix_idx = torch.zeros((len(batch), suffix_width), dtype=torch.long)
                for row, (_, _, suffix) in enumerate(batch):
                    suffix_idx[row, : len(suffix)] = torch.tensor(suffix)
                # A shorter prefix leaves padding in the cache: mask it; positions then count real tokens only.
                mask = None
                if ragged:
                    mask = torch.cat(
                        [
                            prefix_mask.to(device)[owners],
                            torch.ones((len(batch), suffix_width), dtype=torch.long, device=device),
                        ],
                        dim=1,
                    )
                suffix_hidden = model.hidden(suffix_idx.to(device), kv_cache=rows_cache, attention_mask=mask)
            states, targets = [], []
            for row, (i, g, _) in enumerate(batch):
                request, prefix = requests[i], len(prefixes[g])
                # Input position p predicts token p + 1; position prefix - 1 is the prefix's last state.
                for p in range(len(request.context) - 1, len(request.context) + len(request.continuation) - 1):
                    states.append(last_states[g] if p == prefix - 1 else suffix_hidden[row, p - prefix])
                targets += request.continuation
            logprobs, greedy = score_positions(model, torch.stack(states), torch.tensor(targets, device=device))
            self._distribute(requests, [i for i, _, _ in batch], logprobs, greedy, results)

    @staticmethod
    def _distribute(
        requests: list[ScoreRequest],
        batch: list[int],
        logprobs: torch.Tensor,
        greedy: torch.Tensor,
        results: list[ContinuationScore | None],
    ) -> None:
        values, flags = logprobs.tolist(), greedy.tolist()
        offset = 0
        for i in batch:
            n = len(requests[i].continuation)
            token_logprobs, token_greedy = values[offset : offset + n], flags[offset : offset + n]
            offset += n
            results[i] = ContinuationScore(
                logprob=math.fsum(token_logprobs),
                is_greedy=all(token_greedy),
                token_logprobs=token_logprobs,
                token_greedy=token_greedy,
            )


# -- corpus perplexity: a stream scored in rolling windows ----------------------------------


def score_stream(scorer: Scorer, tokens: Sequence[int], stride: int | None = None) -> list[list[float]]:
    """Per-token log-probabilities of `tokens[1:]`, one list per window (tokens[0] is the conditioning `<|endoftext|>`)."""
    windows = rolling_windows(len(tokens), scorer.max_length, stride)
    requests = [
        ScoreRequest(tuple(tokens[w.start : w.end + 1 - w.n_scored]), tuple(tokens[w.end + 1 - w.n_scored : w.end + 1]))
        for w in windows
    ]
    return [score.token_logprobs for score in scorer.score(requests)]
