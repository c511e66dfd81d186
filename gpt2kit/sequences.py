"""A sequence being generated: its settings (`GenerationConfig`), its state and its result (`Completion`).

A `SequenceState` is one prompt being continued. It records each token the
decoder picks, turns the bytes into text (never splitting a UTF-8 character),
cuts the text at the first stop string, decides when the sequence is done, and
hands out streamed text that can no longer change.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gpt2kit.config import Checked, config_from_dict, is_int64
from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


# The paper's samples use top-k 40 (section 3.9, and the released gpt-2 sampling code).
PAPER_TOP_K = 40


@dataclass
class GenerationConfig(Checked):
    max_new_tokens: int = 64  # tokens to generate per sample
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None  # sample i uses seed + i; None: unseeded
    logprobs: int = 0  # per-token logprobs are always returned; if >0 also that many top alternatives
    ignore_eos: bool = False  # keep going past <|endoftext|> (it adds no text), as vLLM's ignore_eos
    # OpenAI's penalties, on the completion's own tokens: logit -= count * frequency + (count > 0) * presence
    presence_penalty: float = 0.0  # OpenAI's, -2..2: minus this for a token already generated
    frequency_penalty: float = 0.0  # OpenAI's, -2..2: minus this times the token's count
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
