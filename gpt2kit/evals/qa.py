"""Natural Questions (open): factoid answers from the model's parameters alone.

The context holds N example `Q: ... A: ...` pairs from another split, then the
question and `A:`; the answer is decoded greedily until a newline. Exact match
uses SQuAD normalisation against any gold answer. The answer's probability
(the product of its tokens' probabilities) ranks the answers, and the accuracy
on the most confident 1% is reported too, as in the paper.
"""

from __future__ import annotations

import math

from gpt2kit.evals.data import DataSource, HFDataset, expect_str, expect_str_list, iter_records, require_examples
from gpt2kit.evals.metrics import accuracy_of_most_confident, exact_match, max_over_golds
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec, carve_examples, draw_examples, left_truncate

MAX_ANSWER_TOKENS = 24
CONFIDENT_FRACTION = 0.01


def load_questions(source: DataSource) -> list[tuple[str, list[str]]]:
    items = [
        (expect_str(r["question"], where, "question"), expect_str_list(r["answer"], where, "answer"))
        for where, r in iter_records(source, ("question", "answer"))
    ]
    require_examples(items, source, "questions")
    return items


def answer_logprob(completion, tokenizer) -> float:
    """Log-probability of the tokens that make up the answer text (the stop newline's token excluded when separate).

    An empty answer is no answer: it ranks below every other (-inf).
    """
    target = completion.text.encode("utf-8")
    if not target.strip():
        return -math.inf
    total, text = 0.0, b""
    for token, logprob in zip(completion.token_ids, completion.token_logprobs, strict=False):
        if len(text) >= len(target) and text.startswith(target):
            break
        text += tokenizer.token_bytes(token)
        total += logprob
    return total


def run(ctx: TaskContext) -> TaskOutput:
    items = load_questions(ctx.data)
    if ctx.examples is not None:
        shots = draw_examples(load_questions(ctx.examples), ctx.options.shots, ctx.options.seed)
        origin = f"{len(shots)} pairs drawn (seed {ctx.options.seed}) from {ctx.examples.describe()}"
    else:
        shots, items = carve_examples(items, ctx.options.shots, ctx.options.seed)
        origin = f"{len(shots)} pairs drawn (seed {ctx.options.seed}) from the evaluated file and not scored (no other split given)"
    items = ctx.limited(items)
    preamble = "".join(f"Q: {q}\nA: {answers[0]}\n\n" for q, answers in shots)
    room = ctx.context_length - MAX_ANSWER_TOKENS
    prompts = [left_truncate(ctx.encode(f"{preamble}Q: {q}\nA:"), room) for q, _ in items]
    completions = ctx.generate(prompts, max_new_tokens=MAX_ANSWER_TOKENS, temperature=0.0, stop=("\n",))
    correct, confidence, samples = [], [], []
    for i, ((question, golds), completion) in enumerate(zip(items, completions, strict=True)):
        prediction = completion.text.strip()
        hit = bool(max_over_golds(exact_match, golds, prediction))
        logprob = answer_logprob(completion, ctx.tokenizer)
        correct.append(hit)
        confidence.append(logprob)
        sample = {"index": i, "question": question, "prediction": prediction, "golds": golds, "correct": hit}
        samples.append({**sample, "probability": math.exp(logprob)})
    top_accuracy, top_n = accuracy_of_most_confident(correct, confidence, CONFIDENT_FRACTION)
    metrics = {"em": sum(correct) / len(correct), "em_top1pct": top_accuracy}
    protocol = (
        f"context: {origin}, as 'Q: q\\nA: a\\n\\n', then 'Q: q\\nA:' (left-truncated to {room} tokens); greedy, up to "
        f"{MAX_ANSWER_TOKENS} tokens, until a newline; exact match after SQuAD normalisation against any gold answer; "
        f"em_top1pct: accuracy on the {top_n} most probable answers (1%, by the product of token probabilities)"
    )
    return TaskOutput(metrics=metrics, n=len(items), protocol=protocol, samples=samples)


TASKS = (
    TaskSpec(
        name="nq_open",
        paper_split="dev",
        metrics=("em", "em_top1pct"),
        family="question answering",
        columns=(
            Column("em", "NQ (ACC)", "acc", {"1542M": 4.1}),
            Column("em_top1pct", "NQ most confident 1% (ACC)", "acc", {"1542M": 63.1}),
        ),
        data_files=("NQ-open.dev.jsonl", "NQ-open.efficientqa.dev.1.1.jsonl"),
        file_format='NQ-open.dev.jsonl: JSON lines {"question": str, "answer": [str, ...]}; example pairs from '
        "--data nq_open:examples=... or NQ-open.train.jsonl",
        protocol="exact match (SQuAD normalisation) of the greedy answer after N example Q/A pairs; top-1% accuracy",
        run=run,
        hf_dataset=HFDataset("google-research-datasets/nq_open", None, "validation"),
        example_files=("NQ-open.train.jsonl",),
        hf_examples=HFDataset("google-research-datasets/nq_open", None, "train"),
        uses_examples=True,
    ),
)
