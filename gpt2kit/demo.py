"""`gpt2kit demo`: the paper's two claims, end to end, offline, in minutes on a CPU.

1. `synth` writes a small synthetic web in which tasks occur naturally, and held-out evaluation sets
2. a byte-level BPE is trained on it
3. `prepare` tokenizes it into shards
4. CPU presets of several sizes train on the same tokens for the same budget
5. each is evaluated zero-shot on every synthetic task, and on held-out perplexity, by `gpt2kit eval`
6. each draws samples

and `report.md` gathers a Table-3-shaped table with trivial baselines, the training curves, the score
against parameters with its log-linear trend, samples and the time of each step.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from gpt2kit import synth
from gpt2kit.report import Column, markdown_table, trend_lines
from gpt2kit.sweep import EvalJob, SweepConfig, run_sweep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    corpus_mb: float
    vocab_size: int
    sizes: tuple[str, ...]
    tokens: int
    eval_limit: int


FULL = DemoPlan(
    corpus_mb=6.0, vocab_size=2048, sizes=("cpu-100k", "cpu-1m", "cpu-3m"), tokens=1_500_000, eval_limit=150
)
QUICK = DemoPlan(corpus_mb=1.0, vocab_size=1024, sizes=("cpu-100k",), tokens=200_000, eval_limit=40)

# `gpt2kit train` settings shared by every size: small batches and a high learning rate suit tiny models.
TRAIN_OVERRIDES = [
    "context_length=256",
    "batch_tokens=2048",
    "micro_batch_size=8",
    "device=cpu",
    "optim.lr=4e-3",
    "optim.min_lr=4e-4",
    "optim.warmup_steps=30",
    "log_interval=10",
    "eval_interval=100",
    "eval_windows=16",
    "checkpoint_interval=200",
    "keep_checkpoints=1",
]

SAMPLE_PROMPTS = ["Velorian phrasebook, lesson 7\n\n", "Forum: Quick questions\n\nQ:", "Town news\n\n", ""]


def eval_jobs(eval_dir: Path) -> list[EvalJob]:
    """The synthetic tasks, each read by the real task of `gpt2kit eval` whose format it shares."""
    e = lambda name: str(eval_dir / name)
    return [
        EvalJob("lambada", "lambada", e(synth.LAMBADA_FILE)),
        EvalJob("world_qa", "nq_open", e(synth.NQ_FILE), e(synth.NQ_EXAMPLES_FILE)),
        EvalJob("arithmetic", "nq_open", e(synth.ARITHMETIC_FILE), e(synth.ARITHMETIC_EXAMPLES_FILE)),
        EvalJob(
            "velorian",
            "wmt14_en_fr",
            f"{e(synth.TRANSLATION_SRC)},{e(synth.TRANSLATION_REF)}",
            f"{e(synth.TRANSLATION_DEV_SRC)},{e(synth.TRANSLATION_DEV_REF)}",
        ),
        EvalJob("tldr", "cnn_dailymail", e(synth.CNNDM_FILE)),
        EvalJob("heldout", "wikitext2", e(synth.HELDOUT_FILE)),
    ]


COLUMNS = [
    Column("lambada", "acc_last_word", "Stories, last word (ACC)", percent=True),
    Column("world_qa", "em", "World QA (EM)", percent=True),
    Column("arithmetic", "em", "Arithmetic (EM)", percent=True),
    Column("velorian", "bleu", "English-Velorian (BLEU)"),
    Column("tldr", "rouge_avg", "TL;DR news (R-AVG)", percent=True),
    Column("heldout", "word_ppl", "Held-out web (PPL)", higher_is_better=False),
]


def trivial_baselines(eval_dir: Path, data_dir: Path, tokenizer, seed: int) -> tuple[dict[str, float], dict[str, str]]:
    """Each column's context-free baseline, with a note saying what it is."""
    from gpt2kit import baselines
    from gpt2kit.data.shards import open_tokens
    from gpt2kit.prepare import load_manifest

    label = {c.task: c.label for c in COLUMNS}
    references = synth.read_segments(eval_dir / synth.TRANSLATION_REF)
    examples = synth.read_segments(eval_dir / synth.TRANSLATION_DEV_REF)
    manifest = load_manifest(data_dir)
    train_tokens = [open_tokens(data_dir / shard.name) for shard in manifest.train_shards()]
    import numpy as np

    values = {
        label["lambada"]: baselines.lambada_most_frequent_word(eval_dir / synth.LAMBADA_FILE),
        label["world_qa"]: baselines.qa_most_frequent_answer(eval_dir / synth.NQ_FILE),
        label["arithmetic"]: baselines.qa_most_frequent_answer(eval_dir / synth.ARITHMETIC_FILE),
        label["velorian"]: baselines.translation_constant_output(references, examples),
        label["tldr"]: baselines.summary_random_three(eval_dir / synth.CNNDM_FILE, seed),
        label["heldout"]: baselines.unigram_word_perplexity(
            np.concatenate(train_tokens),
            (eval_dir / synth.HELDOUT_FILE).read_text(encoding="utf-8"),
            tokenizer,
            tokenizer.vocab_size,
        ),
    }
    notes = {
        label["lambada"]: "always the most frequent final word",
        label["world_qa"]: "always the most frequent answer",
        label["arithmetic"]: "always the most frequent answer",
        label["velorian"]: "the same output for every sentence: the example pairs' most frequent Velorian words",
        label["tldr"]: "three random sentences of the article (the paper's random-3)",
        label["heldout"]: "a unigram model of the training tokens (add-one smoothed)",
    }
    return values, notes


INTRO = """\
Models of three sizes were trained on the same {tokens:,} tokens of a synthetic web (`gpt2kit synth`,
{corpus_mb:g} MB, seed {seed}) and evaluated zero-shot by `gpt2kit eval` on held-out sets that never occur in the
training text. The tasks are not trained for: they occur in the web the way they do on the real one
(encyclopedia pages and `Q:`/`A:` forum threads, phrasebooks with `english = velorian` lines, news posts ending in
`TL;DR:`, stories, homework sheets). Table 3 of the paper has one row per model; here the first row is a
trivial baseline."""


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> list[str]:
    """Run the whole demo under `out`; returns summary lines (the table, the trends, where the report is)."""
    from gpt2kit.prepare import prepare
    from gpt2kit.tokenizer import Tokenizer, train

    plan = QUICK if quick else FULL
    out = Path(out)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    web = synth.generate(
        out / "web", synth.SynthConfig(size_mb=plan.corpus_mb, seed=seed, eval_examples=200), progress=True
    )
    timings["generate the corpus"] = time.perf_counter() - start
    logger.info("synth: %s", web.summary())

    start = time.perf_counter()
    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "vocab.json").exists():
        train(synth.iter_documents(web.out), plan.vocab_size, files=False, show_progress=True).save(tokenizer_dir)
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    timings["train the BPE"] = time.perf_counter() - start

    start = time.perf_counter()
    data_dir = out / "data"
    prepare([str(p) for p in web.train_files], str(tokenizer_dir), data_dir, val_fraction=0.02, seed=seed)
    timings["prepare the shards"] = time.perf_counter() - start

    baselines, notes = trivial_baselines(web.eval_dir, data_dir, tokenizer, seed)
    config = SweepConfig(
        data=str(data_dir),
        out=str(out),
        sizes=list(plan.sizes),
        tokens=plan.tokens,
        eval_jobs=eval_jobs(web.eval_dir),
        overrides=TRAIN_OVERRIDES,
        eval_limit=plan.eval_limit,
        no_detokenize=("wikitext2",),
        prompts=SAMPLE_PROMPTS,
        seed=seed,
    )
    intro = INTRO.format(tokens=plan.tokens, corpus_mb=plan.corpus_mb, seed=seed)
    report, results = run_sweep(
        config,
        columns=COLUMNS,
        baselines=baselines,
        baseline_notes=notes,
        title="gpt2kit demo: zero-shot tasks and model capacity on a synthetic web",
        intro=intro,
        timings=timings,
    )
    from gpt2kit.report import ModelReport

    models = [ModelReport(r.size, r.params, r.results) for r in results]
    return [
        markdown_table(models, COLUMNS, baselines),
        "",
        *trend_lines(models, COLUMNS, baselines),
        "",
        f"report: {report}",
    ]


def generated_text(n_sentences: int, seed: int) -> str:
    """Simple seeded sentences, for tests that need a little text to train a tokenizer on."""
    rng = random.Random(seed)
    subjects = ["the river", "a merchant", "the old town", "every sailor", "the council", "my neighbour"]
    verbs = ["crossed", "remembered", "sold", "painted", "visited", "counted"]
    objects = ["the bridge", "forty lanterns", "a blue boat", "the northern market", "three letters", "the harbour"]
    sentences = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n_sentences)]
    return "\n".join(" ".join(sentences[i : i + 5]).capitalize() for i in range(0, n_sentences, 5)) + "\n"
