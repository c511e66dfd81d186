"""What every task shares: its options, its spec (for the registry and `--list`), its context and its output."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from gpt2kit.config import Checked, is_int64, load_config
from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.data import DataSource, HFDataset
from gpt2kit.evals.scoring import Scorer

if TYPE_CHECKING:
    from gpt2kit.model import GPT
    from gpt2kit.tokenizer import Tokenizer


@dataclass
class EvalOptions(Checked):
    """Settings shared by all tasks; each task records the ones it used in its protocol string."""

    limit: int | None = None  # score at most this many examples per task (lines for corpora)
    batch_size: int = 8  # rows per forward pass; never changes a score
    context_length: int | None = None  # tokens of context; default: the model's n_positions
    stride: int | None = None  # corpus perplexity: window step; default = context_length (no overlap)
    detokenize: bool = True  # undo dataset tokenization (WikiText, PTB, LAMBADA plain text, CBT, 1BW)
    no_detokenize: tuple[str, ...] = ()  # tasks whose detokenizer is off even when `detokenize` is on
    lambada_stopword_filter: bool = False  # also report the paper's stop-word-filtered LAMBADA accuracy
    shots: int = 10  # example pairs in the context for translation and NQ
    seed: int = 0  # sampling (CNN/DM) and example-pair draws

    def __post_init__(self) -> None:
        if isinstance(self.no_detokenize, str):
            self.no_detokenize = tuple(t for t in self.no_detokenize.split(",") if t)
        self.no_detokenize = tuple(self.no_detokenize)
        self.check("eval options")

    def problems(self) -> list[str]:
        checks = (
            (self.limit is None or (isinstance(self.limit, int) and self.limit >= 1), "limit must be >= 1"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be >= 1"),
            (
                self.context_length is None or (isinstance(self.context_length, int) and self.context_length >= 2),
                "context_length must be >= 2",
            ),
            (self.stride is None or (isinstance(self.stride, int) and self.stride >= 1), "stride must be >= 1"),
            (
                self.stride is None or self.context_length is None or self.stride <= self.context_length,
                "stride must not exceed context_length",
            ),
            (isinstance(self.shots, int) and self.shots >= 0, "shots must be >= 0"),
            (is_int64(self.seed), "seed must be an integer in the signed 64-bit range"),
        )
        return [message for ok, message in checks if not ok]

    def detokenize_for(self, task: str) -> bool:
        return self.detokenize and task not in self.no_detokenize and "all" not in self.no_detokenize

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> EvalOptions:
        """Options from a TOML or YAML file (a flat table, or one under an `eval` key)."""
        return load_config(cls, path, section="eval")


@dataclass
class TaskOutput:
    metrics: dict[str, float]
    n: int
    protocol: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class TaskContext:
    """Everything a task's `run` needs: the model, its data, the options and the shared scorer."""

    name: str
    model: GPT
    tokenizer: Tokenizer
    options: EvalOptions
    data: DataSource
    examples: DataSource | None  # few-shot pool, where the task uses one
    scorer: Scorer

    @property
    def context_length(self) -> int:
        return self.scorer.max_length

    def limited(self, items: Sequence) -> list:
        return list(items if self.options.limit is None else items[: self.options.limit])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def generate(self, prompts: Sequence[Sequence[int]], **settings: Any) -> list:
        """Completions from `gpt2kit.generate` (settings are `GenerationConfig` fields)."""
        from gpt2kit.generate import GenerationConfig, generate

        config = GenerationConfig(**settings)
        return generate(
            self.model, self.tokenizer, [list(p) for p in prompts], config, max_batch_size=self.options.batch_size
        )


def left_truncate(tokens: Sequence[int], room: int) -> list[int]:
    """The last `room` tokens: a prompt too long for the context keeps its end (the question)."""
    if room < 1:
        raise GPT2KitError(f"the context length leaves no room for a prompt ({room} tokens)")
    return list(tokens[-room:])


def draw_examples(pool: list, n: int, seed: int) -> list:
    return random.Random(seed).sample(pool, min(n, len(pool)))


def carve_examples(items: list, n: int, seed: int) -> tuple[list, list]:
    """N seeded examples taken out of `items`, and the rest (which are then scored)."""
    chosen = set(random.Random(seed).sample(range(len(items)), min(n, max(len(items) - 1, 0))))
    return [items[i] for i in sorted(chosen)], [x for i, x in enumerate(items) if i not in chosen]


@dataclass(frozen=True)
class Column:
    """A column of the results table: a metric, its header, how it is shown, and the paper's numbers by model size."""

    metric: str
    header: str
    unit: str  # "ppl", "acc" (shown as percent), "bpb", "bleu"
    paper: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A task in the registry: its data, its protocol in a line, how to run it, and the paper's numbers."""

    name: str
    family: str
    columns: tuple[Column, ...]  # shown in the markdown table; the first is the headline metric
    metrics: tuple[str, ...]  # every metric the task reports
    data_files: tuple[str | tuple[str, ...], ...]
    file_format: str
    protocol: str
    run: Callable[[TaskContext], TaskOutput]
    hf_dataset: HFDataset | None = None
    example_files: tuple[str | tuple[str, ...], ...] = ()
    hf_examples: HFDataset | None = None
    uses_examples: bool = False
    complete_data: Callable[[DataSource], DataSource] | None = None  # e.g. find a translation's reference file
    paper_split: str = "test"  # the split the paper's numbers are on

    @property
    def headline(self) -> str:
        return self.columns[0].metric
