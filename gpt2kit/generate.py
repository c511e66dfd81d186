"""Text generation with the KV cache: `generate`, `stream` and the prompt's own logprobs.

Every prompt becomes a `SequenceState` (gpt2kit.sequences). A `Decoder` runs many of them as one
left-padded batch that shares a preallocated KV cache, so each new token costs
one position. Sequences may join between steps (continuous batching: the
server uses this) and leave as soon as they finish, so finished sequences stop
costing compute. When a sequence outgrows the model's context, the window
slides: the batch is re-encoded from the last three quarters of the context.
Each step's tokens are picked by gpt2kit.sampling.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT, KVCache, check_output_rows
from gpt2kit.sampling import next_tokens
from gpt2kit.sequences import (
    Completion,
    GenerationConfig,
    SequenceState,
    best_completions,
    make_sequences,
    token_text,
)
from gpt2kit.tokenizer import Tokenizer
from gpt2kit.windows import rolling_windows

# A prompt prefix shared by the sequences joining a batch is encoded once when it is at least this long;
# the last few shared prefixes are kept, so that later requests with the same few-shot prompt reuse them.
MIN_SHARED_PREFIX = 32
PREFIXES_KEPT = 4


class Decoder:
    """Runs sequences as one left-padded batch with a shared KV cache.

    `add` encodes new sequences and merges them into the running batch;
    `step` picks one token for every active sequence and drops those that
    finished. `logits` holds each active row's next-token logits.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, share_prefixes: bool = True):
        check_output_rows(model.config, tokenizer.vocab_size, "decoding")
        self.model = model
        self.tokenizer = tokenizer
        self.context = model.config.n_positions
        self.device = next(model.parameters()).device
        self.rows: list[SequenceState] = []
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None  # (B, cache.length): 1 for real tokens, 0 for left padding
        self.padded = False
        self.logits: torch.Tensor | None = None
        self.share_prefixes = share_prefixes
        # Recently shared prompt prefixes (token tuple -> their keys and values), newest last.
        self.prefixes: OrderedDict[tuple[int, ...], KVCache] = OrderedDict()

    @property
    def active(self) -> int:
        return len(self.rows)

    # -- shared prompt prefixes ---------------------------------------------------------
    def _prefix(self, contexts: list[list[int]]) -> tuple[int, KVCache | None]:
        """The longest prefix every context starts with that is worth encoding once (or is cached already),
        leaving each context at least one token to run; and its keys and values (batch of one)."""
        if not self.share_prefixes:
            return 0, None
        limit = min(map(len, contexts)) - 1
        cached = [
            key for key in self.prefixes if len(key) <= limit and all(c[: len(key)] == list(key) for c in contexts)
        ]
        if cached:
            key = max(cached, key=len)
            self.prefixes.move_to_end(key)
            return len(key), self.prefixes[key]
        shared = min(common_prefix_length(contexts), limit) if len(contexts) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            return 0, None
        cache = self.model.new_kv_cache(1, shared)
        self.model(torch.tensor([contexts[0][:shared]], device=self.device), kv_cache=cache, logits_to_keep=1)
        self.prefixes[tuple(contexts[0][:shared])] = cache
        while len(self.prefixes) > PREFIXES_KEPT:
            self.prefixes.popitem(last=False)
        return shared, cache

    # -- batch layout -------------------------------------------------------------------
    def _encode(self, rows: list[SequenceState], contexts: list[list[int]], extra: int) -> tuple:
        """Run `contexts` through the model; the cache has room for `extra` more positions.

        A prefix all contexts share is encoded once and copied to every row: the layout is then
        [prefix, padding, rest], the padding masked (positions count real tokens only).
        """
        shared, prefix = self._prefix(contexts)
        rests = [ctx[shared:] for ctx in contexts]
        width = max(map(len, rests))
        capacity = min(self.context, shared + width + extra)
        ids = torch.full((len(rows), width), self.tokenizer.eot_token, dtype=torch.long)
        mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, rest in enumerate(rests):
            ids[i, width - len(rest) :] = torch.tensor(rest)
            mask[i, shared + width - len(rest) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        padded = bool((mask == 0).any())
        cache = self.model.new_kv_cache(len(rows), capacity)
        if prefix is not None:
            cache.keys[:, :, :, :shared] = prefix.keys[:, :, :, :shared]  # broadcast over the batch
            cache.values[:, :, :, :shared] = prefix.values[:, :, :, :shared]
            cache.length = shared
        logits = self.model(ids, kv_cache=cache, attention_mask=mask if padded else None, logits_to_keep=1)
        logits = logits[:, -1].float()
        return cache, mask, logits

    def _rebuild(self) -> None:
        """Re-encode every row from its last tokens: slides the window past the context."""
        keep = self.context - self.context // 4
        contexts = [row.context()[-keep:] for row in self.rows]
        extra = max(row.remaining() for row in self.rows)
        self.cache, self.mask, self.logits = self._encode(self.rows, contexts, extra)
        self.padded = bool((self.mask == 0).any())

    @torch.inference_mode()
    def add(self, rows: list[SequenceState]) -> None:
        """Encode new sequences and merge them into the batch (unfinished ones only)."""
        rows = [row for row in rows if not row.finished]
        if not rows:
            return
        extra = max(row.remaining() for row in rows + self.rows)
        cache, mask, logits = self._encode(rows, [row.context() for row in rows], extra)
        if self.cache is None:
            self.rows, self.cache, self.mask, self.logits = rows, cache, mask, logits
        else:
            self._merge(rows, cache, mask, logits, extra)
        self.padded = bool((self.mask == 0).any())

    def _merge(self, rows, cache: KVCache, mask: torch.Tensor, logits: torch.Tensor, extra: int) -> None:
        """Append rows to the batch, right-aligning both caches to the longer one."""
        old, old_len, new_len = self.cache, self.cache.length, cache.length
        length = max(old_len, new_len)
        capacity = min(self.context, length + extra)
        merged = self.model.new_kv_cache(len(self.rows) + len(rows), capacity)
        b = len(self.rows)
        merged.keys[:, :b, :, length - old_len : length] = old.keys[:, :, :, :old_len]
        merged.values[:, :b, :, length - old_len : length] = old.values[:, :, :, :old_len]
        merged.keys[:, b:, :, length - new_len : length] = cache.keys[:, :, :, :new_len]
        merged.values[:, b:, :, length - new_len : length] = cache.values[:, :, :, :new_len]
        merged.length = length
        full_mask = torch.zeros((merged.keys.shape[1], length), dtype=torch.long, device=self.device)
        full_mask[:b, length - old_len :] = self.mask
        full_mask[b:, length - new_len :] = mask
        self.rows = self.rows + rows
        self.cache, self.mask = merged, full_mask
        self.logits = torch.cat([self.logits, logits])

    def _drop_finished(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not (row.finished or row.cancelled)]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.logits = [], None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.cache.select(index)
        self.mask, self.logits = self.mask[index], self.logits[index]
        # Columns that are padding in every remaining row cost attention for nothing: cut them.
        first = int(self.mask.any(0).int().argmax())
        if first:
            self.cache.keys = self.cache.keys[:, :, :, first:]
            self.cache.values = self.cache.values[:, :, :, first:]
            self.cache.length -= first
            self.mask = self.mask[:, first:]
        self.padded = bool((self.mask == 0).any())

    # -- one step -----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[SequenceState]:
        """Pick the next token of every active sequence; returns the rows that took part."""
        self._drop_finished()  # cancelled since the last step
        if not self.rows:
            return []
        rows = self.rows
        tokens, logprobs, tops = next_tokens(self.logits, rows, self.tokenizer)
        for row, token, logprob, top in zip(rows, tokens.tolist(), logprobs.tolist(), tops, strict=True):
            row.accept(token, logprob, top)
        self._drop_finished()
        if not self.rows:
            return rows
        if len(self.rows) != len(rows):
            alive = {id(row) for row in self.rows}
            tokens = tokens[[i for i, row in enumerate(rows) if id(row) in alive]]
        if self.cache.length >= self.cache.max_length:
            self._rebuild()
            return rows
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long, device=self.device)], 1)
        attention_mask = self.mask if self.padded else None
        decode_step = getattr(self.model, "decode_step", None)  # the inference kernels' step (gpt2kit.inference)
        if decode_step is not None:
            self.logits = decode_step(tokens, self.cache, attention_mask)
        else:
            logits = self.model(tokens[:, None], kv_cache=self.cache, attention_mask=attention_mask)
            self.logits = logits[:, -1].float()
        return rows


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence has in common."""
    first, length = sequences[0], min(map(len, sequences))
    for other in sequences[1:]:
        length = next((k for k in range(length) if other[k] != first[k]), length)
    return length


class _EvalMode:
    """Run a model in eval mode (no dropout) and restore its mode afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    max_batch_size: int = 32,
) -> list[Completion]:
    """Continue every prompt; results come back in prompt order.

    At most `max_batch_size` sequences run at once; as they finish, waiting
    prompts join the batch.
    """
    if max_batch_size < 1:
        raise GPT2KitError(f"max_batch_size must be >= 1, got {max_batch_size}")
    rows = make_sequences(tokenizer, prompts, config, model.config.n_positions)
    decoder = Decoder(model, tokenizer)
    waiting = list(reversed(rows))
    with _EvalMode(model):
        while waiting or decoder.active:
            # Refill in chunks: each merge copies the cache, so wait until half the batch is free.
            if waiting and decoder.active <= max_batch_size // 2:
                joining = [waiting.pop() for _ in range(min(len(waiting), max_batch_size - decoder.active))]
                decoder.add(joining)
            decoder.step()
    completions = [row.completion() for row in rows]
    if config.best_of == 1:
        return completions
    per_prompt = config.best_of
    return [best_completions(completions[i : i + per_prompt], 1)[0] for i in range(0, len(rows), per_prompt)]


def stream(model: GPT, tokenizer: Tokenizer, prompt: str | Sequence[int], config: GenerationConfig) -> Iterator[str]:
    """Yield the completion of one prompt as text deltas, each valid UTF-8 and never part of a stop string."""
    if config.best_of != 1:
        raise GPT2KitError("best_of cannot stream: the best candidate is known only when all have finished")
    (row,) = make_sequences(tokenizer, [prompt], config, model.config.n_positions)
    decoder = Decoder(model, tokenizer)
    with _EvalMode(model):
        decoder.add([row])
        while decoder.active:
            decoder.step()
            delta = row.take_delta()
            if delta:
                yield delta
    delta = row.take_delta()
    if delta:
        yield delta


@torch.inference_mode()
def prompt_logprobs(
    model: GPT, tokenizer: Tokenizer, ids: list[int], top: int = 0
) -> tuple[list[float | None], list[dict[str, float] | None] | None]:
    """Each prompt token's logprob given the tokens before it (None for the first), and top alternatives.

    A prompt longer than the context is scored in windows that overlap by half a context.
    """
    device = next(model.parameters()).device
    context = model.config.n_positions
    logprobs: list[float | None] = [None]
    tops: list[dict[str, float] | None] | None = [None] if top > 0 else None
    # A window of context - 1 inputs, plus its last target: the model sees a whole context at a time.
    # (A model of one position cannot score; max keeps a one-token prompt's [None] for it.)
    windows = rolling_windows(len(ids), max(1, context - 1), max(1, context // 2), full_context=True)
    with _EvalMode(model):
        for window in windows:
            logits = model(torch.tensor([ids[window.start : window.end + 1]], device=device))
            logits = logits[0, :, : tokenizer.vocab_size]
            # Window position j predicts token start + j + 1: the last n_scored positions before the end.
            first = window.end - window.start - window.n_scored
            log_probs = torch.log_softmax(logits.float(), -1)[first : window.end - window.start]
            targets = torch.tensor(ids[window.end + 1 - window.n_scored : window.end + 1], device=device)
            logprobs += log_probs.gather(1, targets[:, None])[:, 0].tolist()
            if tops is not None:
                values, indices = log_probs.topk(min(top, log_probs.shape[-1]), -1)
                for row_values, row_ids in zip(values.tolist(), indices.tolist(), strict=True):
                    tops.append({token_text(tokenizer, t): v for t, v in zip(row_ids, row_values, strict=True)})
    return logprobs, tops
