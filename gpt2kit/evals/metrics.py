"""Metrics of the generative tasks: SQuAD/CoQA answer matching, ROUGE, BLEU, sentence cutting, confidence.

ROUGE and BLEU come from their reference packages (`rouge-score`, `sacrebleu`),
imported when used. Answer normalisation is SQuAD's, which CoQA's official
script also uses: lowercase, drop punctuation and the articles a/an/the,
collapse whitespace.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.detokenize import ABBREVIATIONS

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)
# A sentence ends at . ! or ? (and any closing quotes or brackets) before whitespace.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")
_LAST_WORD = re.compile(r"(\w+)\.$")


def normalize_answer(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    gold_tokens, predicted = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not gold_tokens or not predicted:
        return float(gold_tokens == predicted)  # both empty (e.g. "unknown" normalised away): a match
    common = sum((Counter(gold_tokens) & Counter(predicted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric, golds: Sequence[str], prediction: str) -> float:
    return max(metric(gold, prediction) for gold in golds)


def coqa_turn_scores(golds: Sequence[str], prediction: str) -> tuple[float, float]:
    """(EM, F1) of one CoQA turn as the official script computes them.

    With several gold answers, each is left out in turn and the prediction takes
    its best match among the others; the turn's score is the mean of those.
    This makes a human answer and the model's comparable (both are scored
    against the same number of references).
    """
    if not golds:
        raise GPT2KitError("CoQA: a turn has no gold answer")
    if len(golds) == 1:
        return exact_match(golds[0], prediction), token_f1(golds[0], prediction)
    em = f1 = 0.0
    for left_out in range(len(golds)):
        others = [g for k, g in enumerate(golds) if k != left_out]
        em += max_over_golds(exact_match, others, prediction)
        f1 += max_over_golds(token_f1, others, prediction)
    return em / len(golds), f1 / len(golds)


def _is_abbreviation(word: str) -> bool:
    initial = len(word) == 1 and word.isupper()
    return initial or word.lower() in ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """Sentences of generated text; a period after an initial or a known abbreviation ("Mr.", "M.") ends none."""
    text = text.strip()
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        word = _LAST_WORD.search(text[start : match.end()])
        if word and _is_abbreviation(word.group(1)):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def first_sentences(text: str, count: int) -> str:
    return " ".join(split_sentences(text)[:count])


def rouge_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (rouge-score, Porter stemming) over the pairs, as fractions."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    n = len(predictions)
    return {kind: total / n for kind, total in totals.items()}


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exponential smoothing) on sacrebleu's 0-100 scale."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def accuracy_of_most_confident(
    correct: Sequence[bool], confidence: Sequence[float], fraction: float
) -> tuple[float, int]:
    """Accuracy on the `fraction` of answers with the highest confidence (at least one); ties keep input order."""
    if not correct:
        raise GPT2KitError("no answers to rank by confidence")
    k = max(1, math.ceil(fraction * len(correct)))
    ranked = sorted(range(len(correct)), key=lambda i: -confidence[i])[:k]
    return sum(correct[i] for i in ranked) / k, k
