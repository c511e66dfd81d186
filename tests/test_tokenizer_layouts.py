"""Byte-level BPEs as the HF ecosystem writes them: ids that are not merge ranks, tokenizer.json alone, added tokens.

Each layout is made by `tokenizers` or transformers themselves, and our ids must equal
`GPT2TokenizerFast`'s on every line of WikiText-2's validation text.
"""

import json
import shutil

import pytest

from gpt2kit.tokenizer import ENDOFTEXT, Tokenizer, TokenizerError, load_tokenizer
from tests.conftest import shared_file

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def wikitext_lines():
    return shared_file("wikitext-2/wiki.valid.raw").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def gutenberg_sample(tmp_path_factory):
    books = sorted(shared_file("train/gutenberg").glob("*.txt"))[:2]
    path = tmp_path_factory.mktemp("corpus") / "sample.txt"
    path.write_text("".join(book.read_text(encoding="utf-8")[:300_000] for book in books), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hf_trained_dir(tmp_path_factory, gutenberg_sample):
    """`ByteLevelBPETokenizer` as users train it: <|endoftext|> at id 0, the bytes at 1..256, merges after."""
    trained = tokenizers.ByteLevelBPETokenizer()
    trained.train([str(gutenberg_sample)], vocab_size=3000, special_tokens=[ENDOFTEXT], show_progress=False)
    directory = tmp_path_factory.mktemp("hf_trained")
    trained.save_model(str(directory))  # vocab.json + merges.txt
    trained.save(str(directory / "tokenizer.json"))
    return directory


def hf_ids(directory, lines):
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(directory))
    return [hf.encode(line) for line in lines]


def test_hf_trained_layout_matches_transformers_on_wikitext(hf_trained_dir, wikitext_lines, tmp_path):
    vocab = json.loads((hf_trained_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab[ENDOFTEXT] == 0 and vocab["!"] == 1  # the layout the issue is about
    pair_only = tmp_path / "pair"
    pair_only.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_trained_dir / name, pair_only / name)
    ours = load_tokenizer(pair_only)
    assert ours.eot_token == 0 and ours.vocab_size == 3000 and ours.missing_ids == ()
    expected = hf_ids(hf_trained_dir, wikitext_lines)
    assert ours.encode_batch(wikitext_lines) == expected
    assert [ours.encode(line) for line in wikitext_lines[:200]] == expected[:200]
    text = "\n".join(wikitext_lines)
    assert ours.encode_to_numpy(text).tolist() == ours.encode(text)
    assert ours.decode(ours.encode(text)) == text


def test_tokenizer_json_alone_is_enough(hf_trained_dir, wikitext_lines, tmp_path):
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(hf_trained_dir / "tokenizer.json", only / "tokenizer.json")
    ours = load_tokenizer(only)
    assert ours.encode_batch(wikitext_lines) == hf_ids(hf_trained_dir, wikitext_lines)
    assert ours.sha256 == load_tokenizer(hf_trained_dir).sha256


def test_run_clm_recipe_train_new_from_iterator(gpt2_tokenizer, gutenberg_sample, wikitext_lines, tmp_path):
    """transformers' `train_new_from_iterator` on GPT-2's tokenizer, as the run_clm recipe retrains it."""
    gpt2_tokenizer.save(tmp_path / "gpt2")
    base = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path / "gpt2"))
    lines = gutenberg_sample.read_text(encoding="utf-8").splitlines()
    retrained = base.train_new_from_iterator(iter(lines), vocab_size=1500)
    retrained.save_pretrained(str(tmp_path / "retrained"))
    ours = load_tokenizer(tmp_path / "retrained")
    assert ours.encode_batch(wikitext_lines) == [retrained.encode(line) for line in wikitext_lines]
    assert ours.eot_token == retrained.convert_tokens_to_ids(ENDOFTEXT)


def test_special_and_added_tokens_anywhere_with_gaps(hf_trained_dir, wikitext_lines, tmp_path):
    """Special tokens mid-vocabulary, an added token split out of text, and ids with gaps."""
    hf = tokenizers.Tokenizer.from_file(str(hf_trained_dir / "tokenizer.json"))
    hf.add_special_tokens([tokenizers.AddedToken("<|pad|>", special=True)])
    hf.add_tokens([tokenizers.AddedToken("[[link]]", special=False)])
    config = json.loads(hf.to_str())
    # Move every id from 100 on up by 7 (a gap of 7 ids), as a pruned or hand-edited vocabulary has.
    config["model"]["vocab"] = {text: i + 7 if i >= 100 else i for text, i in config["model"]["vocab"].items()}
    for entry in config["added_tokens"]:
        entry["id"] += 7 if entry["id"] >= 100 else 0
        config["model"]["vocab"][entry["content"]] = entry["id"]  # else tokenizers renumbers it from len(vocab)
    directory = tmp_path / "gapped"
    directory.mkdir()
    (directory / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    ours = load_tokenizer(directory)
    assert ours.missing_ids == tuple(range(100, 107))
    assert ours.special_tokens["<|pad|>"] == reference.convert_tokens_to_ids("<|pad|>")
    lines = wikitext_lines + ["see [[link]] here [[link]]", "a <|pad|> b"]
    assert ours.encode_batch(lines) == [reference.encode(line) for line in lines[:-1]] + [ours.encode(lines[-1])]
    assert "[[link]]" in ours.decode(ours.encode("x [[link]]"))
    assert ours.encode("<|pad|>", allowed_special="all") == [ours.special_tokens["<|pad|>"]]
    with pytest.raises(TokenizerError, match="token id 103 is not in the vocabulary"):
        ours.decode([103])
    from gpt2kit.errors import GPT2KitError
    from gpt2kit.sequences import encode_prompt

    with pytest.raises(GPT2KitError, match="token id 103 is not in the vocabulary"):
        encode_prompt(ours, [5, 103], context=64)  # a prompt of ids from a client: refused, not a 500 later

    # save() writes files transformers reads back to the same ids.
    ours.save(tmp_path / "saved")
    reread = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path / "saved"))
    assert [reread.encode(line) for line in lines[:-1]] == ours.encode_batch(lines[:-1])
    assert load_tokenizer(tmp_path / "saved").sha256 == ours.sha256


def test_saved_remapped_layout_reads_back_in_transformers_from_the_pair_too(hf_trained_dir, wikitext_lines, tmp_path):
    ours = load_tokenizer(hf_trained_dir)
    ours.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # the slow path: vocab.json + merges.txt + tokenizer_config.json
    reread = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    assert [reread.encode(line) for line in wikitext_lines[:500]] == ours.encode_batch(wikitext_lines[:500])
    assert reread.convert_tokens_to_ids(ENDOFTEXT) == 0


def test_official_layout_keeps_the_fast_path(gpt2_tokenizer, tmp_path):
    assert gpt2_tokenizer._rank_to_id is None  # ids are tiktoken's ranks: nothing is remapped
    gpt2_tokenizer.save(tmp_path)
    reloaded = Tokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    assert reloaded._rank_to_id is None and reloaded.sha256 == gpt2_tokenizer.sha256


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["model"].update(type="WordPiece"), "model type 'WordPiece' is not supported"),
        (lambda c: c.update(normalizer={"type": "NFKC"}), "normalizer 'NFKC' is not supported"),
        (lambda c: c.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer 'Whitespace' is not supported"),
        (lambda c: c["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space=true is not supported"),
        (lambda c: c["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
        (lambda c: c["model"]["merges"].insert(0, ["zzq", "x"]), r"model.merges\[0\]: merge 'zzq' 'x'"),
        (lambda c: c["model"]["vocab"].pop("Ġ"), "uses 'Ġ', which is not in the vocabulary"),
    ],
)
def test_unsupported_tokenizer_json_gets_one_line(hf_trained_dir, tmp_path, change, message):
    config = json.loads((hf_trained_dir / "tokenizer.json").read_text(encoding="utf-8"))
    change(config)
    (tmp_path / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as caught:
        load_tokenizer(tmp_path)
    assert "\n" not in str(caught.value) and str(tmp_path / "tokenizer.json") in str(caught.value)
