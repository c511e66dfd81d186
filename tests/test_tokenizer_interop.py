"""Tokenizer files as transformers writes them (issue 26, items 9 and 10).

A toy byte-level vocabulary that lacks most bytes, as transformers' own GPT-2 tokenizer test builds one, and the
tokenizer.json that transformers' TikTokenConverter makes of a tiktoken file: gpt2kit loads both, and its ids equal
transformers' on every line of WikiText-2's validation text.
"""

import json

import pytest

from gpt2kit.tokenizer import ENDOFTEXT, GPT2_PATTERN, GPT2_PATTERNS, TokenizerError, load_tokenizer
from tests.conftest import shared_file

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
convert_slow_tokenizer = pytest.importorskip("transformers.convert_slow_tokenizer")

# A toy vocabulary of 7 bytes and the tokens 8 merges make of them; "<unk>" stands for every other byte.
TOY_TOKENS = ["t", "h", "e", "a", "n", "d", "Ġ", "th", "Ġth", "the", "Ġthe", "an", "Ġan", "and", "Ġand", "<unk>"]
TOY_MERGES = ["t h", "Ġ th", "th e", "Ġth e", "a n", "Ġ an", "an d", "Ġan d"]
UNK = TOY_TOKENS.index("<unk>")


@pytest.fixture(scope="module")
def wikitext_lines():
    return shared_file("wikitext-2/wiki.valid.raw").read_text(encoding="utf-8").splitlines()


def write_toy_pair(directory, tokens=TOY_TOKENS, config=None):
    """vocab.json + merges.txt (+ tokenizer_config.json), as transformers' GPT-2 tokenizer test writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TOY_MERGES) + "\n", encoding="utf-8")
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def toy_dirs(tmp_path_factory):
    """The toy vocabulary twice: as a vocab.json + merges.txt pair, and as the tokenizer.json transformers saves of
    it with its model's unknown token set (so that transformers itself encodes missing bytes as `<unk>`)."""
    root = tmp_path_factory.mktemp("toy")
    pair = write_toy_pair(root / "pair", config={"unk_token": "<unk>"})
    hf = transformers.GPT2Tokenizer.from_pretrained(str(pair))
    hf._tokenizer.model.unk_token = "<unk>"
    hf.save_pretrained(str(root / "saved"))
    return pair, root / "saved"


def test_toy_vocabulary_matches_transformers_where_its_bytes_suffice(toy_dirs):
    pair, _ = toy_dirs
    ours = load_tokenizer(pair)
    assert len(ours.missing_bytes) == 256 - 7 and ours.unk_text == "<unk>"
    hf = transformers.GPT2Tokenizer.from_pretrained(str(pair))
    texts = ["the and then", "thee and and the", "hand than then", "  the   and ", "th e a n d", "tthhee"]
    assert ours.encode_batch(texts) == [hf.encode(text) for text in texts]
    assert ours.encode(" the and") == [10, 14]


def test_missing_bytes_get_the_unknown_token_as_transformers_gives_them(toy_dirs, wikitext_lines, tmp_path):
    pair, saved = toy_dirs
    assert json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))["model"]["unk_token"] == "<unk>"
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"))
    expected = hf(wikitext_lines, add_special_tokens=False)["input_ids"]
    assert sum(ids.count(UNK) for ids in expected) > 100_000  # most of the text is bytes the vocabulary lacks
    for directory in (pair, saved):
        ours = load_tokenizer(directory)
        assert ours.encode_batch(wikitext_lines) == expected
        assert [ours.encode(line) for line in wikitext_lines[:300]] == expected[:300]
        assert ours.encode_to_numpy("\n".join(wikitext_lines[:300])).tolist() == ours.encode(
            "\n".join(wikitext_lines[:300])
        )
    # What gpt2kit saves encodes the same in transformers.
    load_tokenizer(pair).save(tmp_path)
    reread = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert reread(wikitext_lines, add_special_tokens=False)["input_ids"] == expected


def test_transformers_saved_toy_takes_its_unknown_token_from_tokenizer_config(toy_dirs, tmp_path):
    """transformers saves GPT2Tokenizer's unknown token in tokenizer_config.json only, not in tokenizer.json's model."""
    pair, _ = toy_dirs
    transformers.GPT2Tokenizer.from_pretrained(str(pair)).save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["model"]["unk_token"] is None
    assert load_tokenizer(tmp_path).encode(" cat é") == [6, UNK, 3, 0, 6, UNK, UNK]


def test_missing_byte_without_an_unknown_token_is_one_line_naming_it(tmp_path):
    ours = load_tokenizer(write_toy_pair(tmp_path, tokens=TOY_TOKENS[:-1]))
    assert ours.encode(" the and") == [10, 14]  # text within the vocabulary encodes
    for encode in (ours.encode, lambda text: ours.encode_batch([text]), ours.encode_to_numpy):
        with pytest.raises(TokenizerError, match=r"byte 0x63 \('c' in vocab.json\).* no unknown token") as caught:
            encode("the cat")
        assert "\n" not in str(caught.value)


def test_a_merge_using_a_byte_the_vocabulary_lacks_is_refused(tmp_path):
    write_toy_pair(tmp_path, tokens=[t for t in TOY_TOKENS if t != "d"])
    with pytest.raises(TokenizerError, match=r"merges.txt:8: merge 'an' 'd' uses 'd', which is not in the vocabulary"):
        load_tokenizer(tmp_path)


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    """gpt2.tiktoken made into a tokenizer.json by transformers' TikTokenConverter, splitting on GPT-2's regex."""
    vocab = shared_file("gpt2-vocab/gpt2.tiktoken")
    converter = convert_slow_tokenizer.TikTokenConverter(
        vocab_file=str(vocab), pattern=GPT2_PATTERN, extra_special_tokens=[ENDOFTEXT]
    )
    directory = tmp_path_factory.mktemp("converted")
    converter.converted().save(str(directory / "tokenizer.json"))
    return directory


def converted_config(converted_dir):
    return json.loads((converted_dir / "tokenizer.json").read_text(encoding="utf-8"))


def test_tiktoken_converter_output_matches_transformers_on_wikitext(converted_dir, gpt2_tokenizer, wikitext_lines):
    config = converted_config(converted_dir)
    assert [step["type"] for step in config["pre_tokenizer"]["pretokenizers"]] == ["Split", "ByteLevel"]
    assert config["model"]["merges"][6] == ["Ġ", "the"]  # uses "the", which a later merge makes
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(converted_dir / "tokenizer.json"))
    expected = hf(wikitext_lines, add_special_tokens=False)["input_ids"]
    ours = load_tokenizer(converted_dir)
    assert ours.encode_batch(wikitext_lines) == expected
    assert [ours.encode(line) for line in wikitext_lines[:300]] == expected[:300]
    assert ours.sha256 == gpt2_tokenizer.sha256 and ours.eot_token == 50256  # GPT-2's own vocabulary and ids


def test_tiktoken_converter_output_saved_by_gpt2kit_reads_back_in_transformers(converted_dir, wikitext_lines, tmp_path):
    ours = load_tokenizer(converted_dir)
    ours.save(tmp_path)
    reread = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert reread(wikitext_lines[:1000], add_special_tokens=False)["input_ids"] == ours.encode_batch(
        wikitext_lines[:1000]
    )
    assert load_tokenizer(tmp_path).sha256 == ours.sha256


@pytest.mark.parametrize("pattern", GPT2_PATTERNS)
def test_split_on_either_spelling_of_gpt2s_regex_loads(converted_dir, gpt2_tokenizer, pattern, tmp_path):
    config = converted_config(converted_dir)
    config["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": pattern}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    assert load_tokenizer(tmp_path).sha256 == gpt2_tokenizer.sha256


def split_step(config):
    return config["pre_tokenizer"]["pretokenizers"][0]


def byte_level_step(config):
    return config["pre_tokenizer"]["pretokenizers"][1]


@pytest.mark.parametrize(
    "change, message",
    [
        # TikTokenConverter's default regex (cl100k's and Llama 3's), not GPT-2's
        (
            lambda c: split_step(c).update(pattern={"Regex": convert_slow_tokenizer.TikTokenConverter().pattern}),
            r"pretokenizers\[0\]: a Split on .* is not supported \(only on GPT-2's regex, isolated\)",
        ),
        (lambda c: split_step(c).update(pattern={"String": " "}), r"a Split on \{'String': ' '\}"),
        (lambda c: split_step(c).update(behavior="Removed"), "behavior 'Removed'"),
        (lambda c: split_step(c).update(invert=True), "invert=true"),
        (lambda c: split_step(c).update(type="Whitespace"), r"pre_tokenizer 'Sequence\[Whitespace, ByteLevel\]'"),
        (lambda c: byte_level_step(c).update(use_regex=True), r"'Sequence\[Split, ByteLevel\]' is not supported"),
        (lambda c: byte_level_step(c).update(add_prefix_space=True), r"pretokenizers\[1\].add_prefix_space=true"),
        (lambda c: c.update(pre_tokenizer=byte_level_step(c)), "pre_tokenizer 'ByteLevel' is not supported"),
        (lambda c: c.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer 'Whitespace' is not supported"),
        (lambda c: c["pre_tokenizer"]["pretokenizers"].append({"type": "Digits"}), "Sequence"),
    ],
)
def test_pre_tokenizers_that_differ_from_gpt2s_are_refused_in_one_line(converted_dir, tmp_path, change, message):
    config = converted_config(converted_dir)
    change(config)
    (tmp_path / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as caught:
        load_tokenizer(tmp_path)
    assert "\n" not in str(caught.value) and str(tmp_path / "tokenizer.json") in str(caught.value)


def test_a_merge_using_a_token_no_merge_makes_is_refused(converted_dir, tmp_path):
    config = converted_config(converted_dir)
    config["model"]["merges"] = [m for m in config["model"]["merges"] if "".join(m) != "the"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"model.merges\[6\]: merge 'Ġ' 'the' uses 'the', which no merge makes"):
        load_tokenizer(tmp_path)
