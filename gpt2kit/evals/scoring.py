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

The output layer is evaluated only where a target is scored: the model's hidden
states are captured at its final layer norm and multiplied by the tied
embedding in chunks. With a 50k vocabulary the output layer is most of a small
model's compute, and a full (batch, time, vocab) logits tensor would not fit in
memory for 1024-token windows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT, KVCache

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


@contextlib.contextmanager
def capture_hidden(model: GPT) -> Iterator[list[torch.Tensor]]:
    """While active, a model call returns empty logits and its final hidden states land in the yielded list.

    GPT-2's output layer is `ln_f` followed by the tied embedding, so the hidden
    states after `ln_f` are all that is needed to compute logits anywhere.
    """
    captured: list[torch.Tensor] = []

    def keep_and_skip_head(module, inputs, output):
        captured.append(output)
        return output[:, :0]

    handle = model.ln_f.register_forward_hook(keep_and_skip_head)
    try:
        yield captured
    finally:
        handle.remove()


def hidden_states(
    model: GPT, idx: torch.Tensor, kv_cache: KVCache | None = None, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Final-layer-norm outputs (B, T, n_embd) of one model call, without computing logits."""
    with capture_hidden(model) as captured:
        model(idx, kv_cache=kv_cache, attention_mask=attention_mask)
    return captured[-1]


def head_logits(model: GPT, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (N, vocab) in float32 for hidden states (N, n_embd): the tied output layer."""
    return hidden.float() @ model.wte.weight.float().t()


def score_positions(model: GPT, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (float64) and greedy flags of `targets` (N,) given hidden states (N, n_embd)."""
    logprobs, greedy = [], []
    for start in range(0, hidden.shape[0], HEAD_CHUNK):
        logits = head_logits(model, hidden[start : start + HEAD_CHUNK])
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
    first = requests[0].context + requests[0].continuation
    length = min(len(r.context) for r in requests)
    for request in requests[1:]:
        full = request.context + request.continuation
        length = next((k for k in range(length) if full[k] != first[k]), length)
    return length


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
            for members in groups.values():
                prefix = _shared_prefix_length([fitted[i] for i in members])
                if len(members) == 1 or prefix == 0:
                    single.extend(members)
                else:
                    self._score_shared_prefix(fitted, members, prefix, results)
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
            hidden = hidden_states(self.model, idx.to(device))
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
    def _score_shared_prefix(
        self, requests: list[ScoreRequest], members: list[int], prefix: int, results: list[ContinuationScore | None]
    ) -> None:
        model, device = self.model, _device(self.model)
        fulls = [requests[i].context + requests[i].continuation for i in members]
        suffixes = [list(full[prefix:-1]) for full in fulls]
        width = max(map(len, suffixes))
        cache = KVCache(model.config, 1, prefix + width, device=device, dtype=model.wte.weight.dtype)
        prefix_hidden = hidden_states(model, torch.tensor([list(fulls[0][:prefix])], device=device), kv_cache=cache)
        last_prefix_state = prefix_hidden[0, -1]
        for start in range(0, len(members), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(members))))
            states = []
            suffix_hidden = None
            if width:
                idx = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, k in enumerate(chunk):
                    idx[row, : len(suffixes[k])] = torch.tensor(suffixes[k])
                suffix_hidden = hidden_states(model, idx.to(device), kv_cache=cache.repeat(len(chunk)))
            targets = []
            for row, k in enumerate(chunk):
                request = requests[members[k]]
                # Input position p predicts token p + 1; position prefix - 1 is the prefix's last state.
                for p in range(len(request.context) - 1, len(request.context) + len(request.continuation) - 1):
                    states.append(last_prefix_state if p == prefix - 1 else suffix_hidden[row, p - prefix])
                targets += request.continuation
            logprobs, greedy = score_positions(model, torch.stack(states), torch.tensor(targets, device=device))
            self._distribute(requests, [members[k] for k in chunk], logprobs, greedy, results)

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


# -- rolling windows for corpus perplexity --------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Model input `tokens[start:end]`; its last `n_scored` positions' next tokens are scored."""

    start: int
    end: int
    n_scored: int


def rolling_windows(n_tokens: int, max_length: int, stride: int | None = None) -> list[Window]:
    """Windows over a stream of `n_tokens` (the first being a `<|endoftext|>` that is never scored).

    Every token after the first is scored exactly once. With `stride` equal to
    `max_length` (the default) the scored spans do not overlap and each window
    sees only its own tokens; a smaller stride slides the window by `stride`
    tokens and scores only the new ones, so each has at least
    `max_length - stride` tokens of context.
    """
    stride = stride or max_length
    if not 1 <= stride <= max_length:
        raise GPT2KitError(f"stride must be in 1..{max_length} (the context length), got {stride}")
    windows: list[Window] = []
    scored_until = 1  # tokens[1:scored_until] are scored
    start = 0
    while scored_until < n_tokens:
        end = min(start + max_length, n_tokens - 1)
        # Input tokens[start:end] predicts tokens[start+1:end+1].
        windows.append(Window(start, end, end + 1 - scored_until))
        scored_until = end + 1
        start += stride
    return windows


def score_stream(scorer: Scorer, tokens: Sequence[int], stride: int | None = None) -> list[list[float]]:
    """Per-token log-probabilities of `tokens[1:]`, one list per window (tokens[0] is the conditioning `<|endoftext|>`)."""
    windows = rolling_windows(len(tokens), scorer.max_length, stride)
    requests = [
        ScoreRequest(tuple(tokens[w.start : w.end + 1 - w.n_scored]), tuple(tokens[w.end + 1 - w.n_scored : w.end + 1]))
        for w in windows
    ]
    return [score.token_logprobs for score in scorer.score(requests)]
