"""Every task on a tiny hand-made fixture, with a bigram model whose answers are worked out by hand."""

import json
import math

import pytest
from eval_doubles import LOG_OTHER, LOG_SUCCESSOR, BigramLM, byte_tokenizer, chars, word_tokenizer

from gpt2kit.evals import EvalOptions, evaluate
from gpt2kit.evals import language_modeling as lm

BYTES = byte_tokenizer()


def run(model, task, path, tokenizer=BYTES, samples=None, **options):
    data = path if isinstance(path, dict) else {task: path}
    result = evaluate(model, tokenizer, [task], data, options=EvalOptions(**options), samples=samples)
    return result[task]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(tmp_path, name, records):
    return write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


# -- language modelling ------------------------------------------------------------------------

LM_SUCCESSORS = chars({"<eot>": "a", "a": "b", "b": " ", " ": "a"})


def test_ptb_word_perplexity_by_hand(tmp_path):
    path = write(tmp_path, "ptb.test.txt", " ab ab \n ab N \n")
    # Detokenized stream: <eot> "ab ab\nab 1\n". Transitions: eot>a + a>b + b>' ' + ' '>a + a>b (5 successors),
    # b>\n, \n>a, then a>b + b>' ' (2 successors), ' '>1, 1>\n: 7 successors and 4 others over 11 tokens.
    nll = -(7 * LOG_SUCCESSOR + 4 * LOG_OTHER)
    for options in ({}, {"context_length": 4}, {"context_length": 4, "stride": 1}):
        result = run(BigramLM(LM_SUCCESSORS), "ptb", path, **options)
        assert result["metrics"]["loss"] == pytest.approx(nll / 11)
        assert result["metrics"]["ppl"] == pytest.approx(math.exp(nll / 11))
        assert result["metrics"]["word_ppl"] == pytest.approx(math.exp(nll / 6))  # 4 words + 2 line ends
        assert result["metrics"]["bpb"] == pytest.approx(nll / math.log(2) / 11)
        assert result["counts"]["words"] == 6 and result["counts"]["tokens"] == 11
        assert result["n"] == 2
    assert "ptb detokenizer on" in result["protocol"] and "stride 1" in result["protocol"]


def test_detokenizer_off_scores_the_file_as_written(tmp_path):
    path = write(tmp_path, "ptb.test.txt", " ab ab \n ab N \n")
    result = run(BigramLM(LM_SUCCESSORS), "ptb", path, no_detokenize=("ptb",))
    assert result["counts"]["bytes"] == 15 and result["counts"]["words"] == 6
    assert "ptb detokenizer off" in result["protocol"]


def test_wikitext_limit_counts_lines(tmp_path):
    path = write(tmp_path, "wiki.test.tokens", " = A = \n \n ab ab . \n ab \n")
    result = run(BigramLM(LM_SUCCESSORS), "wikitext2", path, limit=3)
    assert result["n"] == 3 and result["counts"]["words"] == 3 + 0 + 3 + 3  # "= A =", "", "ab ab ." + 3 line ends
    assert result["counts"]["bytes"] == len("= A =\n\nab ab.\n")


def test_text8_bits_per_character_by_hand(tmp_path):
    path = write(tmp_path, "text8", "ab ab")
    result = run(BigramLM(LM_SUCCESSORS), "text8", path)
    # <eot>>a, a>b, b>' ', ' '>a, a>b: five successors over five characters.
    assert result["metrics"]["bpc"] == pytest.approx(-5 * LOG_SUCCESSOR / math.log(2) / 5)


def test_enwik8_scores_the_last_bytes_from_a_whole_character(tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "CHARACTER_TEST_SIZE", 6)
    path = tmp_path / "enwik8"
    path.write_bytes("xxxxé ab ab".encode())  # 12 bytes; the last 6 are " ab ab"
    result = run(BigramLM(LM_SUCCESSORS), "enwik8", path)
    assert result["counts"]["bytes"] == 6
    path.write_bytes("xxxé ab a".encode())  # last 6 bytes: the second byte of "é", then " ab a"
    result = run(BigramLM(LM_SUCCESSORS), "enwik8", path)
    assert result["counts"]["bytes"] == 5 and "1 bytes of a character" in result["protocol"]


# -- LAMBADA -------------------------------------------------------------------------------------

LAMBADA_SUCCESSORS = chars({"x": " ", " ": "b", "b": "c", "d": "c"})
LAMBADA_TEXTS = ["xx bc", "xx bd", "xx dc"]


def test_lambada_accuracies_and_perplexity_by_hand(tmp_path):
    path = write_jsonl(tmp_path, "lambada_test.jsonl", [{"text": t} for t in LAMBADA_TEXTS])
    samples = []
    result = run(BigramLM(LAMBADA_SUCCESSORS), "lambada", path, samples=samples)
    # Continuations " bc" (x>' ', ' '>b, b>c: all greedy), " bd" (last token wrong), " dc" (' '>d wrong, d>c right).
    metrics = result["metrics"]
    assert metrics["acc_last_word"] == pytest.approx(1 / 3)
    assert metrics["acc_last_token"] == pytest.approx(2 / 3)
    word_logprobs = [3 * LOG_SUCCESSOR, 2 * LOG_SUCCESSOR + LOG_OTHER, 2 * LOG_SUCCESSOR + LOG_OTHER]
    assert metrics["ppl"] == pytest.approx(math.exp(-sum(word_logprobs) / 3))
    assert metrics["ppl_last_token"] == pytest.approx(math.exp(-(2 * LOG_SUCCESSOR + LOG_OTHER) / 3))
    assert [s["target"] for s in samples] == ["bc", "bd", "dc"]
    assert result["n"] == 3 and len(result["data_sha256"]) == 64


def test_lambada_plain_text_is_detokenized(tmp_path):
    path = write(tmp_path, "lambada_development_plain_text.txt", "`` xx , '' he said , xx bc\n")
    samples = []
    result = run(BigramLM(LAMBADA_SUCCESSORS), "lambada", path, samples=samples)
    assert "plain text, detokenized" in result["protocol"] and samples[0]["target"] == "bc"
    assert result["metrics"]["acc_last_word"] == 1.0


def test_lambada_stopword_filter_skips_stop_words(tmp_path):
    tokenizer = word_tokenizer([" ate", " the", " cake", "she"])
    ids = {w: tokenizer.encode(w)[0] for w in (" ate", " the", " cake")}
    # After " ate" the model prefers " the" (a stop word), then " cake"; after either comes " ate" (a new word).
    model = BigramLM(
        {ids[" ate"]: ids[" the"], ids[" the"]: ids[" ate"], ids[" cake"]: ids[" ate"]},
        vocab_size=tokenizer.vocab_size,
        runners_up={ids[" ate"]: ids[" cake"]},
    )
    texts = ["she ate cake", "she ate the", "she she she ate cake"]  # the last one is left-padded in its batch
    path = write_jsonl(tmp_path, "lambada_test.jsonl", [{"text": t} for t in texts])
    for batch_size in (1, 8):
        samples = []
        result = run(
            model,
            "lambada",
            path,
            tokenizer=tokenizer,
            samples=samples,
            lambada_stopword_filter=True,
            batch_size=batch_size,
        )
        assert [s["prediction_stopword_filter"] for s in samples] == ["cake", "cake", "cake"]
        assert result["metrics"]["acc_last_word"] == pytest.approx(1 / 3)  # greedy says "the": right for the second
        assert result["metrics"]["acc_stopword_filter"] == pytest.approx(2 / 3)  # "cake": right for the others


# -- CBT and Winograd ---------------------------------------------------------------------------

CBT = """1 xx saw yy .
2 it was late .
3 he saw XXXXX .\tb\t\tb|d
1 zz ran .
2 he saw XXXXX .\td\t\tb|d
"""


def test_cbt_accuracy_by_hand(tmp_path):
    path = write(tmp_path, "cbtest_CN_valid_2000ex.txt", CBT)
    samples = []
    result = run(BigramLM(chars({" ": "b", "b": "."})), "cbt_cn", path, samples=samples)
    # Continuation " b." : w>' ' (other), ' '>b, b>. (successors); " d.": w>' ', ' '>d, d>. (others). "b" wins both.
    assert result["metrics"]["acc"] == 0.5
    assert samples[0]["logprobs"] == pytest.approx([LOG_OTHER + 2 * LOG_SUCCESSOR, 3 * LOG_OTHER])
    assert [s["prediction"] for s in samples] == [0, 0]


def test_winograd_partial_scoring_by_hand(tmp_path):
    records = [
        {"context_options": ["xx a", "xx b"], "continuation": "c", "gold": 0},
        {"context_options": ["xx a", "xx b"], "continuation": "c d", "gold": 1},
    ]
    path = write_jsonl(tmp_path, "wsc273.jsonl", records)
    samples = []
    result = run(BigramLM(chars({"a": " ", " ": "c"})), "wsc273", path, samples=samples)
    # " c" after "a": a>' ' and ' '>c are successors; after "b": b>' ' is not. Option 0 wins both times.
    assert samples[0]["logprobs"] == pytest.approx([2 * LOG_SUCCESSOR, LOG_OTHER + LOG_SUCCESSOR])
    assert result["metrics"]["acc"] == 0.5


# -- generative tasks -----------------------------------------------------------------------------

# After "A:" or " =" the greedy answer is " bc", then a newline.
ANSWER_CHAIN = chars({":": " ", "=": " ", " ": "b", "b": "c", "c": "\n"})


def test_nq_exact_match_and_confidence_by_hand(tmp_path):
    path = write_jsonl(
        tmp_path, "NQ-open.dev.jsonl", [{"question": "q1", "answer": ["BC"]}, {"question": "q2", "answer": ["de", "f"]}]
    )
    shots = write_jsonl(tmp_path, "NQ-open.train.jsonl", [{"question": "s", "answer": ["t"]}])
    samples = []
    result = run(BigramLM(ANSWER_CHAIN), "nq_open", {"nq_open": path, "nq_open:examples": shots}, samples=samples)
    assert [s["prediction"] for s in samples] == ["bc", "bc"]
    # " ", "b", "c"; the newline is not the answer. Logits are fp32, so 3/4 holds to about 1e-6 a token.
    assert samples[0]["probability"] == pytest.approx(0.75**3, rel=1e-5)
    assert result["metrics"] == {"em": 0.5, "em_top1pct": 1.0}  # equal confidence: the first answer ranks first
    assert "1 pairs drawn" in result["protocol"]


def test_nq_without_an_examples_split_holds_some_questions_out(tmp_path):
    records = [{"question": f"q{i}", "answer": ["bc"]} for i in range(5)]
    path = write_jsonl(tmp_path, "NQ-open.dev.jsonl", records)
    result = run(BigramLM(ANSWER_CHAIN), "nq_open", path, shots=2)
    assert result["n"] == 3 and result["metrics"]["em"] == 1.0 and "not scored" in result["protocol"]


def test_coqa_f1_by_hand(tmp_path):
    story = {
        "id": "s1",
        "story": "xx.",
        "questions": [{"turn_id": 1, "input_text": "q1?"}, {"turn_id": 2, "input_text": "q2?"}],
        "answers": [{"turn_id": 1, "input_text": "bc"}, {"turn_id": 2, "input_text": "bc d"}],
        "additional_answers": {},
    }
    path = write(tmp_path, "coqa-dev-v1.0.json", json.dumps({"version": "1.0", "data": [story]}))
    samples = []
    result = run(BigramLM(ANSWER_CHAIN), "coqa", path, samples=samples)
    # Prediction "bc" both turns: F1 1, then vs "bc d" P = 1, R = 1/2, F1 = 2/3.
    assert result["metrics"]["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["metrics"]["em"] == 0.5
    assert samples[1]["golds"] == ["bc d"]


def test_cnn_dailymail_rouge_by_hand(tmp_path):
    # After ":" (the hint) or "." (the article's end): " bc. bc. bc. ..." ; the first 3 sentences are "bc. bc. bc."
    model = BigramLM(chars({":": " ", ".": " ", " ": "b", "b": "c", "c": "."}), n_positions=128, strength=40.0)
    path = write_jsonl(tmp_path, "cnndm.jsonl", [{"article": "xx yy.", "highlights": "bc. xy."}])
    samples = []
    result = run(model, "cnn_dailymail", path, samples=samples)
    assert samples[0]["summary"] == "bc. bc. bc."
    # Unigrams: prediction bc bc bc vs reference bc xy: 1 match, P = 1/3, R = 1/2, F = 0.4; no bigram matches.
    assert result["metrics"]["rouge1"] == pytest.approx(0.4)
    assert result["metrics"]["rouge2"] == 0.0
    assert result["metrics"]["rouge1_no_hint"] == pytest.approx(0.4)


def test_translation_bleu_and_files(tmp_path):
    import sacrebleu

    src = write(
        tmp_path, "newstest2014-fren-src.en.sgm", '<srcset>\n<seg id="1">one &amp; two</seg>\n<seg id="2">xx</seg>\n'
    )
    write(tmp_path, "newstest2014-fren-ref.fr.sgm", '<refset>\n<seg id="1">bc</seg>\n<seg id="2">bc de</seg>\n')
    write(tmp_path, "newstest2013.en", "a\nb\n")
    write(tmp_path, "newstest2013.fr", "c\nd\n")
    samples = []
    data = {"wmt14_en_fr": src, "wmt14_en_fr:examples": tmp_path / "newstest2013.en"}
    result = run(BigramLM(ANSWER_CHAIN), "wmt14_en_fr", data, samples=samples)
    assert [s["hypothesis"] for s in samples] == ["bc", "bc"]
    assert samples[0]["source"] == "one & two"
    expected = sacrebleu.corpus_bleu(["bc", "bc"], [["bc", "bc de"]]).score
    assert result["metrics"]["bleu"] == pytest.approx(expected)
    assert "2 pairs drawn" in result["protocol"]


@pytest.mark.parametrize(
    "task, relative, words, lines",
    [("wikitext2", "wikitext-2/wiki.valid.tokens", 217_646, 3_760), ("ptb", "ptb/ptb.valid.txt", 73_760, 3_370)],
)
def test_word_counts_on_the_shared_validation_files(task, relative, words, lines):
    from conftest import shared_file

    path = shared_file(relative)
    file_lines = lm._lines(path.read_text(encoding="utf-8"))
    assert len(file_lines) == lines and lm.count_words(file_lines) == words  # the published counts
    result = run(BigramLM({}, n_positions=1024), task, path, limit=300, batch_size=16)
    assert result["counts"]["words"] == lm.count_words(file_lines[:300]) and result["counts"]["lines"] == 300
    # Detokenized text: fewer bytes than the lines as written, every byte scored once (one token per byte here).
    assert result["counts"]["tokens"] == result["counts"]["bytes"] < sum(len(line) + 1 for line in file_lines[:300])


def test_translation_reads_plain_parallel_text_and_checks_alignment(tmp_path):
    import sacrebleu

    from gpt2kit.errors import GPT2KitError

    write(tmp_path, "test.fr", "xx\nyy\nzz\n")
    write(tmp_path, "test.en", "bc\nbc\nbc\n")
    samples = []
    # fr->en from a source file whose partner is found by name; no dev file: 1 pair is held out as the example.
    result = run(BigramLM(ANSWER_CHAIN), "wmt14_fr_en", tmp_path / "test.fr", samples=samples, shots=1)
    assert result["n"] == 2 and [s["hypothesis"] for s in samples] == ["bc", "bc"]
    assert result["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["bc", "bc"], [["bc", "bc"]]).score)
    write(tmp_path, "short.en", "bc\n")
    with pytest.raises(GPT2KitError, match="has 3 sentences but .*short.en has 1"):
        run(BigramLM(ANSWER_CHAIN), "wmt14_fr_en", f"{tmp_path / 'test.fr'},{tmp_path / 'short.en'}")
    with pytest.raises(GPT2KitError, match="cannot tell which file holds the en side"):
        run(BigramLM(ANSWER_CHAIN), "wmt14_fr_en", write(tmp_path, "source.txt", "xx\n"))


def test_summarization_needs_room_for_an_article(tmp_path):
    from gpt2kit.errors import GPT2KitError

    path = write_jsonl(tmp_path, "cnndm.jsonl", [{"article": "xx.", "highlights": "bc."}])
    with pytest.raises(GPT2KitError, match="leaves no room for an article"):
        run(BigramLM(ANSWER_CHAIN, n_positions=100), "cnn_dailymail", path)


def test_stopword_filter_with_left_padding_matches_one_at_a_time(tmp_path, gpt2_tokenizer):
    import torch

    from gpt2kit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=gpt2_tokenizer.vocab_size, n_positions=64, n_layer=1, n_head=2, n_embd=16)).eval()
    texts = ["the cat sat on the mat", "it was late", "she told him a long story about the old house by the sea"]
    path = write_jsonl(tmp_path, "lambada_test.jsonl", [{"text": t} for t in texts])
    predictions = []
    for batch_size in (1, 3):
        samples = []
        run(
            model,
            "lambada",
            path,
            tokenizer=gpt2_tokenizer,
            samples=samples,
            lambada_stopword_filter=True,
            batch_size=batch_size,
        )
        predictions.append([s["prediction_stopword_filter"] for s in samples])
    assert predictions[0] == predictions[1] and all(p.isalpha() for p in predictions[0])
