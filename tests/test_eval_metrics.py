import pytest

from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.metrics import (
    accuracy_of_most_confident,
    coqa_turn_scores,
    corpus_bleu,
    exact_match,
    first_sentences,
    normalize_answer,
    rouge_f1,
    split_sentences,
    token_f1,
)


def test_squad_normalisation():
    assert normalize_answer("  The Beatles!  ") == "beatles"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # only whole-word articles go


def test_exact_match_and_f1_by_hand():
    assert exact_match("The Beatles", "beatles.") == 1.0
    assert exact_match("Beatles", "the rolling stones") == 0.0
    # gold "red big dog" vs prediction "big red cat": 2 common tokens; P = 2/3, R = 2/3, F1 = 2/3.
    assert token_f1("red big dog", "big red cat") == pytest.approx(2 / 3)
    # gold "a b" (normalised "b") vs "b c": P = 1/2, R = 1, F1 = 2/3.
    assert token_f1("a b", "b c") == pytest.approx(2 / 3)
    assert token_f1("the", "") == 1.0  # both normalise to nothing
    assert token_f1("yes", "") == 0.0


def test_coqa_leave_one_out_by_hand():
    # Golds: "white", "white cat", "black". Prediction "white".
    # Leave out "white": max(F1 vs "white cat" = 2/3, vs "black" = 0) = 2/3; EM 0.
    # Leave out "white cat": max(1, 0) = 1; EM 1.  Leave out "black": max(1, 2/3) = 1; EM 1.
    em, f1 = coqa_turn_scores(["white", "white cat", "black"], "white")
    assert em == pytest.approx(2 / 3)
    assert f1 == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert coqa_turn_scores(["four"], "Four.") == (1.0, 1.0)
    with pytest.raises(GPT2KitError):
        coqa_turn_scores([], "x")


def test_sentences():
    text = 'He left. "Why?" She asked (quietly.) Mr. Smith and J. Doe came back! And again'
    assert split_sentences(text) == [
        "He left.",
        '"Why?"',
        "She asked (quietly.)",
        "Mr. Smith and J. Doe came back!",
        "And again",
    ]
    assert first_sentences(text, 3) == 'He left. "Why?" She asked (quietly.)'
    assert split_sentences("Prices rose 3.5 percent. M. Dupont a dit non.") == [
        "Prices rose 3.5 percent.",
        "M. Dupont a dit non.",
    ]


def test_rouge_by_hand():
    # "the cat sat" vs "the cat ran": unigrams 2/3 match; bigrams: "the cat" only, 1/2; LCS = 2 -> 2/3.
    scores = rouge_f1(["the cat sat"], ["the cat ran"])
    assert scores == pytest.approx({"rouge1": 2 / 3, "rouge2": 1 / 2, "rougeL": 2 / 3})
    # Two pairs average: the second is a perfect match.
    scores = rouge_f1(["the cat sat", "dogs bark"], ["the cat ran", "dogs bark"])
    assert scores["rouge1"] == pytest.approx((2 / 3 + 1) / 2)


def test_bleu_by_hand():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat": n-gram precisions 5/6, 3/5, 2/4, 1/3,
    # equal lengths (no brevity penalty): BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 0.5373...
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected, abs=0.01)
    assert corpus_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)


def test_accuracy_of_the_most_confident_by_hand():
    correct = [True, False, False, True] * 50  # 200 answers; the top 1% is the 2 most confident
    confidence = [0.0] * 200
    confidence[1], confidence[3] = 5.0, 4.0  # one wrong, one right
    assert accuracy_of_most_confident(correct, confidence, 0.01) == (0.5, 2)
    assert accuracy_of_most_confident([True, False], [0.1, 0.9], 0.01) == (0.0, 1)  # at least one answer
