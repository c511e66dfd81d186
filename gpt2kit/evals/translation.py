"""WMT-14 English<->French, induced with example pairs `source = target`.

The context holds N example pairs (from a separate dev file, drawn with the
seed), one per line as `source sentence = target sentence`, then the test
source followed by ` =`. The model decodes greedily until a newline and the
first sentence is the translation. Corpus BLEU from `sacrebleu`.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from gpt2kit.evals.data import DataSource, EvalDataError, HFDataset, file_source, read_text
from gpt2kit.evals.metrics import corpus_bleu, split_sentences
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec, carve_examples, draw_examples

_SEGMENT = re.compile(r"<seg[^>]*>(.*?)</seg>", re.IGNORECASE | re.DOTALL)


def read_segments(path: Path) -> list[str]:
    """Sentences of a WMT .sgm file (`<seg id=..>...</seg>`) or of a plain text file (one per line)."""
    text = read_text(path)
    if path.suffix.lower() == ".sgm" or "<seg" in text[:10000]:
        segments = [html.unescape(s).strip() for s in _SEGMENT.findall(text)]
        if not segments:
            raise EvalDataError(f"{path}: no <seg> elements in this SGML file")
        return segments
    return [line.strip() for line in text.splitlines()]


def partner_path(path: Path, source_lang: str, target_lang: str) -> Path:
    """The reference file that goes with a source file: WMT's src/ref naming, or the same stem in the other language."""
    name = path.name
    for src_mark, ref_mark in (
        (f"-src.{source_lang}", f"-ref.{target_lang}"),
        (f"src.{source_lang}", f"ref.{target_lang}"),
    ):
        if src_mark in name:
            return path.with_name(name.replace(src_mark, ref_mark))
    if path.suffix == f".{source_lang}":
        return path.with_suffix(f".{target_lang}")
    raise EvalDataError(
        f"{path}: cannot tell which file holds the {target_lang} side; give the task both files, SOURCE,REFERENCE"
    )


def read_pairs(source: DataSource, source_lang: str, target_lang: str) -> list[tuple[str, str]]:
    if source.rows is not None:
        try:
            return [(r["translation"][source_lang], r["translation"][target_lang]) for r in source.rows]
        except (KeyError, TypeError):
            raise EvalDataError(
                f"{source.describe()}: expected rows with translation.{source_lang} and translation.{target_lang}"
            ) from None
    if len(source.paths) != 2:
        raise EvalDataError(f"{source.describe()}: translation needs a source and a reference file")
    sources, targets = (read_segments(p) for p in source.paths)
    if len(sources) != len(targets):
        raise EvalDataError(
            f"{source.paths[0]} has {len(sources)} sentences but {source.paths[1]} has {len(targets)}; they must align"
        )
    pairs = [(s, t) for s, t in zip(sources, targets, strict=True) if s and t]
    if not pairs:
        raise EvalDataError(f"{source.describe()}: no sentence pairs")
    return pairs


def complete_pair(source_lang: str, target_lang: str):
    """Turn a single source file into the (source, reference) pair the task reads."""

    def complete(source: DataSource) -> DataSource:
        if source.rows is not None or len(source.paths) == 2:
            return source
        return file_source(source.paths[0], partner_path(source.paths[0], source_lang, target_lang))

    return complete


def fit_examples(ctx: TaskContext, shots: list[str], query: str, room: int) -> tuple[list[int], int]:
    """Prompt tokens: as many whole example lines as fit before the query (dropping from the front), and their count."""
    query_ids = ctx.encode(query)
    kept: list[list[int]] = []
    used = len(query_ids)
    for shot in reversed(shots):
        ids = ctx.encode(shot)
        if used + len(ids) > room:
            break
        kept.insert(0, ids)
        used += len(ids)
    if used > room:
        query_ids = query_ids[-room:]
    return [t for ids in kept for t in ids] + query_ids, len(kept)


def run_translation(ctx: TaskContext, source_lang: str, target_lang: str) -> TaskOutput:
    pairs = read_pairs(ctx.data, source_lang, target_lang)
    if ctx.examples is not None:
        shots = draw_examples(read_pairs(ctx.examples, source_lang, target_lang), ctx.options.shots, ctx.options.seed)
        shot_origin = f"{len(shots)} pairs drawn (seed {ctx.options.seed}) from {ctx.examples.describe()}"
    else:
        shots, pairs = carve_examples(pairs, ctx.options.shots, ctx.options.seed)
        shot_origin = (
            f"{len(shots)} pairs drawn (seed {ctx.options.seed}) from the test file and not scored (no dev file given)"
        )
    pairs = ctx.limited(pairs)
    max_new = min(128, ctx.context_length // 4)
    room = ctx.context_length - max_new
    shot_lines = [f"{s} = {t}\n" for s, t in shots]
    prompts, used = [], []
    for src, _ in pairs:
        ids, count = fit_examples(ctx, shot_lines, f"{src} =", room)
        prompts.append(ids)
        used.append(count)
    completions = ctx.generate(prompts, max_new_tokens=max_new, temperature=0.0, stop=("\n",))
    hypotheses = [next(iter(split_sentences(c.text)), "") for c in completions]
    references = [t for _, t in pairs]
    bleu = corpus_bleu(hypotheses, references)
    samples = [
        {"index": i, "source": s, "hypothesis": h, "reference": r, "examples_in_context": u}
        for i, ((s, r), h, u) in enumerate(zip(pairs, hypotheses, used, strict=True))
    ]
    protocol = (
        f"context: up to {len(shots)} lines 'source = target' ({shot_origin}; fewer when the {ctx.context_length}-token "
        f"context is full: min {min(used)}), then 'source ='; greedy, up to {max_new} tokens, until a newline; "
        "first sentence; sacrebleu corpus BLEU (13a, 0-100)"
    )
    return TaskOutput(metrics={"bleu": bleu}, n=len(pairs), protocol=protocol, samples=samples)


def _spec(source_lang: str, target_lang: str, paper: float) -> TaskSpec:
    name = f"wmt14_{source_lang}_{target_lang}"
    src_sgm = f"newstest2014-fren-src.{source_lang}.sgm"
    ref_sgm = f"newstest2014-fren-ref.{target_lang}.sgm"
    return TaskSpec(
        name=name,
        metrics=("bleu",),
        family="translation",
        columns=(Column("bleu", f"WMT14 {source_lang}-{target_lang} (BLEU)", "bleu", {"1542M": paper}),),
        data_files=((src_sgm, ref_sgm), (f"newstest2014.{source_lang}", f"newstest2014.{target_lang}")),
        file_format=f"{src_sgm} + {ref_sgm} (WMT SGML), or parallel plain text (one sentence per line): "
        f"--data {name}=SOURCE[,REFERENCE]; example pairs from --data {name}:examples=... or newstest2013",
        protocol="corpus BLEU; greedy first sentence after N example pairs 'source = target'",
        run=lambda ctx: run_translation(ctx, source_lang, target_lang),
        hf_dataset=HFDataset("wmt/wmt14", "fr-en", "test"),
        example_files=(
            (f"newstest2013-src.{source_lang}.sgm", f"newstest2013-ref.{target_lang}.sgm"),
            (f"newstest2013.{source_lang}", f"newstest2013.{target_lang}"),
        ),
        hf_examples=HFDataset("wmt/wmt14", "fr-en", "validation"),
        uses_examples=True,
        complete_data=complete_pair(source_lang, target_lang),
    )


TASKS = (_spec("en", "fr", 5.0), _spec("fr", "en", 11.5))
