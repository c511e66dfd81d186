"""Picking each sequence's next token from the model's logits, under that sequence's own settings.

Penalties, logit bias and min_tokens shape the logits; then temperature,
top-k and top-p (nucleus) filter them, and one uniform draw per sequence from
its own seeded generator picks the token, so a sequence's text depends on its
prompt and seed, not on what else shares its batch. Logprobs are the model's
own (log-softmax of the raw logits, before temperature and filtering).
"""

from __future__ import annotations

import torch

from gpt2kit import kernels
from gpt2kit.sequences import SequenceState, token_text
from gpt2kit.tokenizer import Tokenizer

NUCLEUS_GUESS = 1024  # top-p looks for its nucleus among this many tokens first, avoiding a full sort


def next_tokens(
    logits: torch.Tensor, rows: list[SequenceState], tokenizer: Tokenizer
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float] | None]]:
    """Each row's next token under its own settings, its logprob, and its top alternatives if asked for."""
    vocab = tokenizer.vocab_size
    logits = logits[:, :vocab]  # a model may have padded its vocabulary
    shaped = _shape_logits(logits, rows, tokenizer.eot_token)
    sampled = [i for i, row in enumerate(rows) if not row.config.greedy]
    in_c = kernels.argmax_logsumexp(logits)  # both in one pass where the C kernels are loaded, else None
    if len(sampled) == len(rows):
        tokens = _sample(shaped, rows)
    else:
        tokens = in_c[0] if in_c is not None and shaped is logits else _argmax(shaped)
        if sampled:
            tokens[sampled] = _sample(shaped[sampled], [rows[i] for i in sampled]).to(tokens.device)
    # the model's own log-probabilities, as OpenAI and vLLM report them: the chosen token's for every row, the
    # whole distribution only for rows that asked for their top alternatives
    logsumexp = in_c[1] if in_c is not None else torch.logsumexp(logits, -1)
    chosen = logits.gather(1, tokens[:, None])[:, 0] - logsumexp
    tops: list[dict[str, float] | None] = [None] * len(rows)
    wanted = [i for i, row in enumerate(rows) if row.config.logprobs > 0]
    if wanted:
        k = min(vocab, max(rows[i].config.logprobs for i in wanted))
        values, ids = torch.log_softmax(logits[wanted], -1).topk(k, -1)
        for i, row_values, row_ids in zip(wanted, values.tolist(), ids.tolist(), strict=True):
            n = rows[i].config.logprobs
            tops[i] = {token_text(tokenizer, t): v for t, v in zip(row_ids[:n], row_values[:n], strict=True)}
    return tokens, chosen, tops


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    in_c = kernels.argmax_logsumexp(logits)
    return in_c[0] if in_c is not None else logits.argmax(-1)


def _top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    in_c = kernels.top_k(logits, k)
    return in_c if in_c is not None else logits.topk(k, -1)


def _shape_logits(logits: torch.Tensor, rows: list[SequenceState], eot: int) -> torch.Tensor:
    """Each row's penalties, logit bias and min_tokens applied to its logits; rows without any are untouched."""
    shaping = [i for i, row in enumerate(rows) if row.config.shapes_logits]
    if not shaping:
        return logits
    logits = logits.clone()
    vocab, device = logits.shape[-1], logits.device
    for i in shaping:
        config, row = rows[i].config, rows[i]
        if config.repetition_penalty != 1:
            seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.tokens)), dtype=torch.long, device=device)
            values = logits[i, seen]
            penalty = config.repetition_penalty
            logits[i, seen] = torch.where(values > 0, values / penalty, values * penalty)
        if (config.presence_penalty or config.frequency_penalty) and row.tokens:
            counts = torch.bincount(torch.tensor(row.tokens, device=device), minlength=vocab)[:vocab].to(logits.dtype)
            logits[i] -= counts * config.frequency_penalty + (counts > 0).to(logits.dtype) * config.presence_penalty
        if config.logit_bias:
            ids = torch.tensor(list(config.logit_bias), dtype=torch.long, device=device)
            logits[i, ids] += torch.tensor(list(config.logit_bias.values()), dtype=logits.dtype, device=device)
        if len(row.tokens) < config.min_tokens and not config.ignore_eos:
            logits[i, eot] = float("-inf")
    return logits


def _temper(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Each row's logits over its temperature (> 0), up to a constant that softmax ignores; sound at any temperature.

    Subtracting the row's maximum first leaves every scaled logit <= 0: none overflows to +inf (whose softmax is
    nan), and the top token keeps exp(0) = 1. A temperature below float32's smallest number rounds to 0; the
    division then gives -inf below the maximum, the limit as the temperature goes to 0, and 0 / 0 = nan at the
    maximum, whose limit is 0. So the smallest temperatures give the argmax alone, as the limit does.
    """
    shifted = logits - logits.amax(-1, keepdim=True)
    return (shifted / temperature[:, None]).masked_fill(shifted == 0, 0.0)


def _sample(logits: torch.Tensor, rows: list[SequenceState]) -> torch.Tensor:
    """Temperature, then top-k, then top-p (renormalised after top-k), then one draw per row by inverse CDF.

    Rows are grouped by what they need, so that only rows with top-p and no top-k may pay for a
    full sort of the vocabulary, and only when their nucleus is not within the top NUCLEUS_GUESS tokens.
    """
    device, vocab = logits.device, logits.shape[-1]
    temperature = torch.tensor([row.config.temperature for row in rows], device=device)
    draws = torch.stack([torch.rand((), generator=row.generator) for row in rows]).to(device)
    tokens = torch.empty(len(rows), dtype=torch.long, device=device)
    top_k = [min(row.config.top_k, vocab) for row in rows]
    top_p = torch.tensor([row.config.top_p for row in rows], device=device)

    def pick(index: list[int], probs: torch.Tensor, order: torch.Tensor | None = None) -> None:
        cdf = probs.cumsum(-1)
        position = torch.searchsorted(cdf, (draws[index] * cdf[:, -1])[:, None], right=True)
        position = position.clamp(max=cdf.shape[-1] - 1)
        tokens[index] = (position if order is None else order.gather(1, position))[:, 0]

    def nucleus(probs: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        # Keep the smallest prefix (probs sorted descending) whose mass reaches p: a token stays if the mass before it is below p.
        keep = (probs.cumsum(-1) - probs) < p[:, None]
        # For every p > 0 that prefix holds the top token; so too where p underflows float32 to 0 (then 0 < 0 keeps none).
        keep[:, 0] = True
        return probs * keep

    with_k = [i for i, k in enumerate(top_k) if k > 0]
    if with_k:
        # Temperature keeps the order, so the top k of the raw logits are the top k after it: only they are tempered.
        candidates = logits if len(with_k) == len(rows) else logits[with_k]
        values, order = _top_k(candidates, max(top_k[i] for i in with_k))
        values = _temper(values, temperature[with_k])
        rank = torch.arange(values.shape[-1], device=device)
        limit = torch.tensor([top_k[i] for i in with_k], device=device)
        probs = torch.softmax(values.masked_fill(rank[None, :] >= limit[:, None], float("-inf")), -1)
        pick(with_k, nucleus(probs, top_p[with_k]), order)
    rest = [i for i, k in enumerate(top_k) if k == 0]
    scaled = _temper(logits[rest], temperature[rest]) if rest else None
    row_of = {i: j for j, i in enumerate(rest)}  # index into `scaled`
    only_p = [i for i in rest if rows[i].config.top_p < 1]
    if only_p:
        probs = torch.softmax(scaled[[row_of[i] for i in only_p]], -1)
        head, order = probs.topk(min(vocab, NUCLEUS_GUESS), -1)
        found = head.sum(-1) >= top_p[only_p]
        inside = [i for i, ok in zip(only_p, found.tolist(), strict=True) if ok]
        if inside:
            pick(inside, nucleus(head[found], top_p[inside]), order[found])
        outside = [i for i, ok in zip(only_p, found.tolist(), strict=True) if not ok]
        if outside:
            sorted_probs, order = probs[~found].sort(-1, descending=True)
            pick(outside, nucleus(sorted_probs, top_p[outside]), order)
    plain = [i for i in rest if rows[i].config.top_p >= 1]
    if plain:
        pick(plain, torch.softmax(scaled[[row_of[i] for i in plain]], -1))
    return tokens
