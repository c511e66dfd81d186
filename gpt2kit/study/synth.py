"""`gpt2kit synth`: a seeded synthetic "web" in which tasks occur naturally, plus held-out evaluation sets.

The paper's claim is that a language model trained on web text picks up tasks from "naturally occurring
demonstrations". This module builds a small world (countries, cities, people, a second language called
Velorian) and writes web-like documents about it in which tasks appear the way they do on the web:

- encyclopedia pages state the world's facts, restated across many pages (knowledge for question answering)
- forum threads ask and answer `Q:` / `A:` questions about some of those facts (the question-answering format)
- news posts end in a `TL;DR:` summary (summarization)
- phrasebook and travel pages pair English with Velorian (`the red house = ta kolo vem`; translation)
- stories end in a word that only the long context predicts (LAMBADA)
- arithmetic homework sheets and questions

The world is deliberately small and repetitive, so that models of a few million parameters, trained for
minutes on a CPU, learn some of it; bigger models learn more.

Alongside the training documents it writes held-out evaluation sets in the file formats that `gpt2kit eval`
reads for the real tasks. Every evaluation item has a key word sequence that must never occur in the training
text, in the paper's 8-gram normalisation (lower-cased alphanumeric words): the 8 words that end a LAMBADA
passage, a question, each side of a translation pair, a reference summary. Training documents that contain a
key are discarded while generating, and `find_key_overlaps` checks a written corpus independently.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpt2kit.data.bloom import normalise_words
from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.translation import read_segments
from gpt2kit.io import atomic_write_text, iter_jsonl, read_jsonl, to_jsonl
from gpt2kit.study.world import ARITH_MAX, EVAL_PHRASE_SHAPES, Fact, World, Writer, arithmetic_question

# -- configuration ---------------------------------------------------------------------------------------------

DOCUMENT_KINDS = ("encyclopedia", "forum", "news", "phrasebook", "story", "arithmetic")
# The task demonstration each kind of document carries ("" for none); arithmetic depends on its form.
PLANTED_DEMONSTRATION = {"encyclopedia": "", "forum": "qa", "news": "summarization", "phrasebook": "translation",
                         "story": ""}  # fmt: skip


def _arithmetic_form(text: str) -> str:
    """Arithmetic documents are either sums written `a + b = c` or questions and answers in words."""
    return "qa" if text.startswith("Forum:") else "arithmetic"


DEFAULT_MIX = {"encyclopedia": 0.26, "forum": 0.14, "news": 0.14, "phrasebook": 0.2, "story": 0.16, "arithmetic": 0.1}

TRAIN_DIR = "train"
EVAL_DIR = "eval"
MANIFEST = "manifest.json"
# Evaluation file names are the standard ones `gpt2kit eval` looks for under --data-dir.
LAMBADA_FILE = "lambada_test.jsonl"
NQ_FILE = "NQ-open.dev.jsonl"
NQ_EXAMPLES_FILE = "NQ-open.train.jsonl"
CNNDM_FILE = "cnndm.jsonl"
TRANSLATION_SRC = "newstest2014-fren-src.en.sgm"
TRANSLATION_REF = "newstest2014-fren-ref.fr.sgm"
TRANSLATION_DEV_SRC = "newstest2013-src.en.sgm"
TRANSLATION_DEV_REF = "newstest2013-ref.fr.sgm"
ARITHMETIC_FILE = "arithmetic.jsonl"
ARITHMETIC_EXAMPLES_FILE = "arithmetic.train.jsonl"
HELDOUT_FILE = "heldout.txt"

MIN_KEY_WORDS = 4  # the overlap guard indexes keys by their first 4 words


@dataclass(frozen=True)
class SynthConfig:
    """What `gpt2kit synth` generates. `mix` weights document kinds (normalised to sum to 1)."""

    size_mb: float = 20.0
    seed: int = 0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    eval_examples: int = 200
    heldout_kb: int = 200
    shard_mb: float = 8.0

    def __post_init__(self) -> None:
        if not self.size_mb > 0:
            raise GPT2KitError(f"synth: size_mb must be positive, got {self.size_mb}")
        if self.eval_examples < 10:
            raise GPT2KitError(f"synth: eval_examples must be at least 10, got {self.eval_examples}")
        if self.heldout_kb <= 0:
            raise GPT2KitError(f"synth: heldout_kb must be positive, got {self.heldout_kb}")
        if not self.shard_mb > 0:
            raise GPT2KitError(f"synth: shard_mb must be positive, got {self.shard_mb}")
        unknown = sorted(set(self.mix) - set(DOCUMENT_KINDS))
        if unknown:
            raise GPT2KitError(
                f"synth: unknown document kind {unknown[0]!r} in mix; kinds: {', '.join(DOCUMENT_KINDS)}"
            )
        if any(weight < 0 for weight in self.mix.values()) or not sum(self.mix.values()) > 0:
            raise GPT2KitError(f"synth: mix weights must be non-negative and not all zero, got {self.mix}")


# -- normalisation and the overlap guard ----------------------------------------------------------------------


class KeyGuard:
    """Finds evaluation keys (word sequences of >= 4 words) inside texts, by exact match.

    Keys are indexed by their first four words, so a text costs one set look-up per word position
    (done in C through `zip` and `isdisjoint`), and only texts with a candidate are matched in full.
    """

    def __init__(self, keys: Iterable[tuple[str, ...]] = ()):
        self._by_prefix: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        for key in keys:
            self.add(key)

    def add(self, key: tuple[str, ...]) -> None:
        if len(key) < MIN_KEY_WORDS:
            raise ValueError(f"overlap key {' '.join(key)!r} is shorter than {MIN_KEY_WORDS} words")
        self._by_prefix.setdefault(key[:MIN_KEY_WORDS], set()).add(key)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_prefix.values())

    def hits(self, text: str) -> list[tuple[str, ...]]:
        words = normalise_words(text)
        windows = zip(words, words[1:], words[2:], words[3:], strict=False)
        if self._by_prefix.keys().isdisjoint(windows):
            return []
        found = []
        for i in range(len(words) - MIN_KEY_WORDS + 1):
            for key in self._by_prefix.get(tuple(words[i : i + MIN_KEY_WORDS]), ()):
                if tuple(words[i : i + len(key)]) == key:
                    found.append(key)
        return found


# -- evaluation sets --------------------------------------------------------------------------------------------


@dataclass
class EvalSets:
    """Held-out items in memory, with the keys that must not occur in training text."""

    lambada: list[str] = field(default_factory=list)
    nq: list[Fact] = field(default_factory=list)
    nq_examples: list[Fact] = field(default_factory=list)
    cnndm: list[tuple[str, str]] = field(default_factory=list)
    translation: list[tuple[str, str]] = field(default_factory=list)
    translation_dev: list[tuple[str, str]] = field(default_factory=list)
    arithmetic: list[tuple[int, int]] = field(default_factory=list)
    arithmetic_examples: list[tuple[int, int]] = field(default_factory=list)


def eval_keys(eval_dir: Path) -> dict[str, list[tuple[str, ...]]]:
    """Read the written evaluation files and derive each item's key, independently of the generator."""
    keys: dict[str, list[tuple[str, ...]]] = {}
    keys["lambada"] = [tuple(normalise_words(row["text"])[-8:]) for row in read_jsonl(eval_dir / LAMBADA_FILE)]
    keys["nq_open"] = [tuple(normalise_words(row["question"])) for row in read_jsonl(eval_dir / NQ_FILE)]
    keys["arithmetic"] = [tuple(normalise_words(row["question"])) for row in read_jsonl(eval_dir / ARITHMETIC_FILE)]
    keys["cnn_dailymail"] = [tuple(normalise_words(row["highlights"])) for row in read_jsonl(eval_dir / CNNDM_FILE)]
    sides = read_segments(eval_dir / TRANSLATION_SRC) + read_segments(eval_dir / TRANSLATION_REF)
    keys["translation"] = [tuple(normalise_words(s)) for s in sides]
    return keys


def _build_eval_sets(world: World, config: SynthConfig) -> EvalSets:
    rng = random.Random(f"eval:{config.seed}")
    writer = Writer(world, rng)
    n = config.eval_examples
    sets = EvalSets()
    seen: set[tuple[str, ...]] = set()

    def unique(key: tuple[str, ...]) -> bool:
        if key in seen:
            return False
        seen.add(key)
        return True

    while len(sets.lambada) < n:
        passage, target = writer.story()
        text = f"{passage} {target}"
        if unique(tuple(normalise_words(text)[-8:])):
            sets.lambada.append(text)
    sets.nq = list(world.heldout_facts)
    sets.nq_examples = rng.sample(world.asked_facts, min(50, len(world.asked_facts)))
    while len(sets.cnndm) < n:
        article, summary = writer.news_article(writer.news_event())
        if unique(tuple(normalise_words(summary))):
            sets.cnndm.append((article, summary))
    while len(sets.translation) < n:
        en, vel = writer.phrase(EVAL_PHRASE_SHAPES)
        if unique(tuple(normalise_words(en))):
            sets.translation.append((en, vel))
    while len(sets.translation_dev) < 50:
        en, vel = writer.phrase(EVAL_PHRASE_SHAPES)
        if tuple(normalise_words(en)) not in seen:
            sets.translation_dev.append((en, vel))
    pairs = [(a, b) for a in range(ARITH_MAX) for b in range(ARITH_MAX)]
    rng.shuffle(pairs)
    n_arith = min(n, len(pairs) // 5)
    sets.arithmetic = pairs[:n_arith]
    sets.arithmetic_examples = pairs[n_arith : n_arith + 50]
    return sets


def _sgm(lines: list[str], set_tag: str, lang: str) -> str:
    out = [
        f'<{set_tag} setid="velorian-synth" srclang="en" trglang="vel">',
        f'<doc docid="synth" genre="phrasebook" origlang="{lang}">',
    ]
    out += [f'<seg id="{i}">{html.escape(line, quote=False)}</seg>' for i, line in enumerate(lines, 1)]
    return "\n".join(out + ["</doc>", f"</{set_tag}>"]) + "\n"


def _write_eval_sets(sets: EvalSets, eval_dir: Path) -> None:
    files = {
        LAMBADA_FILE: to_jsonl({"text": t} for t in sets.lambada),
        NQ_FILE: to_jsonl({"question": f.question, "answer": [f.answer]} for f in sets.nq),
        NQ_EXAMPLES_FILE: to_jsonl({"question": f.question, "answer": [f.answer]} for f in sets.nq_examples),
        CNNDM_FILE: to_jsonl({"article": a, "highlights": h} for a, h in sets.cnndm),
        ARITHMETIC_FILE: to_jsonl(
            {"question": arithmetic_question(a, b), "answer": [str(a + b)]} for a, b in sets.arithmetic
        ),
        ARITHMETIC_EXAMPLES_FILE: to_jsonl(
            {"question": arithmetic_question(a, b), "answer": [str(a + b)]} for a, b in sets.arithmetic_examples
        ),
        TRANSLATION_SRC: _sgm([en for en, _ in sets.translation], "srcset", "en"),
        TRANSLATION_REF: _sgm([vel for _, vel in sets.translation], "refset", "en"),
        TRANSLATION_DEV_SRC: _sgm([en for en, _ in sets.translation_dev], "srcset", "en"),
        TRANSLATION_DEV_REF: _sgm([vel for _, vel in sets.translation_dev], "refset", "en"),
    }
    for name, text in files.items():
        atomic_write_text(eval_dir / name, text)


# -- the corpus -------------------------------------------------------------------------------------------------


@dataclass
class SynthResult:
    out: Path
    train_files: list[Path]
    eval_dir: Path
    documents: dict[str, int]
    train_bytes: int
    rejected: int

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in self.documents.items())
        return (
            f"{sum(self.documents.values()):,} documents, {self.train_bytes / 1e6:.1f} MB in {len(self.train_files)} "
            f"shard(s) under {self.out / TRAIN_DIR} ({kinds}); {self.rejected:,} rejected for overlap with eval keys; "
            f"eval sets under {self.eval_dir}"
        )


def _document_stream(
    world: World, sets: EvalSets, guard: KeyGuard, mix: dict[str, float], rng: random.Random, rejected: list[int]
) -> Iterator[tuple[str, str]]:
    """Endless (kind, text) documents in proportion to `mix`, skipping any that contain an eval key."""
    writer = Writer(world, rng)
    held_pairs = set(sets.arithmetic)
    makers: dict[str, Callable[[], str]] = {
        "encyclopedia": writer.encyclopedia,
        "forum": writer.forum,
        "news": writer.news,
        "phrasebook": writer.phrasebook,
        "story": writer.story_document,
        "arithmetic": lambda: writer.arithmetic(lambda a, b: (a, b) not in held_pairs),
    }
    kinds = [k for k in DOCUMENT_KINDS if mix.get(k, 0) > 0]
    weights = [mix[k] for k in kinds]
    while True:
        for kind in rng.choices(kinds, weights, k=1024):
            text = makers[kind]()
            if guard.hits(text):
                rejected[0] += 1
                continue
            yield kind, text


def synthesize(out: str | Path, config: SynthConfig, progress: bool = False) -> SynthResult:
    """Write the training shards, evaluation sets, world description and manifest under `out`."""
    from tqdm.auto import tqdm

    out = Path(out)
    train_dir, eval_dir = out / TRAIN_DIR, out / EVAL_DIR
    for stale in sorted(train_dir.glob("synth-*.jsonl")) if train_dir.exists() else []:
        stale.unlink()  # a smaller re-run must not leave old shards behind for `prepare` to pick up
    world = World(config.seed)
    sets = _build_eval_sets(world, config)
    _write_eval_sets(sets, eval_dir)
    guard = KeyGuard(key for keys in eval_keys(eval_dir).values() for key in keys)

    mix = {k: v / sum(config.mix.values()) for k, v in config.mix.items()}
    rejected = [0]
    counts = dict.fromkeys(DOCUMENT_KINDS, 0)
    planted: Counter[str] = Counter()
    stream = _document_stream(world, sets, guard, mix, random.Random(f"train:{config.seed}"), rejected)
    target, shard_target = int(config.size_mb * 1e6), int(config.shard_mb * 1e6)
    train_files: list[Path] = []
    written = 0
    with tqdm(total=target, unit="B", unit_scale=True, desc="synth", disable=not progress) as bar:
        while written < target:
            shard: list[str] = []
            shard_bytes = 0
            while shard_bytes < shard_target and written + shard_bytes < target:
                kind, text = next(stream)
                counts[kind] += 1
                planted[PLANTED_DEMONSTRATION.get(kind, _arithmetic_form(text))] += 1
                shard.append(json.dumps({"text": text, "kind": kind}, ensure_ascii=False) + "\n")
                size = len(text.encode("utf-8"))
                shard_bytes += size
                bar.update(size)
            path = train_dir / f"synth-{len(train_files):05d}.jsonl"
            atomic_write_text(path, "".join(shard))
            train_files.append(path)
            written += shard_bytes

    heldout_stream = _document_stream(world, sets, guard, mix, random.Random(f"heldout:{config.seed}"), [0])
    heldout: list[str] = []
    while sum(len(t) for t in heldout) < config.heldout_kb * 1000:
        heldout.append(next(heldout_stream)[1])
    atomic_write_text(eval_dir / HELDOUT_FILE, "\n".join(heldout))

    atomic_write_text(out / "world.json", json.dumps(world.to_dict(), indent=1, ensure_ascii=False))
    manifest = {
        "generator": "gpt2kit synth",
        "config": asdict(config),
        "documents": counts,
        # documents holding each kind of task demonstration, as `gpt2kit demonstrations` names the kinds
        "planted_demonstrations": {k: v for k, v in sorted(planted.items()) if k},
        "train_bytes": written,
        "rejected_for_overlap": rejected[0],
        "train_files": [p.name for p in train_files],
        "eval_files": {
            p.name: {
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "lines": p.read_text(encoding="utf-8").count("\n"),
            }
            for p in sorted(eval_dir.iterdir())
            if p.is_file() and not p.name.startswith(".")
        },
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return SynthResult(out, train_files, eval_dir, counts, written, rejected[0])


def iter_documents(synth_dir: str | Path) -> Iterator[str]:
    """The training documents of a generated corpus, in order."""
    train_dir = Path(synth_dir) / TRAIN_DIR
    files = sorted(train_dir.glob("synth-*.jsonl"))
    if not files:
        raise GPT2KitError(f"{train_dir}: no synth-*.jsonl shards (synthesize a web into {synth_dir} first)")
    for path in files:
        for _, row in iter_jsonl(path, required=("text",)):
            yield row["text"]


def find_key_overlaps(synth_dir: str | Path) -> dict[str, int]:
    """Count, per evaluation set, the items whose key occurs anywhere in the training documents."""
    synth_dir = Path(synth_dir)
    keys = eval_keys(synth_dir / EVAL_DIR)
    guard = KeyGuard(key for group in keys.values() for key in group)
    found: set[tuple[str, ...]] = set()
    for text in iter_documents(synth_dir):
        found.update(guard.hits(text))
    return {task: sum(key in found for key in group) for task, group in keys.items()}
