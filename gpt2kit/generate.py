"""Text generation with the KV cache: greedy, temperature, top-k, top-p, stop strings, streaming.

Every prompt becomes a `SequenceState`. A `Decoder` runs many of them as one
left-padded batch that shares a preallocated KV cache, so each new token costs
one position. Sequences may join between steps (continuous batching: the
server uses this) and leave as soon as they finish, so finished sequences stop
costing compute. When a sequence outgrows the model's context, the window
slides: the batch is re-encoded from the last three quarters of the context.

Sampling draws one uniform number per sequence per step from that sequence's
own seeded generator, so a sequence's text depends on its prompt and seed, not
on what else shares its batch. Logprobs are the model's own (log-softmax of the
raw logits, before temperature and filtering).
"""

from __future__ import annotations

import codecs
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gpt2kit.config import Checked, config_from_dict, is_int64
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT, KVCache
from gpt2kit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


# The paper's samples use top-k 40 (section 3.9, and the released gpt-2 sampling code).
PAPER_TOP_K = 40


@dataclass
class GenerationConfig(Checked):
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int = 0  # per-token logprobs are always returned; if >0 also that many top alternatives
    ignore_eos: bool = False  # keep going past <|endoftext|> (it adds no text), as vLLM's ignore_eos
    # OpenAI's penalties, on the completion's own tokens: logit -= count * frequency + (count > 0) * presence
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # transformers' (CTRL's): over prompt and completion, divide a positive logit
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, in [-100, 100]
    min_tokens: int = 0  # <|endoftext|> cannot end the completion before this many tokens
    best_of: int = 1  # sample this many per prompt, keep the one(s) with the highest mean logprob

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if isinstance(self.logit_bias, dict):  # JSON and TOML keys are strings
            try:
                self.logit_bias = {int(k): v for k, v in self.logit_bias.items()}
            except (TypeError, ValueError):
                pass  # problems() names it
        self.check("generation config")

    def problems(self) -> list[str]:
        checks = (
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0"),
            (
                isinstance(self.temperature, (int, float)) and 0 <= self.temperature < float("inf"),
                "temperature",
                "must be a finite number >= 0",
            ),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "must be >= 0 (0 turns it off)"),
            (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
            (self.seed is None or is_int64(self.seed), "seed", "must be an integer in the signed 64-bit range"),
            (isinstance(self.logprobs, int) and self.logprobs >= 0, "logprobs", "must be >= 0"),
            (isinstance(self.ignore_eos, bool), "ignore_eos", "must be true or false"),
            (_number_in(self.presence_penalty, -2, 2), "presence_penalty", "must be in [-2, 2]"),
            (_number_in(self.frequency_penalty, -2, 2), "frequency_penalty", "must be in [-2, 2]"),
            (
                _number_in(self.repetition_penalty, 0, float("inf")) and self.repetition_penalty > 0,
                "repetition_penalty",
                "must be a finite number > 0 (1 turns it off)",
            ),
            (
                isinstance(self.logit_bias, dict)
                and all(isinstance(k, int) and k >= 0 and _number_in(v, -100, 100) for k, v in self.logit_bias.items()),
                "logit_bias",
                "must map token ids to numbers in [-100, 100]",
            ),
            (isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens", "must be >= 0"),
            (isinstance(self.best_of, int) and self.best_of >= 1, "best_of", "must be >= 1"),
        )
        return [f"{name} {rule}, got {getattr(self, name)!r}" for ok, name, rule in checks if not ok]

    @property
    def shapes_logits(self) -> bool:
        """Whether a penalty, a bias or min_tokens changes the logits (else decoding skips that work)."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1
            or self.logit_bias
            or self.min_tokens
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "generation config") -> GenerationConfig:
        """Build from a parsed TOML/YAML/JSON table, naming any unknown key."""
        return config_from_dict(cls, values, where)


def _number_in(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


@dataclass
class Completion:
    text: str  # completion only (not the prompt), cut before any stop string
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    token_logprobs: list[float] | None
    top_logprobs: list[dict[str, float]] | None
    prompt_token_ids: list[int] = field(default_factory=list)  # after any left truncation
    mean_logprob: float = float("-inf")  # over the generated tokens and a final <|endoftext|>: ranks best_of


def best_completions(candidates: Sequence[Completion], n: int) -> list[Completion]:
    """The `n` candidates with the highest mean logprob, best first (OpenAI's best_of); ties keep their order."""
    order = sorted(range(len(candidates)), key=lambda i: -candidates[i].mean_logprob)
    return [candidates[i] for i in order[:n]]


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as text; a token that is not whole UTF-8 is shown as `bytes:\\xNN...`, as OpenAI does."""
    data = tokenizer.token_bytes(token_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


class _Text:
    """Generated bytes -> valid UTF-8 text, cut at the first stop string.

    An incremental decoder holds back an incomplete multi-byte character, so a
    stop string is never matched, and text never streamed, inside one.
    """

    def __init__(self, stop: tuple[str, ...]):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._longest_stop = max(map(len, stop), default=0)
        self.text = ""
        self.stopped = False

    def add(self, data: bytes, final: bool = False) -> None:
        before = len(self.text)
        self.text += self._decoder.decode(data, final=final)
        if self._stop:
            # Only a match that ends in the new text is new.
            start = max(0, before - self._longest_stop + 1)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True

    def safe_length(self, finished: bool) -> int:
        """How much of the text can be handed out: all but a tail that may still grow into a stop string."""
        if finished or not self._stop:
            return len(self.text)
        for held in range(min(len(self.text), self._longest_stop - 1), 0, -1):
            tail = self.text[-held:]
            if any(s.startswith(tail) for s in self._stop):
                return len(self.text) - held
        return len(self.text)


class SequenceState:
    """One prompt being continued: its tokens, text, logprobs and how it finished."""

    def __init__(
        self,
        prompt_ids: list[int],
        config: GenerationConfig,
        tokenizer: Tokenizer,
        seed: int | None = None,
    ):
        self.prompt_ids = prompt_ids
        self.config = config
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] | None = [] if config.logprobs > 0 else None
        self.finish_reason: str | None = None
        self.end_logprob: float | None = None  # of the <|endoftext|> that ended it
        self.cancelled = False  # set from another thread (a disconnected client); the decoder drops the row
        self._text = _Text(config.stop)
        self._streamed = 0
        self.generator: torch.Generator | None = None
        if not config.greedy:
            self.generator = torch.Generator(device="cpu")
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)
        if config.max_new_tokens == 0:
            self.finish_reason = "length"

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self._text.text

    def context(self) -> list[int]:
        return self.prompt_ids + self.tokens

    def remaining(self) -> int:
        return self.config.max_new_tokens - len(self.tokens)

    def accept(self, token: int, logprob: float, top: dict[str, float] | None) -> None:
        """Record one generated token and decide whether the sequence is done."""
        end_of_text = token == self.tokenizer.eot_token
        if end_of_text and not self.config.ignore_eos:
            self._text.add(b"", final=True)
            self.finish_reason = "stop"
            self.end_logprob = logprob
            return
        self.tokens.append(token)
        self.token_logprobs.append(logprob)
        if self.top_logprobs is not None and top is not None:
            self.top_logprobs.append(top)
        self._text.add(b"" if end_of_text else self.tokenizer.token_bytes(token))
        if self._text.stopped:
            self.finish_reason = "stop"
        elif self.remaining() <= 0:
            self._text.add(b"", final=True)
            self.finish_reason = "stop" if self._text.stopped else "length"

    def take_delta(self) -> str:
        """Text produced since the last call that is final: valid UTF-8, never part of a stop string."""
        end = self._text.safe_length(self.finished)
        delta = self._text.text[self._streamed : end]
        self._streamed = max(self._streamed, end)
        return delta

    def completion(self) -> Completion:
        scored = self.token_logprobs + ([] if self.end_logprob is None else [self.end_logprob])
        return Completion(
            mean_logprob=sum(scored) / len(scored) if scored else float("-inf"),
            text=self.text,
            token_ids=list(self.tokens),
            finish_reason=self.finish_reason or "length",
            token_logprobs=list(self.token_logprobs),
            top_logprobs=None if self.top_logprobs is None else list(self.top_logprobs),
            prompt_token_ids=list(self.prompt_ids),
        )


def encode_prompt(tokenizer: Tokenizer, prompt: str | Sequence[int], context: int, where: str = "prompt") -> list[int]:
    """Token ids of a prompt, left-truncated to the context (with a warning); empty means `<|endoftext|>`."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        try:
            ids = [int(t) for t in prompt]
        except (TypeError, ValueError):
            raise GPT2KitError(f"{where}: expected a string or a list of token ids") from None
        problem = tokenizer.unknown_id(ids)
        if problem:
            raise GPT2KitError(f"{where}: {problem}")
    if not ids:
        ids = [tokenizer.eot_token]  # an empty prompt samples unconditionally, from the document boundary
    if len(ids) > context:
        logger.warning("%s: %d tokens exceed the context of %d; keeping the last %d", where, len(ids), context, context)
        ids = ids[-context:]
    return ids


class Decoder:
    """Runs sequences as one left-padded batch with a shared KV cache.

    `add` encodes new sequences and merges them into the running batch;
    `step` picks one token for every active sequence and drops those that
    finished. `logits` holds each active row's next-token logits.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, share_prefixes: bool = True):
        if tokenizer.vocab_size > model.config.vocab_size:
            raise GPT2KitError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
            )
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
        cache = KVCache(self.model.config, 1, shared, device=self.device, dtype=self.model.wte.weight.dtype)
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
        cache = KVCache(self.model.config, len(rows), capacity, device=self.device, dtype=self.model.wte.weight.dtype)
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
        merged = KVCache(
            self.model.config, len(self.rows) + len(rows), capacity, device=self.device, dtype=old.keys.dtype
        )
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
        tokens, logprobs, tops = _next_tokens(self.logits, rows, self.tokenizer)
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
        self.logits = self.model(tokens[:, None], kv_cache=self.cache, attention_mask=attention_mask)[:, -1].float()
        return rows


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence has in common."""
    first, length = sequences[0], min(map(len, sequences))
    for other in sequences[1:]:
        length = next((k for k in range(length) if other[k] != first[k]), length)
    return length


def _next_tokens(
    logits: torch.Tensor, rows: list[SequenceState], tokenizer: Tokenizer
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float] | None]]:
    """Each row's next token under its own settings, its logprob, and its top alternatives if asked for."""
    vocab = tokenizer.vocab_size
    logits = logits[:, :vocab]  # a model may have padded its vocabulary
    shaped = _shape_logits(logits, rows, tokenizer.eot_token)
    tokens = shaped.argmax(-1)
    sampled = [i for i, row in enumerate(rows) if not row.config.greedy]
    if sampled:
        tokens[sampled] = _sample(shaped[sampled], [rows[i] for i in sampled]).to(tokens.device)
    log_probs = torch.log_softmax(logits, -1)  # the model's own, as OpenAI and vLLM report them
    chosen = log_probs.gather(1, tokens[:, None])[:, 0]
    tops: list[dict[str, float] | None] = [None] * len(rows)
    wanted = [i for i, row in enumerate(rows) if row.config.logprobs > 0]
    if wanted:
        k = min(vocab, max(rows[i].config.logprobs for i in wanted))
        values, ids = log_probs[wanted].topk(k, -1)
        for i, row_values, row_ids in zip(wanted, values.tolist(), ids.tolist(), strict=True):
            n = rows[i].config.logprobs
            tops[i] = {token_text(tokenizer, t): v for t, v in zip(row_ids[:n], row_values[:n], strict=True)}
    return tokens, chosen, tops


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


# A prompt prefix shared by the sequences joining a batch is encoded once when it is at least this long;
# the last few shared prefixes are kept, so that later requests with the same few-shot prompt reuse them.
MIN_SHARED_PREFIX = 32
PREFIXES_KEPT = 4

NUCLEUS_GUESS = 1024  # top-p looks for its nucleus among this many tokens first, avoiding a full sort


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
    scaled = _temper(logits, temperature)
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
        values, order = scaled[with_k].topk(max(top_k[i] for i in with_k), -1)
        rank = torch.arange(values.shape[-1], device=device)
        limit = torch.tensor([top_k[i] for i in with_k], device=device)
        probs = torch.softmax(values.masked_fill(rank[None, :] >= limit[:, None], float("-inf")), -1)
        pick(with_k, nucleus(probs, top_p[with_k]), order)
    only_p = [i for i, k in enumerate(top_k) if k == 0 and rows[i].config.top_p < 1]
    if only_p:
        probs = torch.softmax(scaled[only_p], -1)
        head, order = probs.topk(min(vocab, NUCLEUS_GUESS), -1)
        found = head.sum(-1) >= top_p[only_p]
        inside = [i for i, ok in zip(only_p, found.tolist(), strict=True) if ok]
        if inside:
            pick(inside, nucleus(head[found], top_p[inside]), order[found])
        outside = [i for i, ok in zip(only_p, found.tolist(), strict=True) if not ok]
        if outside:
            sorted_probs, order = probs[~found].sort(-1, descending=True)
            pick(outside, nucleus(sorted_probs, top_p[outside]), order)
    plain = [i for i, k in enumerate(top_k) if k == 0 and rows[i].config.top_p >= 1]
    if plain:
        pick(plain, torch.softmax(scaled[plain], -1))
    return tokens


def make_sequences(
    tokenizer: Tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    config: GenerationConfig,
    context: int,
) -> list[SequenceState]:
    """`best_of` SequenceStates per prompt; with a seed, candidate j of prompt i samples with seed + i * best_of + j."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise GPT2KitError("prompts must be a list of strings or of token-id lists (wrap a single prompt in a list)")
    check_vocabulary(config, tokenizer)
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, (str, Sequence)):
            raise GPT2KitError(f"prompt {i}: expected a string or a list of token ids, got {type(prompt).__name__}")
        ids = encode_prompt(tokenizer, prompt, context, where=f"prompt {i}")
        for candidate in range(config.best_of):
            seed = None if config.seed is None else config.seed + i * config.best_of + candidate
            rows.append(SequenceState(list(ids), config, tokenizer, seed=seed))
    return rows


def check_vocabulary(config: GenerationConfig, tokenizer: Tokenizer) -> None:
    """Token ids in the settings (logit_bias) must be tokens of this vocabulary."""
    problem = tokenizer.unknown_id(config.logit_bias)
    if problem:
        raise GPT2KitError(f"logit_bias: {problem}")


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
    begin, end, scored = 0, min(len(ids), context), 1
    with _EvalMode(model):
        while scored < len(ids):
            logits = model(torch.tensor([ids[begin:end]], device=device))[0, :, : tokenizer.vocab_size]
            # Window position j predicts token begin + j + 1; take the targets not scored yet.
            log_probs = torch.log_softmax(logits.float(), -1)[scored - begin - 1 : end - begin - 1]
            targets = torch.tensor(ids[scored:end], device=device)
            logprobs += log_probs.gather(1, targets[:, None])[:, 0].tolist()
            if tops is not None:
                values, indices = log_probs.topk(min(top, log_probs.shape[-1]), -1)
                for row_values, row_ids in zip(values.tolist(), indices.tolist(), strict=True):
                    tops.append({token_text(tokenizer, t): v for t, v in zip(row_ids, row_values, strict=True)})
            scored = end
            end = min(len(ids), end + max(1, context // 2))
            begin = max(0, end - context)
    return logprobs, tops
