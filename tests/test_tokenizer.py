import base64

import pytest
import tiktoken
from helpers import run_cli_process
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2kit.errors import GPT2KitError
from gpt2kit.tokenizer import (
    ENDOFTEXT,
    GPT2_PATTERN,
    Tokenizer,
    TokenizerError,
    bytes_to_unicode,
    load_tokenizer,
    train_tokenizer,
)
from tests.conftest import shared_file


def reference_tiktoken(path) -> tiktoken.Encoding:
    ranks = {}
    for line in open(path, "rb"):
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="gpt2-reference",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )


def hf_fast_tokenizer(directory):
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2TokenizerFast.from_pretrained(str(directory))


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_known_gpt2_ids(gpt2_tokenizer):
    assert gpt2_tokenizer.vocab_size == 50257
    assert gpt2_tokenizer.eot_token == 50256
    assert gpt2_tokenizer.encode("Hello world") == [15496, 995]
    text = "The quick brown fox's  jumps\n\nover 1234 naïve émigrés — 😀!"
    expected = [464, 2068, 7586, 21831, 338, 220, 18045, 198, 198, 2502, 1105, 2682, 41492]
    assert gpt2_tokenizer.encode(text)[:13] == expected


def test_special_tokens_are_text_unless_allowed(gpt2_tokenizer):
    assert gpt2_tokenizer.encode(ENDOFTEXT, allowed_special="all") == [50256]
    assert gpt2_tokenizer.encode(ENDOFTEXT, allowed_special={ENDOFTEXT}) == [50256]
    plain = gpt2_tokenizer.encode(ENDOFTEXT)
    assert 50256 not in plain and gpt2_tokenizer.decode(plain) == ENDOFTEXT
    text = f"a{ENDOFTEXT}b naïve 😀"
    array = gpt2_tokenizer.encode_to_numpy(text)
    assert array.dtype.itemsize == 4 and array.tolist() == gpt2_tokenizer.encode(text)


def test_matches_tiktoken_and_hf_on_every_wikitext_line(gpt2_tokenizer, tmp_path):
    path = shared_file("wikitext-2/wiki.valid.raw")
    lines = path.read_text(encoding="utf-8").splitlines()
    reference = reference_tiktoken(shared_file("gpt2-vocab/gpt2.tiktoken"))
    ours = gpt2_tokenizer.encode_batch(lines)
    assert ours == [reference.encode_ordinary(line) for line in lines]
    gpt2_tokenizer.save(tmp_path)
    hf = hf_fast_tokenizer(tmp_path)
    assert ours == [hf.encode(line) for line in lines]


def test_vocab_merges_round_trip(gpt2_tokenizer, tmp_path):
    gpt2_tokenizer.save(tmp_path)
    reloaded = Tokenizer.from_vocab_merges(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert reloaded.mergeable_ranks == gpt2_tokenizer.mergeable_ranks
    assert reloaded.special_tokens == gpt2_tokenizer.special_tokens
    assert reloaded.sha256 == gpt2_tokenizer.sha256
    first_merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:4]
    assert first_merges == ["Ġ t", "Ġ a", "h e"]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_inverts_encode_for_any_unicode(gpt2_tokenizer, text):
    ids = gpt2_tokenizer.encode(text)
    assert gpt2_tokenizer.decode(ids) == text
    assert gpt2_tokenizer.decode_bytes(ids) == text.encode("utf-8")


def test_decode_of_a_split_character_is_exact_in_bytes(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("😀")
    assert len(ids) > 1
    assert gpt2_tokenizer.decode_bytes(ids[:1]) == "😀".encode()[: len(gpt2_tokenizer.token_bytes(ids[0]))]
    assert "\ufffd" in gpt2_tokenizer.decode(ids[:1])


def test_trained_on_gutenberg_round_trips_and_compresses(tmp_path):
    books = sorted(shared_file("train/gutenberg").glob("*.txt"))[:3]
    sample = tmp_path / "sample.txt"
    sample.write_text("".join(book.read_text(encoding="utf-8")[:400_000] for book in books))
    tokenizer = train_tokenizer([sample], vocab_size=2000)
    assert tokenizer.vocab_size == 2000
    assert tokenizer.special_tokens == {ENDOFTEXT: 1999}
    text = books[-1].read_text(encoding="utf-8")[400_000:500_000] or sample.read_text()[:100_000]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(text.encode()) / len(ids) > 2.5  # bytes per token: far better than raw bytes (1.0)
    tokenizer.save(tmp_path / "tok")
    hf = hf_fast_tokenizer(tmp_path / "tok")
    lines = text.splitlines()[:2000]
    assert [hf.encode(line) for line in lines] == tokenizer.encode_batch(lines)
    assert load_tokenizer(tmp_path / "tok").mergeable_ranks == tokenizer.mergeable_ranks


def test_train_from_iterator(tiny_tokenizer):
    assert tiny_tokenizer.vocab_size <= 400
    assert tiny_tokenizer.decode(tiny_tokenizer.encode("the river sold a blue boat")) == "the river sold a blue boat"


def test_bad_training_input_gives_clear_errors(tmp_path):
    with pytest.raises(GPT2KitError, match="no such file"):  # the corpus reader's errors
        train_tokenizer([tmp_path / "missing.txt"], vocab_size=300)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(TokenizerError, match="empty corpus"):
        train_tokenizer([empty], vocab_size=300)
    with pytest.raises(TokenizerError, match="at least 257"):
        train_tokenizer(["some text"], vocab_size=256, files=False)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(GPT2KitError, match="binary.txt:2: not UTF-8"):
        train_tokenizer([binary], vocab_size=300)


def test_bad_tokenizer_files_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(TokenizerError, match="no tokenizer here"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerError, match="vocab.json: not valid JSON"):
        load_tokenizer(tmp_path)
    monkeypatch.setenv("GPT2KIT_GPT2_VOCAB", str(tmp_path / "nowhere.tiktoken"))
    with pytest.raises(TokenizerError, match="GPT2KIT_GPT2_VOCAB"):
        Tokenizer.gpt2()


def test_cli_encode_decode_round_trip(gpt2_tokenizer, tmp_path):
    text = "Hello world\n\nnaïve 😀 <|endoftext|>\n"
    (tmp_path / "in.txt").write_text(text)
    encoded = run_cli_process("tokenizer", "encode", "--tokenizer", "gpt2", str(tmp_path / "in.txt"))
    assert encoded.returncode == 0, encoded.stderr
    lines = encoded.stdout.splitlines()
    assert lines[0] == "15496 995" and lines[1] == "" and len(lines) == 3
    decoded = run_cli_process("tokenizer", "decode", "--tokenizer", "gpt2", stdin=encoded.stdout)
    assert decoded.returncode == 0 and decoded.stdout == text


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\n")
    result = run_cli_process("tokenizer", "encode", str(tmp_path / "bad.txt"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "bad.txt:2: not UTF-8" in result.stderr
    result = run_cli_process("tokenizer", "decode", stdin="1 2 99999999\n")
    assert result.returncode == 2 and "outside the vocabulary" in result.stderr
    result = run_cli_process(
        "tokenizer", "train", "--input", str(tmp_path / "none.txt"), "--vocab-size", "300", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_cli_train_says_when_the_corpus_gives_fewer_tokens(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("the river sold a blue boat to the miller. " * 200)
    result = run_cli_process(
        "tokenizer", "train", "--input", str(corpus), "--vocab-size", "32000", "--out", str(tmp_path / "t")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("trained ") and "32,000 were asked for" in lines[1] and len(lines) == 2
