"""Trivial baselines: what a task's metric gives without a language model.

Each function reads the same evaluation file the harness reads and scores a context-free guess with the
harness's own metric functions, so the baseline and the models are measured the same way:

- LAMBADA: always the most frequent final word of the set
- question answering: always the most frequent gold answer of the set
- translation: the same output for every sentence, the most frequent target words of the example pairs
- summarisation: three random sentences of the article (the paper's random-3 baseline)
- held-out perplexity: a unigram model of the training tokens (per token)
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import numpy as np

from gpt2kit.errors import GPT2KitError
from gpt2kit.io import read_jsonl


def _examples(path: str | Path) -> list[dict]:
    rows = read_jsonl(path)
    if not rows:
        raise GPT2KitError(f"{path}: no examples")
    return rows


def lambada_most_frequent_word(path: str | Path) -> float:
    """acc_last_word of always guessing the set's most frequent final word."""
    targets = [row["text"].rsplit(" ", 1)[-1] for row in _examples(path)]
    return Counter(targets).most_common(1)[0][1] / len(targets)


def qa_most_frequent_answer(path: str | Path) -> float:
    """Exact match (SQuAD normalisation) of always giving the set's most frequent first gold answer."""
    from gpt2kit.evals.metrics import exact_match, max_over_golds, normalize_answer

    rows = _examples(path)
    guess = Counter(normalize_answer(row["answer"][0]) for row in rows).most_common(1)[0][0]
    return sum(max_over_golds(exact_match, row["answer"], guess) for row in rows) / len(rows)


def translation_constant_output(references: list[str], example_targets: list[str]) -> float:
    """Corpus BLEU of one fixed output for every sentence: the example targets' most frequent words, in order of frequency."""
    from gpt2kit.evals.metrics import corpus_bleu

    if not references or not example_targets:
        raise GPT2KitError("translation baseline: no references or example pairs")
    words = Counter(w for t in example_targets for w in t.split())
    length = round(sum(len(t.split()) for t in example_targets) / len(example_targets))
    guess = " ".join(w for w, _ in words.most_common(length))
    return corpus_bleu([guess] * len(references), references)


def summary_random_three(path: str | Path, seed: int = 0) -> float:
    """ROUGE average (R-1, R-2, R-L F1) of three random sentences of each article, seeded."""
    from gpt2kit.evals.metrics import rouge_f1, split_sentences

    rows = _examples(path)
    rng = random.Random(seed)
    guesses = []
    for row in rows:
        sentences = split_sentences(row["article"])
        guesses.append(" ".join(rng.sample(sentences, min(3, len(sentences)))))
    scores = rouge_f1(guesses, [row["highlights"] for row in rows])
    return (scores["rouge1"] + scores["rouge2"] + scores["rougeL"]) / 3


def unigram_perplexity(train_tokens: np.ndarray, text: str, tokenizer) -> float:
    """Per-token perplexity of `text` under add-one unigram frequencies of `train_tokens`.

    The text is tokenized as the harness's corpus tasks do (every line ended by a newline), so the value
    compares with their `ppl`.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not any(line.strip() for line in lines):
        raise GPT2KitError("unigram baseline: the held-out text is empty")
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=tokenizer.vocab_size) + 1.0
    log_probs = np.log(counts / counts.sum())
    ids = np.asarray(tokenizer.encode("".join(line + "\n" for line in lines)), dtype=np.int64)
    return math.exp(-float(log_probs[ids].mean()))
