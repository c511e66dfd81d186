import gzip
import json
import random
import string

import numpy as np
import pytest
import zstandard

from gpt2kit.cli import main
from gpt2kit.data import bloom
from gpt2kit.data import corpus as corpus_module
from gpt2kit.data.bloom import (
    NGRAM,
    BloomFilter,
    bloom_params,
    build_filter,
    normalise,
    normalise_words,
)
from gpt2kit.data.overlap import OverlapRow, check_overlap, format_table, load_examples
from gpt2kit.errors import GPT2KitError


def random_words(rng: random.Random, count: int, vocab: int = 5000) -> list[str]:
    return [f"w{rng.randrange(vocab)}" for _ in range(count)]


def random_text(rng: random.Random, words: int) -> str:
    tokens = random_words(rng, words)
    lines, line = [], []
    for token in tokens:
        line.append(token.capitalize() if rng.random() < 0.1 else token)
        if rng.random() < 0.08:
            lines.append(" ".join(line) + rng.choice([".", ",", "!", " --"]))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def exact_ngrams(texts) -> set[tuple[str, ...]]:
    grams = set()
    for text in texts:
        words = normalise_words(text)
        grams.update(tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1))
    return grams


@pytest.fixture
def corpus(tmp_path):
    """A text file, a zstd JSON-lines shard and a gzip one, in a directory."""
    rng = random.Random(0)
    root = tmp_path / "corpus"
    root.mkdir()
    texts = {"book.txt": random_text(rng, 6000)}
    (root / "book.txt").write_text(texts["book.txt"])
    docs = [random_text(rng, rng.randrange(3, 400)) for _ in range(40)]
    payload = "".join(json.dumps({"text": d, "url": f"http://x/{i}"}) + "\n" for i, d in enumerate(docs))
    (root / "shard-0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload.encode()))
    more = [random_text(rng, 200) for _ in range(10)]
    with gzip.open(root / "sub.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps({"text": d}) + "\n" for d in more)
    return root, [texts["book.txt"], *docs, *more]


def test_normalisation_is_the_papers():
    assert normalise("Hello,  World!\nIt's 2019 -- GPT_2 café") == "hello world it s 2019 gpt 2 café"
    assert normalise_words("  ") == []


def test_params_meet_the_bound():
    for n in (1, 10, 12345, 5_000_000, 200_000_000):
        params = bloom_params(n, 1e-8)
        assert params.fpr_bound <= 1e-8
        assert params.m == params.stripes * params.stripe_bits and params.stripe_bits % 64 == 0
    assert bloom_params(1000, 1e-3).k < bloom_params(1000, 1e-8).k
    with pytest.raises(GPT2KitError, match="false-positive"):
        bloom_params(10, 1.5)


def test_equals_exact_set_count(tmp_path, corpus):
    root, texts = corpus
    result = build_filter([root], tmp_path / "f.bloom", workers=1)
    truth = exact_ngrams([texts[0]]) | exact_ngrams(texts[1:])
    total = sum(max(0, len(normalise_words(t)) - NGRAM + 1) for t in texts)
    assert result.ngrams == total and result.documents == len(texts) and result.files == 3

    rng = random.Random(5)
    book_words = normalise_words(texts[0])
    tests = []
    for _ in range(60):  # half copied from the corpus (some straddling line ends), half new text
        if rng.random() < 0.5:
            start = rng.randrange(len(book_words) - 30)
            tests.append(" ".join(book_words[start : start + rng.randrange(8, 30)]) + " " + random_text(rng, 12))
        else:
            tests.append(random_text(rng, rng.randrange(0, 40)))
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in tests))
    flags = tmp_path / "flags.jsonl"
    (row,) = check_overlap(result.path, [test_file], flags_out=flags)

    expected_found = expected_total = expected_docs = 0
    per_example = []
    for text in tests:
        words = normalise_words(text)
        grams = [tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
        hits = sum(g in truth for g in grams)
        per_example.append(hits)
        expected_found += hits
        expected_total += len(grams)
        expected_docs += hits > 0
    assert row.ngrams == expected_total and row.ngrams_found == expected_found
    assert row.examples_with_overlap == expected_docs and 0 < expected_docs < len(tests)
    written = [json.loads(line) for line in flags.read_text().splitlines()]
    assert [w["found"] for w in written] == per_example
    assert [w["index"] for w in written] == list(range(len(tests)))
    assert all(w["overlap"] == (w["found"] > 0) for w in written)


def test_planted_overlap_is_found(tmp_path):
    rng = random.Random(1)
    passage = "The quick brown fox of Ashdown jumped over seventeen lazy dogs while the moon rose slowly."
    book = random_text(rng, 3000) + passage + "\n" + random_text(rng, 3000)
    (tmp_path / "book.txt").write_text(book)
    build_filter([tmp_path / "book.txt"], tmp_path / "f.bloom")
    test = tmp_path / "lambada.txt"
    test.write_text(f"unrelated words go here and do not match anything at all today\n{passage.upper()}\n")
    (clean, planted) = check_overlap(tmp_path / "f.bloom", [test], unit="line")[0].flags
    assert planted["found"] == planted["ngrams"] == len(normalise_words(passage)) - NGRAM + 1
    assert clean["found"] == 0


def test_measured_false_positive_rate_is_under_the_bound(tmp_path):
    rng = random.Random(2)
    (tmp_path / "c.txt").write_text(random_text(rng, 30000))
    # A loose filter shows the measurement is calibrated; the paper's 1e-8 filter must show no false positives.
    letters = string.ascii_lowercase
    queries = np.concatenate(
        [
            bloom.text_fingerprints(" ".join("".join(rng.choices(letters, k=6)) for _ in range(NGRAM)))
            for _ in range(20000)
        ]
    )
    queries = np.concatenate([queries, np.random.default_rng(0).integers(0, 2**63, 400_000, dtype=np.uint64)])
    loose = build_filter([tmp_path / "c.txt"], tmp_path / "loose.bloom", fpr=1e-2)
    rate = BloomFilter.open(loose.path).contains(queries).mean()
    assert 0.002 < rate <= 1e-2 * 1.15
    tight = build_filter([tmp_path / "c.txt"], tmp_path / "tight.bloom", fpr=1e-8)
    assert BloomFilter.open(tight.path).contains(queries).sum() == 0
    assert tight.params.fpr_bound <= 1e-8


def test_blocks_carry_ngrams_across_boundaries(tmp_path, monkeypatch):
    rng = random.Random(3)
    text = random_text(rng, 4000)
    (tmp_path / "c.txt").write_text(text)
    monkeypatch.setattr(corpus_module, "TEXT_BLOCK_BYTES", 100)
    result = build_filter([tmp_path / "c.txt"], tmp_path / "f.bloom")
    assert result.ngrams == len(normalise_words(text)) - NGRAM + 1
    test = tmp_path / "t.txt"
    test.write_text(text)
    (row,) = check_overlap(result.path, [test], unit="file")
    assert row.ngrams_found == row.ngrams == result.ngrams


def test_two_processes_build_the_same_filter(tmp_path, corpus):
    root, _ = corpus
    # Sized for 9M 8-grams so the filter has many stripes, each guarded by its own lock.
    one = build_filter([root], tmp_path / "one.bloom", workers=1, expected_ngrams=9_000_000)
    two = build_filter([root], tmp_path / "two.bloom", workers=2, expected_ngrams=9_000_000)
    assert one.params.stripes > 1 and two.workers == 2
    assert (tmp_path / "one.bloom").read_bytes()[4096:] == (tmp_path / "two.bloom").read_bytes()[4096:]
    header = BloomFilter.open(two.path).header
    assert header["version"] == 1 and header["n"] == 9_000_000 and header["items_inserted"] == one.ngrams


def test_load_examples_units(tmp_path):
    wiki = tmp_path / "wiki.valid.raw"
    wiki.write_text(" \n = A = \n \n a one two \n\n = = Sub = = \n a three \n = B = \n b four \n")
    assert len(load_examples(wiki)) == 2
    assert len(load_examples(wiki, unit="line")) == 6
    nq = tmp_path / "nq.jsonl"
    nq.write_text('{"question": "who sings", "answer": ["x"]}\n{"question": "when was", "answer": ["y"]}\n')
    assert load_examples(nq) == ["who sings", "when was"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": 1}\n')
    with pytest.raises(GPT2KitError, match="name the field to read"):
        load_examples(bad)


def test_bad_inputs_get_one_clear_line(tmp_path):
    with pytest.raises(GPT2KitError, match="no such file"):
        build_filter([tmp_path / "missing.txt"], tmp_path / "f.bloom")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GPT2KitError, match="no text"):
        build_filter([tmp_path / "empty"], tmp_path / "f.bloom")
    (tmp_path / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(GPT2KitError, match=r"bad.txt:2: not UTF-8"):
        build_filter([tmp_path / "bad.txt"], tmp_path / "f.bloom")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(GPT2KitError, match=r"bad.jsonl:2: not valid JSON"):
        build_filter([tmp_path / "bad.jsonl"], tmp_path / "f.bloom")
    (tmp_path / "short.txt").write_text("only seven words in this whole file\n")
    with pytest.raises(GPT2KitError, match="no 8-grams"):
        build_filter([tmp_path / "short.txt"], tmp_path / "f.bloom")
    (tmp_path / "good.txt").write_text("one two three four five six seven eight nine\n")
    with pytest.raises(GPT2KitError, match="sized for 1"):
        build_filter([tmp_path / "good.txt"], tmp_path / "f.bloom", expected_ngrams=1)
    assert not (tmp_path / "f.bloom").exists()
    result = build_filter([tmp_path / "good.txt"], tmp_path / "f.bloom")
    data = result.path.read_bytes()
    (tmp_path / "cut.bloom").write_bytes(data[:-1])
    with pytest.raises(GPT2KitError, match="truncated"):
        BloomFilter.open(tmp_path / "cut.bloom")
    (tmp_path / "junk.bloom").write_bytes(b"not a filter at all")
    with pytest.raises(GPT2KitError, match="bad magic"):
        BloomFilter.open(tmp_path / "junk.bloom")


def test_cli_build_and_check(tmp_path, corpus, capsys):
    root, texts = corpus
    test = tmp_path / "t.jsonl"
    test.write_text(
        json.dumps({"article": texts[3]})
        + "\n"
        + json.dumps({"article": "nothing here is in common with the corpus at all, not one"})
        + "\n"
    )
    assert main(["overlap", "build", "--corpus", str(root), "--out", str(tmp_path / "f.bloom"), "--workers", "2"]) == 0
    assert "8-grams/s with 2 processes" in capsys.readouterr().out
    code = main(
        ["overlap", "check", "--filter", str(tmp_path / "f.bloom"), "--test", str(test), "--flags", str(tmp_path / "x")]
    )
    out = capsys.readouterr().out
    assert code == 0 and "t.jsonl" in out and "98.15%" in out and "50.00%" in out
    assert main(["overlap", "check", "--filter", str(tmp_path / "nope"), "--test", str(test)]) == 2
    assert "no such filter file" in capsys.readouterr().err

    # a line of bad UTF-8 is repaired by default, as prepare does, and the output says so
    bad = tmp_path / "bad.txt"
    bad.write_bytes(
        (" ".join(texts[3].split()) + "\n").encode() + b"caf\xe9 au lait and eight more words to make 8-grams here\n"
    )
    check = ["overlap", "check", "--filter", str(tmp_path / "f.bloom"), "--test", str(bad), "--unit", "line"]
    assert main(check) == 0
    out = capsys.readouterr().out
    assert "bad.txt: bad UTF-8: 1 line repaired" in out and "bad.txt          2  " in out  # both lines are examples
    assert main([*check, "--on-bad-utf8", "skip"]) == 0
    out = capsys.readouterr().out
    assert "bad.txt: bad UTF-8: 1 line skipped" in out and "bad.txt          1  " in out
    assert main([*check, "--on-bad-utf8", "error"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.txt:2: not UTF-8 (byte 3)" in err


def test_format_table_has_a_row_per_file():
    rows = [OverlapRow("a/ptb.valid.txt", 10, 9, 100, 25, 3)]
    table = format_table(rows)
    assert "ptb.valid.txt" in table and "25.00%" in table and "33.33%" in table


def test_memorisation_of_samples_equals_a_direct_count(tmp_path, corpus, capsys):
    """overlap check --samples: the share of sample 8-grams in the training set, and verbatim runs, as the paper's
    section 4 measures memorisation; checked against exact sets on a corpus where the overlap is known."""
    root, texts = corpus
    assert main(["overlap", "build", "--corpus", str(root), "--out", str(tmp_path / "f.bloom")]) == 0
    capsys.readouterr()
    book = texts[0].split()
    rng = random.Random(5)
    novel = lambda n: " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(7)) for _ in range(n))  # noqa: E731
    samples = [
        " ".join(book[100:140]) + " " + novel(20),  # 40 words copied: a verbatim run of 40
        novel(60),  # nothing copied
        novel(10) + " " + " ".join(book[500:512]) + " " + novel(10),  # a 12-word run: under the threshold
    ]
    separator = "=" * 40
    text = "".join(f"{separator} SAMPLE {i + 1} {separator}\n{s}\n" for i, s in enumerate(samples))
    (tmp_path / "samples.txt").write_text(text)
    from gpt2kit.data.overlap import check_samples, verbatim_words

    (row,) = check_samples(tmp_path / "f.bloom", [tmp_path / "samples.txt"], verbatim=25)
    grams = exact_ngrams(texts)
    direct_found = direct_total = 0
    runs = []
    for sample in samples:
        words = normalise_words(sample)
        flags = [tuple(words[i : i + NGRAM]) in grams for i in range(len(words) - NGRAM + 1)]
        direct_found += sum(flags)
        direct_total += len(flags)
        longest = current = 0
        for flag in flags:
            current = current + 1 if flag else 0
            longest = max(longest, current)
        runs.append(longest + NGRAM - 1 if longest else 0)
    assert runs[0] >= 38 and runs[1] == 0 and 10 <= runs[2] <= 12  # the copied spans, as words after normalising
    assert (row.examples, row.ngrams, row.ngrams_found) == (3, direct_total, direct_found)
    assert row.examples_with_overlap == 2 and row.examples_with_verbatim == 1
    assert row.longest_verbatim_words == runs[0] and row.percent_verbatim == pytest.approx(100 / 3)
    assert verbatim_words(np.array([True, True, False, True])) == NGRAM + 1
    assert verbatim_words(np.array([False, False])) == 0
    code = main(["overlap", "check", "--filter", str(tmp_path / "f.bloom"), "--samples", str(tmp_path / "samples.txt")])
    out = capsys.readouterr().out
    assert code == 0 and "% >=25 words" in out and "33.33%" in out and f"{runs[0]} words" in out
    jsonl = tmp_path / "samples.jsonl"
    jsonl.write_text("".join(json.dumps({"completion": s}) + "\n" for s in samples))
    assert check_samples(tmp_path / "f.bloom", [jsonl])[0].ngrams_found == direct_found
    assert main(["overlap", "check", "--filter", str(tmp_path / "f.bloom")]) == 2
    assert "give --test" in capsys.readouterr().err
