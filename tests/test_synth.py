import json
import re

import pytest

from gpt2kit.cli import main
from gpt2kit.cli_values import parse_mix
from gpt2kit.data.bloom import normalise_words
from gpt2kit.errors import GPT2KitError
from gpt2kit.evals.translation import read_segments
from gpt2kit.study.synth import (
    CNNDM_FILE,
    EVAL_DIR,
    LAMBADA_FILE,
    MANIFEST,
    NQ_EXAMPLES_FILE,
    NQ_FILE,
    TRAIN_DIR,
    TRANSLATION_REF,
    TRANSLATION_SRC,
    KeyGuard,
    SynthConfig,
    find_key_overlaps,
    iter_documents,
    synthesize,
)
from gpt2kit.study.world import ADJECTIVES, STATEMENT_TEMPLATES, World


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = synthesize(out, SynthConfig(size_mb=1.5, seed=3, eval_examples=60, heldout_kb=30, shard_mb=0.5))
    return out, result


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_the_requested_size_in_shards(corpus):
    out, result = corpus
    assert len(result.train_files) == 3
    sizes = sum(len(json.loads(line)["text"].encode()) for f in result.train_files for line in f.open())
    assert sizes == result.train_bytes
    assert 1.5e6 <= result.train_bytes < 1.5e6 + 5000
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["train_bytes"] == result.train_bytes
    assert sum(manifest["documents"].values()) == sum(1 for _ in iter_documents(out))
    assert all(count > 0 for count in manifest["documents"].values())


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    config = SynthConfig(size_mb=0.2, seed=7, eval_examples=20, heldout_kb=5)
    synthesize(tmp_path / "a", config)
    synthesize(tmp_path / "b", config)
    synthesize(tmp_path / "c", SynthConfig(size_mb=0.2, seed=8, eval_examples=20, heldout_kb=5))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    assert (tmp_path / "a/train/synth-00000.jsonl").read_bytes() != (
        tmp_path / "c/train/synth-00000.jsonl"
    ).read_bytes()
    assert World(7).cities != World(8).cities


def test_rerun_with_smaller_size_removes_stale_shards(tmp_path):
    synthesize(tmp_path, SynthConfig(size_mb=0.3, eval_examples=20, heldout_kb=5, shard_mb=0.1))
    synthesize(tmp_path, SynthConfig(size_mb=0.1, eval_examples=20, heldout_kb=5, shard_mb=0.1))
    assert [p.name for p in sorted((tmp_path / TRAIN_DIR).iterdir())] == ["synth-00000.jsonl"]


def test_mix_selects_document_kinds(tmp_path):
    result = synthesize(
        tmp_path, SynthConfig(size_mb=0.1, mix={"story": 1, "forum": 1}, eval_examples=20, heldout_kb=5)
    )
    assert {k for k, n in result.documents.items() if n} == {"story", "forum"}
    kinds = {json.loads(line)["kind"] for line in result.train_files[0].open()}
    assert kinds == {"story", "forum"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("story=1,tv=2", "unknown document kind 'tv'"),
        ("story", "KIND=WEIGHT"),
        ("story=x", "KIND=WEIGHT"),
        ("", "empty"),
    ],
)
def test_bad_mix_is_one_clear_error(text, message):
    with pytest.raises(GPT2KitError, match=message):
        SynthConfig(mix=parse_mix(text))


def test_bad_config_values():
    with pytest.raises(GPT2KitError, match="size_mb must be positive"):
        SynthConfig(size_mb=0)
    with pytest.raises(GPT2KitError, match="not all zero"):
        SynthConfig(mix={"story": 0})


def test_eval_sets_have_the_harness_formats(corpus):
    out, _ = corpus
    eval_dir = out / EVAL_DIR
    lambada = jsonl(eval_dir / LAMBADA_FILE)
    assert len(lambada) == 60
    for row in lambada:
        context, target = row["text"].rsplit(" ", 1)
        assert re.fullmatch(r"\w+", target), row
        # The target is only predictable from the long context: it occurs earlier, not in the final clause.
        assert target in context.rsplit(".", 1)[0], row
    for name in (NQ_FILE, NQ_EXAMPLES_FILE):
        for row in jsonl(eval_dir / name):
            assert row["question"].endswith("?") and isinstance(row["answer"], list) and row["answer"][0]
    for row in jsonl(eval_dir / CNNDM_FILE):
        assert row["article"] and row["highlights"] and "TL;DR" not in row["article"]
    sources, references = read_segments(eval_dir / TRANSLATION_SRC), read_segments(eval_dir / TRANSLATION_REF)
    assert len(sources) == len(references) == 60
    ids = re.findall(r'<seg id="(\d+)">', (eval_dir / TRANSLATION_SRC).read_text())
    assert ids == [str(i) for i in range(1, 61)]
    assert (eval_dir / "heldout.txt").stat().st_size >= 30_000


def test_eval_items_are_disjoint_from_training(corpus):
    out, _ = corpus
    overlaps = find_key_overlaps(out)
    assert set(overlaps) == {"lambada", "nq_open", "arithmetic", "cnn_dailymail", "translation"}
    assert all(count == 0 for count in overlaps.values()), overlaps
    # Held-out arithmetic pairs also never appear as homework lines.
    held = {row["question"] for row in jsonl(out / EVAL_DIR / "arithmetic.jsonl")}
    pairs = {tuple(map(int, re.findall(r"\d+", q))) for q in held}
    for text in iter_documents(out):
        for a, b in re.findall(r"^\d+\. (\d+) \+ (\d+) =", text, flags=re.M):
            assert (int(a), int(b)) not in pairs
    # Held-out perplexity documents are not training documents.
    training = set(iter_documents(out))
    heldout = (out / EVAL_DIR / "heldout.txt").read_text()
    assert not any(doc in training for doc in heldout.split("\n\n") if len(doc) > 200)


def test_overlap_check_finds_a_planted_item(tmp_path):
    synthesize(tmp_path, SynthConfig(size_mb=0.1, eval_examples=20, heldout_kb=5))
    question = jsonl(tmp_path / EVAL_DIR / NQ_FILE)[0]["question"]
    passage = jsonl(tmp_path / EVAL_DIR / LAMBADA_FILE)[3]["text"]
    shard = tmp_path / TRAIN_DIR / "synth-00000.jsonl"
    with shard.open("a") as handle:
        handle.write(json.dumps({"text": f"Forum\n\nQ: {question}\nA: no idea", "kind": "forum"}) + "\n")
        handle.write(json.dumps({"text": passage.upper() + "!", "kind": "story"}) + "\n")
    overlaps = find_key_overlaps(tmp_path)
    assert overlaps["nq_open"] == 1 and overlaps["lambada"] == 1 and overlaps["translation"] == 0


def test_key_guard():
    guard = KeyGuard([("the", "capital", "of", "norvania"), ("a", "b", "c", "d", "e")])
    assert guard.hits("What is THE capital of Norvania?") == [("the", "capital", "of", "norvania")]
    assert guard.hits("the capital of norvan") == []
    assert guard.hits("a b c d x") == [] and guard.hits("A, b: c d e.") == [("a", "b", "c", "d", "e")]
    with pytest.raises(ValueError, match="shorter than 4 words"):
        guard.add(("too", "short"))
    assert normalise_words("It's 12:30, Kelvor!") == ["it", "s", "12", "30", "kelvor"]


def test_the_web_states_what_the_eval_sets_ask(corpus):
    """Tasks are learnable from the corpus: held-out facts are stated, phrasebooks follow the lexicon."""
    out, _ = corpus
    world = World(3)
    text = "\n".join(iter_documents(out))
    for fact in world.heldout_facts:
        assert fact.question not in text
        # Stated in the form that reads like the question ("The capital of X is Y.").
        assert STATEMENT_TEMPLATES[fact.relation][0].format(s=fact.subject, a=fact.answer) in text, fact
    pairs = re.findall(r"^([a-z ]+) = ([a-z ]+)$", text, flags=re.M)
    assert len(pairs) > 500
    for english, velorian in pairs:
        assert world.translate(english.split()) == velorian
    # Velorian puts adjectives after nouns, so translation is more than word substitution.
    assert world.translate(["the", ADJECTIVES[0], "house"]).split()[1] == world.velorian["house"]
    sources = read_segments(out / EVAL_DIR / TRANSLATION_SRC)
    references = read_segments(out / EVAL_DIR / TRANSLATION_REF)
    assert [world.translate(s.split()) for s in sources] == references
    for row in jsonl(out / EVAL_DIR / "arithmetic.jsonl"):
        a, b = map(int, re.findall(r"\d+", row["question"]))
        assert row["answer"] == [str(a + b)]


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "web"), "--size-mb", "0.05", "--eval-examples", "20"]) == 0
    assert "documents" in capsys.readouterr().out
    assert (tmp_path / "web" / EVAL_DIR / LAMBADA_FILE).exists()
    assert main(["synth", "--out", str(tmp_path / "web"), "--mix", "story=1,poems=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt2kit synth: error:") and "poems" in err and "\n" not in err


def test_lambada_keys_are_not_in_the_training_8gram_filter(corpus, tmp_path):
    """The same check with `gpt2kit overlap`'s Bloom filter of every training 8-gram: a LAMBADA key is one 8-gram."""
    from gpt2kit.data.bloom import BloomFilter, build_filter

    out, result = corpus
    build_filter(result.train_files, tmp_path / "train.bloom")
    bloom = BloomFilter.open(tmp_path / "train.bloom")
    keys = [" ".join(normalise_words(row["text"])[-8:]) for row in jsonl(out / EVAL_DIR / LAMBADA_FILE)]
    assert not any(bloom.contains_text(key).any() for key in keys)
    # The filter does see 8-grams of training stories, so the check can fail.
    story = next(json.loads(line)["text"] for line in result.train_files[0].open() if '"story"' in line)
    assert bloom.contains_text(story).all()
