import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("GPT2KIT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
GPT2_TIKTOKEN = SHARED / "gpt2-vocab" / "gpt2.tiktoken"
os.environ.setdefault("GPT2KIT_GPT2_VOCAB", str(GPT2_TIKTOKEN))


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared data file {path} is not present")
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from gpt2kit.tokenizer import Tokenizer

    shared_file("gpt2-vocab/gpt2.tiktoken")
    return Tokenizer.gpt2()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A small BPE trained on generated text (fast; no shared data needed)."""
    from textgen import generated_text

    from gpt2kit.tokenizer import train_tokenizer

    corpus = tmp_path_factory.mktemp("tok") / "corpus.txt"
    corpus.write_text(generated_text(3000, seed=1))
    return train_tokenizer([corpus], vocab_size=400)


def prepare_generated(root: Path, tokenizer, files: int, words: int, **options) -> Path:
    """`files` text files of `words` generated words each under ROOT/corpus, prepared into ROOT/data."""
    from textgen import generated_text

    from gpt2kit.data.prepare import prepare

    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(files):
        (corpus / f"{i:02d}.txt").write_text(generated_text(words, seed=i))
    prepare([str(corpus)], tokenizer, root / "data", val_fraction=0.1, workers=1, progress=False, **options)
    return root / "data"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_tokenizer):
    """Token shards of generated text, tokenized with the tiny BPE: what the training tests train on."""
    return prepare_generated(tmp_path_factory.mktemp("train"), tiny_tokenizer, files=40, words=50)


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """`run_cli(*args, stdin=None)`: the CLI in this process, as a `helpers.CliResult`."""
    from helpers import run_cli_in_process

    return lambda *args, stdin=None: run_cli_in_process(capsys, monkeypatch, *args, stdin=stdin)
