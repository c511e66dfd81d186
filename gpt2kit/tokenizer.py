"""GPT-2's byte-level BPE.

Ranks are the single source of truth: rank r is both a token's id and its
merge priority, exactly as in GPT-2 (and tiktoken). Encoding runs in
tiktoken's Rust core built from those ranks; training uses HF `tokenizers`.
The GPT-2 file pair `vocab.json` + `merges.txt` is derived from the ranks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken

from gpt2kit.errors import GPT2KitError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
GPT2_HUB_ID = "openai-community/gpt2"
VOCAB_ENV = "GPT2KIT_GPT2_VOCAB"


class TokenizerError(GPT2KitError):
    """A tokenizer file or argument is missing or malformed; the message says which."""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255 so
    that no token string contains whitespace or control characters.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_values, code_points = printable[:], printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + shift)
            shift += 1
    return dict(zip(byte_values, map(chr, code_points), strict=True))


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def str_to_token(text: str, where: str = "vocab") -> bytes:
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in text)
    except KeyError as err:
        raise TokenizerError(f"{where}: {text!r} is not a byte-level BPE token (character {err})") from None


def _merge_pair(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens that BPE merges into `token`, replaying merges ranked below it."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_index, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    if len(parts) != 2:
        raise TokenizerError(f"token {token!r} (rank {limit}) cannot be built from lower-ranked merges")
    return parts[0], parts[1]


class Tokenizer:
    """Byte-level BPE with GPT-2's pre-tokenization and `<|endoftext|>` as special token."""

    def __init__(
        self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None, name: str = "bpe"
    ):
        if len(mergeable_ranks) < 256:
            raise TokenizerError(
                f"{name}: a byte-level vocabulary needs all 256 bytes, got {len(mergeable_ranks)} tokens"
            )
        if sorted(mergeable_ranks.values()) != list(range(len(mergeable_ranks))):
            raise TokenizerError(f"{name}: ranks must be exactly 0..{len(mergeable_ranks) - 1}")
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: len(mergeable_ranks)}
        self.name = name
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = special_tokens
        self._encoding = tiktoken.Encoding(
            name=name,
            pat_str=GPT2_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens=special_tokens,
            explicit_n_vocab=len(mergeable_ranks) + len(special_tokens),
        )

    # -- properties -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.mergeable_ranks) + len(self.special_tokens)

    @property
    def eot_token(self) -> int:
        return self.special_tokens[ENDOFTEXT]

    @property
    def sha256(self) -> str:
        """Identifies the vocabulary: equal hashes mean identical token ids."""
        digest = hashlib.sha256()
        for token, rank in sorted(self.mergeable_ranks.items(), key=lambda item: item[1]):
            digest.update(base64.b64encode(token) + b" %d\n" % rank)
        for text, rank in sorted(self.special_tokens.items(), key=lambda item: item[1]):
            digest.update(text.encode() + b" %d\n" % rank)
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    # -- encoding ---------------------------------------------------------------------
    def encode(self, text: str, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """Token ids of `text`. Special-token text is ordinary text unless listed in `allowed_special` ("all" for every one)."""
        if allowed_special == "all":
            return self._encoding.encode(text, allowed_special="all")
        allowed = set(allowed_special)
        if not allowed:
            return self._encoding.encode_ordinary(text)
        return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts in parallel threads (the Rust core releases the GIL)."""
        return self._encoding.encode_ordinary_batch(texts, num_threads=num_threads or os.cpu_count() or 1)

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """`encode(text)` as a uint32 array, built in Rust without a Python list (for bulk tokenizing)."""
        return self._encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._encoding.decode_bytes(list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._encoding.decode_single_token_bytes(token_id)

    # -- GPT-2 files ------------------------------------------------------------------
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merge rules in rank order (GPT-2's merges.txt, equivalently vocab.bpe)."""
        ordered = sorted((rank, token) for token, rank in self.mergeable_ranks.items() if len(token) > 1)
        return [_merge_pair(token, self.mergeable_ranks) for _, token in ordered]

    def save(self, directory: str | os.PathLike) -> None:
        """Write vocab.json, merges.txt and the small configs transformers reads."""
        from gpt2kit.io import atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = {
            token_to_str(token): rank for token, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        }
        vocab.update(self.special_tokens)
        atomic_write_text(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False))
        lines = ["#version: 0.2"] + [f"{token_to_str(a)} {token_to_str(b)}" for a, b in self.merges()]
        atomic_write_text(directory / "merges.txt", "\n".join(lines) + "\n")
        special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "model_max_length": 1024, **special}
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2))
        atomic_write_text(directory / "special_tokens_map.json", json.dumps(special, indent=2))

    @classmethod
    def from_tiktoken_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a `.tiktoken` rank file (base64 token, rank per line); `<|endoftext|>` follows the last rank."""
        path = Path(path)
        ranks: dict[bytes, int] = {}
        try:
            lines = path.read_bytes().splitlines()
        except OSError as err:
            raise TokenizerError(f"{path}: cannot read tokenizer ranks ({err.strerror or err})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise TokenizerError(f"{path}:{number}: expected 'base64token rank', got {line[:60]!r}") from None
        return cls(ranks, name=path.stem)

    @classmethod
    def from_vocab_merges(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> Tokenizer:
        """Load GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe)."""
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        try:
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
            merge_lines = merges_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as err:
            raise TokenizerError(f"{err.filename}: tokenizer file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerError(f"{vocab_path.parent}: unreadable tokenizer files ({err})") from None
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_path}: expected a JSON object mapping tokens to ids")
        special = {text: rank for text, rank in vocab.items() if text.startswith("<|") and text.endswith("|>")}
        ranks = {str_to_token(text, str(vocab_path)): rank for text, rank in vocab.items() if text not in special}
        merges = [line.split(" ") for line in merge_lines if line and not line.startswith("#version")]
        expected = len(ranks) - 256
        if len(merges) != expected:
            raise TokenizerError(f"{merges_path}: {len(merges)} merges for {len(ranks)} tokens (expected {expected})")
        # ids in vocab.json must follow merge order, so that id == merge priority as tiktoken requires.
        for number, pair in enumerate(merges):
            if len(pair) != 2:
                raise TokenizerError(f"{merges_path}:{number + 2}: expected two tokens, got {' '.join(pair)!r}")
            merged = str_to_token(pair[0] + pair[1], str(merges_path))
            if ranks.get(merged) != 256 + number:
                raise TokenizerError(
                    f"{merges_path}:{number + 2}: merge {pair} does not produce token id {256 + number}"
                )
        return cls(ranks, special or None, name=vocab_path.parent.name or "bpe")

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        directory = Path(directory)
        if (directory / "vocab.json").exists() or (directory / "merges.txt").exists():
            return cls.from_vocab_merges(directory / "vocab.json", directory / "merges.txt")
        tiktoken_files = sorted(directory.glob("*.tiktoken"))
        if tiktoken_files:
            return cls.from_tiktoken_file(tiktoken_files[0])
        raise TokenizerError(f"{directory}: no tokenizer here (expected vocab.json + merges.txt, or a .tiktoken file)")

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """The official GPT-2 vocabulary: $GPT2KIT_GPT2_VOCAB, else the HF cache or hub, else a clear error."""
        configured = os.environ.get(VOCAB_ENV)
        if configured:
            path = Path(configured)
            if path.is_dir():
                tokenizer = cls.from_dir(path)
            elif path.is_file():
                tokenizer = cls.from_tiktoken_file(path)
            else:
                raise TokenizerError(f"{VOCAB_ENV}={configured}: no such file or directory")
            tokenizer.name = "gpt2"
            return tokenizer
        try:
            vocab, merges = _hub_files(GPT2_HUB_ID, ("vocab.json", "merges.txt"))
        except Exception as err:  # offline, no cache, or hub error: all mean "not available here"
            raise TokenizerError(
                f"the GPT-2 vocabulary was not found: set {VOCAB_ENV} to a gpt2.tiktoken file or a directory "
                f"with vocab.json + merges.txt ({type(err).__name__})"
            ) from None
        tokenizer = cls.from_vocab_merges(vocab, merges)
        tokenizer.name = "gpt2"
        return tokenizer


def _hub_files(repo_id: str, filenames: tuple[str, ...]) -> list[str]:
    """Paths of hub files: the local HF cache first (no network), then a download."""
    from huggingface_hub import hf_hub_download

    try:
        return [hf_hub_download(repo_id, name, local_files_only=True) for name in filenames]
    except Exception:
        return [hf_hub_download(repo_id, name) for name in filenames]


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """`gpt2` for the official vocabulary, a directory, or a `.tiktoken` file."""
    if str(spec) == "gpt2":
        return Tokenizer.gpt2()
    path = Path(spec)
    if path.is_dir():
        return Tokenizer.from_dir(path)
    if path.is_file() and path.suffix == ".tiktoken":
        return Tokenizer.from_tiktoken_file(path)
    raise TokenizerError(
        f"{spec}: not a tokenizer (use 'gpt2', a directory with vocab.json + merges.txt, or a .tiktoken file)"
    )


def _iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise TokenizerError(f"{path}: no such file or directory")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                with open(file, encoding="utf-8") as handle:
                    yield from handle
            except UnicodeDecodeError as err:
                raise TokenizerError(f"{file}: not UTF-8 text (byte offset {err.start})") from None


def train_tokenizer(
    texts: Iterable[str | os.PathLike] | Iterator[str],
    vocab_size: int,
    *,
    files: bool | None = None,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE of `vocab_size` tokens (including `<|endoftext|>`).

    `texts` is a list of file or directory paths (`files=True`, the default for a
    list of paths) or an iterator of strings.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise TokenizerError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    if files is None:
        files = isinstance(texts, (list, tuple)) and all(isinstance(t, (str, os.PathLike)) for t in texts)
    lines = _iter_files(texts) if files else iter(texts)
    seen_text = False

    def nonempty(stream: Iterator[str]) -> Iterator[str]:
        nonlocal seen_text
        for line in stream:
            if line.strip():
                seen_text = True
            yield line

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = byte_level
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(nonempty(lines), trainer=trainer)
    if not seen_text:
        raise TokenizerError("cannot train a tokenizer on an empty corpus")
    return _from_hf_bpe(json.loads(hf.to_str())["model"])


def _from_hf_bpe(model: dict) -> Tokenizer:
    """Convert a trained HF BPE model to ranks: bytes in GPT-2's order, then merges in training order."""
    ranks = {bytes([b]): rank for rank, b in enumerate(bytes_to_unicode())}
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        ranks[str_to_token(left) + str_to_token(right)] = len(ranks)
    return Tokenizer(ranks, name="trained")
