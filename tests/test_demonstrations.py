"""`gpt2kit demonstrations`: planted demonstrations are found with their exact counts, near-misses are not."""

import json

import pytest
import zstandard

from gpt2kit.cli import main
from gpt2kit.data.demonstrations import find_demonstrations, find_in_text
from gpt2kit.errors import GPT2KitError

# (kind, text, demonstrations in it)
PLANTED = [
    (
        "translation",
        "Phrasebook\n\ngood morning = bonjour\nthank you very much = merci beaucoup\nmy friend = mon ami\n",
        3,
    ),
    ("translation", 'I am not the cleverest man, but like they say in French: "Je ne suis pas un imbecile".', 1),
    ("translation", 'The word "chat" translates as "cat", and "chien" means dog in French.', 2),
    ("qa", "Forum\n\nQ: Who wrote Emma?\nA: Jane Austen\n\nQ: When?\nA: 1815\n", 2),
    ("qa", "Question: What is the capital of France? Answer: Paris.", 1),
    ("summarization", "A long article about the harvest and the weather.\n\nTL;DR: a good year for apples.", 1),
    ("summarization", "Many things happened. In summary, the town grew.\nSummary: it grew.\n", 2),
    ("cloze", "Fill in the blank: the cat sat on the ____ all day.", 2),
    ("arithmetic", "Homework\n\n1. 12 + 7 = 19\n2. 9 - 4 = 5\n3. 6 * 7 = 42\n", 3),
]
NEAR_MISSES = [
    "def f(x):\n    y = compute(x)\n    z = y + 1\n    return z\n",  # `=` in code
    "config:\n  user_name = admin_user\n  max_size = 10\n",  # identifiers, not phrases
    "single line: hello = world\n",  # one pair is not a phrasebook
    "The STL;DRIVER module and the word FOOTL;DRX.",  # TL;DR inside a word
    "The score was 3 - 1 = 1 nil? No: 2020-01-05 = a date, and 1 + 1 = 3 is wrong.",
    "Qatar: a country.\nAnother line.",  # a Q that is not Q:
    "He said it in a whisper; the French army left.",  # a language name without a quotation
]


def test_each_planted_kind_is_found_with_its_count():
    for kind, text, expected in PLANTED:
        found = find_in_text(text)
        assert kind in found, (kind, text)
        assert len(found[kind][0]) == expected, (kind, text, found[kind])


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_demonstrations(text):
    assert find_in_text(text) == {}, text


def test_a_corpus_scan_counts_documents_and_demonstrations(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    records = [{"text": text, "url": f"https://site{i % 2}.example/{i}"} for i, (_, text, _) in enumerate(PLANTED)]
    records += [{"text": text, "domain": "code.example"} for text in NEAR_MISSES]
    with open(corpus / "shard.jsonl.zst", "wb") as handle:
        handle.write(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    (corpus / "book.txt").write_text("Chapter 1\n\n" + PLANTED[3][1] * 2 + "\nNothing else.\n")
    result, kinds = find_demonstrations([corpus], tmp_path / "out")
    assert result.documents == len(records) + 1
    expected_docs = {kind: sum(k == kind for k, _, _ in PLANTED) for kind in kinds}
    expected_docs["qa"] += 1  # the book
    expected_demos = {kind: sum(n for k, _, n in PLANTED if k == kind) for kind in kinds}
    expected_demos["qa"] += 4
    summary = json.loads((tmp_path / "out" / "demonstrations.json").read_text())
    for kind in kinds:
        assert summary["kinds"][kind]["documents"] == expected_docs[kind], kind
        assert summary["kinds"][kind]["occurrences"] == expected_demos[kind], kind
    assert summary["kinds"]["translation"]["target_languages"] == {"fr": 1}  # the phrasebook's targets
    domains = {d["domain"]: d["documents"] for d in summary["kinds"]["qa"]["top_domains"]}
    assert domains == {"site1.example": 1, "site0.example": 1}  # records 3 and 4 (the book has no domain)
    per_million = summary["kinds"]["arithmetic"]["documents_per_million_documents"]
    assert per_million == pytest.approx(1e6 / result.documents)
    examples = (tmp_path / "out" / "examples.md").read_text()
    assert "## summarization: 2 documents, 3 demonstrations" in examples and "TL;DR: a good year" in examples
    # two workers: the same counts and the same examples
    again, _ = find_demonstrations([corpus], tmp_path / "out2", workers=2)
    assert again.summary(kinds)["kinds"] == result.summary(kinds)["kinds"]
    assert (tmp_path / "out2" / "examples.md").read_text() == examples


def test_a_pattern_file_adds_a_kind(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Recipe: mix flour. Recipe: bake it.\nNo recipe here.\n")
    patterns = tmp_path / "patterns.yaml"
    patterns.write_text("- name: recipe\n  regexes: ['\\bRecipe:']\n  window: 10\n")
    result, kinds = find_demonstrations([corpus], None, patterns=patterns)
    assert kinds[-1] == "recipe" and result.kinds["recipe"].occurrences == 2
    for bad, message in (
        ("- name: qa\n  regexes: ['x']\n", "new word-like name"),
        ("- name: r\n  regexes: ['(']\n", "bad regex"),
        ("- name: r\n  regex: ['x']\n", "expected the keys"),
        ("name: r\n", "expected a list"),
    ):
        patterns.write_text(bad)
        with pytest.raises(GPT2KitError, match=message):
            find_demonstrations([corpus], None, patterns=patterns)


def test_the_synthetic_web_gives_back_what_it_planted(tmp_path, capsys):
    from gpt2kit.study.synth import SynthConfig, synthesize

    web = tmp_path / "web"
    synthesize(web, SynthConfig(size_mb=0.5, seed=3), progress=False)
    planted = json.loads((web / "manifest.json").read_text())["planted_demonstrations"]
    assert set(planted) == {"translation", "qa", "summarization", "arithmetic"} and min(planted.values()) > 10
    assert main(["demonstrations", "--corpus", str(web / "train"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "MB/s" in printed and "summarization" in printed
    found = json.loads((tmp_path / "out" / "demonstrations.json").read_text())["kinds"]
    for kind, count in planted.items():
        assert abs(found[kind]["documents"] - count) <= 0.1 * count, (kind, found[kind]["documents"], count)
    assert found["cloze"]["documents"] == 0  # nothing of the kind was planted


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["demonstrations", "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    assert main(["demonstrations", "--corpus", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "no string field 'text'" in capsys.readouterr().err
