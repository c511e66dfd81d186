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

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from gpt2kit.evals.translation import read_segments
from gpt2kit.io import atomic_write_text
from gpt2kit.outputs import DEMO, claim_directory
from gpt2kit.study import synth
from gpt2kit.study.report import ScoreColumn, capacity_table, trend_lines
from gpt2kit.study.sweep import TIMINGS_FILE, EvalJob, SweepConfig, record_timings, run_sweep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    corpus_mb: float
    heldout_kb: int
    vocab_size: int
    sizes: tuple[str, ...]
    tokens: int
    eval_limits: dict[str, int | None]  # examples per evaluation; None: the whole set


FULL = DemoPlan(
    corpus_mb=8.0,
    heldout_kb=100,
    vocab_size=1024,
    sizes=("cpu-25k", "cpu-100k", "cpu-1m"),
    tokens=2_000_000,
    eval_limits={},  # every example of every set: scoring takes seconds
)
QUICK = DemoPlan(
    corpus_mb=1.5,
    heldout_kb=30,
    vocab_size=1024,
    sizes=("cpu-100k",),
    tokens=500_000,
    eval_limits={"lambada": 40, "world_qa": 40, "arithmetic": 40, "velorian": 40, "tldr": 20, "heldout": None},
)

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

DEMO_SETTINGS = "demo.json"
# What a demo writes under its output directory (cleared when a demo with other settings reuses it).
DEMO_OUTPUTS = ("web", "tokenizer", "data", "runs", "sweep.json", "report.md", "loss.png", "capacity.png", TIMINGS_FILE)

SAMPLE_PROMPTS = ["Velorian phrasebook, lesson 7\n\n", "Forum: Quick questions\n\nQ:", "Town news\n\n", ""]


def eval_jobs(eval_dir: Path, limits: dict[str, int | None]) -> list[EvalJob]:
    """The synthetic tasks, each read by the real task of `gpt2kit eval` whose format it shares."""
    e = lambda name: str(eval_dir / name)
    jobs = [
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
    return [dataclasses.replace(job, limit=limits.get(job.name)) for job in jobs]


COLUMNS = [
    ScoreColumn("lambada", "acc_last_word", "Stories, last word (ACC)", percent=True),
    ScoreColumn("world_qa", "em", "World QA (EM)", percent=True),
    ScoreColumn("arithmetic", "em", "Arithmetic (EM)", percent=True),
    ScoreColumn("velorian", "bleu", "English-Velorian (BLEU)"),
    ScoreColumn("tldr", "rouge_avg", "TL;DR news (R-AVG)", percent=True),
    ScoreColumn("heldout", "ppl", "Held-out web (token PPL)", higher_is_better=False),
]


def trivial_baselines(eval_dir: Path, data_dir: Path, tokenizer, seed: int) -> tuple[dict[str, float], dict[str, str]]:
    """Each column's context-free baseline, with a note saying what it is."""
    import numpy as np

    from gpt2kit.data.shards import load_manifest, open_tokens
    from gpt2kit.study import baselines

    label = {c.task: c.label for c in COLUMNS}
    references = read_segments(eval_dir / synth.TRANSLATION_REF)
    examples = read_segments(eval_dir / synth.TRANSLATION_DEV_REF)
    train_tokens = [open_tokens(path) for path in load_manifest(data_dir).shard_paths(data_dir, "train")]

    values = {
        label["lambada"]: baselines.lambada_most_frequent_word(eval_dir / synth.LAMBADA_FILE),
        label["world_qa"]: baselines.qa_most_frequent_answer(eval_dir / synth.NQ_FILE),
        label["arithmetic"]: baselines.qa_most_frequent_answer(eval_dir / synth.ARITHMETIC_FILE),
        label["velorian"]: baselines.translation_constant_output(references, examples),
        label["tldr"]: baselines.summary_random_three(eval_dir / synth.CNNDM_FILE, seed),
        label["heldout"]: baselines.unigram_perplexity(
            np.concatenate(train_tokens), (eval_dir / synth.HELDOUT_FILE).read_text(encoding="utf-8"), tokenizer
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


def overlap_section(web: synth.SynthResult) -> str:
    """The paper's Table 6 for the synthetic web (share of eval 8-grams in training), beside the item keys found."""
    from gpt2kit.data.bloom import build_filter
    from gpt2kit.data.overlap import check_overlap

    bloom = web.out / "train-8grams.bloom"
    build_filter(web.train_files, bloom)
    files = {"lambada": synth.LAMBADA_FILE, "nq_open": synth.NQ_FILE, "arithmetic": synth.ARITHMETIC_FILE}
    files["cnn_dailymail"] = synth.CNNDM_FILE
    rows = check_overlap(bloom, [web.eval_dir / name for name in files.values()])
    keys_found = synth.find_key_overlaps(web.out)
    lines = [
        "| eval set | examples | % of 8-grams in training | % of examples with any | items whose key is in training |",
        "|---|---:|---:|---:|---:|",
    ]
    for (task, name), row in zip(files.items(), rows, strict=True):
        lines.append(
            f"| {name} | {row.examples} | {row.percent_ngrams:.1f} | {row.percent_examples:.1f} | {keys_found[task]} |"
        )
    lines.append(f"| translation pairs | - | - | - | {keys_found['translation']} |")
    return (
        "The world is small and repetitive on purpose, so many 8-grams of the evaluation sets also occur in training "
        "(measured with `gpt2kit overlap`, the paper's 8-gram Bloom filter). No evaluation item does: its key (the 8 "
        "words ending a story, a question, either side of a translation pair, a reference summary) never occurs in "
        "the training text (`docs/synthetic-web.md`).\n\n" + "\n".join(lines)
    )


INTRO = """\
Every model ({sizes}) was trained on the same {tokens:,} tokens of a synthetic web (`gpt2kit synth`,
{corpus_mb:g} MB, seed {seed}) and evaluated zero-shot by `gpt2kit eval` on held-out sets that never occur in the
training text. The tasks are not trained for: they occur in the web the way they do on the real one
(encyclopedia pages and `Q:`/`A:` forum threads, phrasebooks with `english = velorian` lines, news posts ending in
`TL;DR:`, stories, homework sheets). Table 3 of the paper has one row per model; here the first row is a
trivial baseline."""


def _start_fresh_if_changed(out: Path, plan: DemoPlan, seed: int) -> None:
    """Reuse `out` when it holds a run of the same plan and seed (the demo then resumes, step timings included);
    otherwise clear what an earlier demo wrote there."""
    settings = json.loads(json.dumps({"plan": dataclasses.asdict(plan), "seed": seed}))  # tuples as JSON lists
    settings_path = out / DEMO_SETTINGS
    try:
        same = json.loads(settings_path.read_text()) == settings
    except (OSError, ValueError):
        same = False
    if not same:
        if settings_path.exists():
            logger.info("%s holds a demo with other settings: starting afresh", out)
        for name in DEMO_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        atomic_write_text(settings_path, json.dumps(settings, indent=2))


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> list[str]:
    """Run the whole demo under `out`; returns summary lines (the table, the trends, where the report is)."""
    with claim_directory(out, DEMO) as claim:  # one writer; and a directory of the user's is never cleared
        return _run_demo(claim.directory, quick, seed)


def _run_demo(out: Path, quick: bool, seed: int) -> list[str]:
    from gpt2kit.data.prepare import prepare
    from gpt2kit.tokenizer import Tokenizer, train_tokenizer

    plan = QUICK if quick else FULL
    _start_fresh_if_changed(out, plan, seed)
    timings: dict[str, float] = {}  # the steps this call runs; record_timings adds those of earlier calls

    start = time.perf_counter()
    web = synth.synthesize(
        out / "web",
        synth.SynthConfig(size_mb=plan.corpus_mb, seed=seed, eval_examples=200, heldout_kb=plan.heldout_kb),
        progress=True,
    )
    timings["generate the corpus"] = time.perf_counter() - start
    logger.info("synth: %s", web.summary())

    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / "vocab.json").exists():
        start = time.perf_counter()
        train_tokenizer(synth.iter_documents(web.out), plan.vocab_size, files=False, show_progress=True).save(
            tokenizer_dir
        )
        timings["train the BPE"] = time.perf_counter() - start
    tokenizer = Tokenizer.from_dir(tokenizer_dir)

    start = time.perf_counter()
    data_dir = out / "data"
    prepare([str(p) for p in web.train_files], str(tokenizer_dir), data_dir, val_fraction=0.02, seed=seed)
    timings["prepare the shards"] = time.perf_counter() - start
    start = time.perf_counter()
    baselines, notes = trivial_baselines(web.eval_dir, data_dir, tokenizer, seed)
    timings["trivial baselines"] = time.perf_counter() - start
    start = time.perf_counter()
    overlap = overlap_section(web)
    timings["overlap of eval sets and training text"] = time.perf_counter() - start
    timings = record_timings(out, timings)
    config = SweepConfig(
        data=str(data_dir),
        out=str(out),
        sizes=list(plan.sizes),
        tokens=plan.tokens,
        eval_jobs=eval_jobs(web.eval_dir, plan.eval_limits),
        overrides=TRAIN_OVERRIDES,
        no_detokenize=("wikitext2",),
        prompts=SAMPLE_PROMPTS,
        seed=seed,
        train_filter=str(web.out / "train-8grams.bloom"),  # built by overlap_section
    )
    intro = INTRO.format(sizes=", ".join(plan.sizes), tokens=plan.tokens, corpus_mb=plan.corpus_mb, seed=seed)
    report, results = run_sweep(
        config,
        columns=COLUMNS,
        baselines=baselines,
        baseline_notes=notes,
        title="gpt2kit demo: zero-shot tasks and model capacity on a synthetic web",
        intro=intro,
        timings=timings,
        extra_sections=[("Overlap between the evaluation sets and the training text", overlap)],
    )
    from gpt2kit.study.report import ModelReport, memorisation_table

    models = [ModelReport(r.size, r.params, r.results, memorisation=r.memorisation) for r in results]
    return [
        capacity_table(models, COLUMNS, baselines),
        "",
        *trend_lines(models, COLUMNS, baselines),
        "",
        memorisation_table(models),
        "",
        f"report: {report}",
    ]
