"""CNN/Daily Mail summarisation, induced with "TL;DR:".

The article (truncated from the end to fit), then `\\nTL;DR:`; 100 tokens are
sampled with top-k 2 (seeded per article) and the first 3 sentences are the
summary. The no-hint variant samples after the bare article, showing how much
the hint itself does. ROUGE-1/2/L F1 from `rouge-score`.
"""

from __future__ import annotations

from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.data import DataSource, HFDataset, expect_str, iter_records, require_examples
from gpt2kit.evals.metrics import first_sentences, rouge_f1
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec

HINT = "\nTL;DR:"
SUMMARY_TOKENS = 100
TOP_K = 2
SENTENCES = 3


def load_articles(source: DataSource) -> list[tuple[str, str]]:
    """(article, reference summary) pairs."""
    pairs = [
        (expect_str(r["article"], where, "article"), expect_str(r["highlights"], where, "highlights"))
        for where, r in iter_records(source, ("article", "highlights"))
    ]
    require_examples(pairs, source, "articles")
    return pairs


def summarize(ctx: TaskContext, articles: list[str], hint: bool) -> list[str]:
    hint_ids = ctx.encode(HINT) if hint else []
    room = ctx.context_length - SUMMARY_TOKENS - len(hint_ids)
    if room < 1:
        raise GPT2KitError(
            f"cnn_dailymail: a context of {ctx.context_length} tokens leaves no room for an article "
            f"before {SUMMARY_TOKENS} summary tokens"
        )
    prompts = [ctx.encode(article)[:room] + hint_ids for article in articles]
    completions = ctx.generate(
        prompts, max_new_tokens=SUMMARY_TOKENS, temperature=1.0, top_k=TOP_K, seed=ctx.options.seed
    )
    return [first_sentences(c.text, SENTENCES) for c in completions]


def run(ctx: TaskContext) -> TaskOutput:
    pairs = ctx.limited(load_articles(ctx.data))
    articles = [a for a, _ in pairs]
    references = [" ".join(r.split("\n")) for _, r in pairs]
    with_hint = summarize(ctx, articles, hint=True)
    without_hint = summarize(ctx, articles, hint=False)
    metrics = rouge_f1(with_hint, references)
    metrics["rouge_avg"] = (metrics["rouge1"] + metrics["rouge2"] + metrics["rougeL"]) / 3
    plain = rouge_f1(without_hint, references)
    plain["rouge_avg"] = (plain["rouge1"] + plain["rouge2"] + plain["rougeL"]) / 3
    metrics.update({f"{k}_no_hint": v for k, v in plain.items()})
    samples = [
        {"index": i, "summary": s, "summary_no_hint": p, "reference": r}
        for i, (s, p, r) in enumerate(zip(with_hint, without_hint, references, strict=True))
    ]
    room = ctx.context_length - SUMMARY_TOKENS
    protocol = (
        f"article (first tokens that fit, {room} with the hint) + '\\nTL;DR:'; {SUMMARY_TOKENS} tokens sampled "
        f"with top-k {TOP_K}, temperature 1, seed {ctx.options.seed} + article index; first {SENTENCES} sentences; "
        "ROUGE-1/2/L F1 (rouge-score, Porter stemmer), mean over articles; *_no_hint: the same without the hint"
    )
    return TaskOutput(metrics=metrics, n=len(pairs), protocol=protocol, samples=samples)


TASKS = (
    TaskSpec(
        name="cnn_dailymail",
        metrics=("rouge1", "rouge2", "rougeL", "rouge_avg", "and each with _no_hint"),
        family="summarization",
        columns=(
            Column("rouge_avg", "CNN/DM TL;DR (R-AVG)", "acc", {"1542M": 21.40}),
            Column("rouge_avg_no_hint", "CNN/DM no hint (R-AVG)", "acc", {"1542M": 15.03}),
        ),
        data_files=("cnndm.jsonl", "cnn_dailymail.jsonl"),
        file_format='cnndm.jsonl: JSON lines {"article": str, "highlights": str}',
        protocol="ROUGE-1/2/L F1 of the first 3 sentences of 100 top-k-2 tokens after '\\nTL;DR:'; and without the hint",
        run=run,
        hf_dataset=HFDataset("abisee/cnn_dailymail", "3.0.0", "test"),
    ),
)
