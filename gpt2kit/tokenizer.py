"""GPT-2's byte-level BPE: the `Tokenizer` (merge ranks, token ids, encoding and decoding, saving HF's files).

Ranks are the single source of truth: rank r is both a token's id and its
merge priority, exactly as in GPT-2 (and tiktoken). Encoding runs in
tiktoken's Rust core built from those ranks; training uses HF `tokenizers`.
The GPT-2 file pair `vocab.json` + `merges.txt` is derived from the ranks.

Reading tokenizer files is `tokenizer_files`, training `tokenizer_train`; this module is the tokenizer's public face
(`load_tokenizer`, `train_tokenizer`, and the byte-level names of `tokenizer_bytes`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tiktoken

from gpt2kit import tokenizer_files
from gpt2kit.errors import short_repr
from gpt2kit.tokenizer_bytes import (
    ENDOFTEXT,
    GPT2_PATTERN,
    GPT2_PATTERNS,
    TokenizerError,
    bytes_to_unicode,
    str_to_token,
    token_to_str,
)
from gpt2kit.tokenizer_files import VOCAB_ENV, Vocabulary

__all__ = [
    "ENDOFTEXT",
    "GPT2_PATTERN",
    "GPT2_PATTERNS",
    "MAX_ID_GAPS",
    "MAX_SPECIAL_CHARS",
    "MAX_SPECIAL_TOTAL_CHARS",
    "VOCAB_ENV",
    "Tokenizer",
    "TokenizerError",
    "bytes_to_unicode",
    "load_tokenizer",
    "str_to_token",
    "token_to_str",
    "train_tokenizer",
]

# Ids are embedding rows. A vocabulary may leave some unused (padding, pruned tokens), but no more than this many:
# the id tables here, and the model's rows, then stay proportional to the vocabulary's own size.
MAX_ID_GAPS = 2**16
# Special and added tokens (and unmerged vocabulary entries) become one alternation in tiktoken's matcher, whose
# memory grows some 300 bytes per character: real ones are a few dozen characters, a few hundred tokens at most.
MAX_SPECIAL_CHARS = 1024
MAX_SPECIAL_TOTAL_CHARS = 2**16


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
    """Byte-level BPE with GPT-2's pre-tokenization.

    A token's merge rank (its priority in BPE, `mergeable_ranks`) and its id (its
    row in the model's embedding, `token_ids`) are different things: GPT-2 makes
    them equal, HF `tokenizers` puts special tokens and the bytes first. Encoding
    runs on tiktoken's Rust core in rank space and maps ranks to ids on the way
    out (a no-op array-free path when they are equal); decoding maps back.

    `special_tokens` (text -> id) are matched only where the caller allows them.
    `added_tokens` (text -> id) are split out of any text first, as HF does with
    its non-special added tokens. Ids may have gaps; `missing_ids` lists them.

    A vocabulary may lack some of the 256 bytes (`missing_bytes`), as toy HF vocabularies do: text needing one
    encodes it as the unknown token `unk_text` (HF's behaviour when it has one), else is refused naming the byte.
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int] | None = None,
        name: str = "bpe",
        *,
        token_ids: dict[bytes, int] | None = None,
        added_tokens: dict[str, int] | None = None,
        eot_text: str | None = None,
        merges: list[tuple[bytes, bytes]] | None = None,
        unk_text: str | None = None,
        where: str | None = None,
    ):
        """`where` names the file the vocabulary came from in errors (default: `name`)."""
        where = where or name
        if sorted(mergeable_ranks.values()) != list(range(len(mergeable_ranks))):
            raise TokenizerError(f"{where}: ranks must be exactly 0..{len(mergeable_ranks) - 1}")
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: len(mergeable_ranks)}
        self.name = name
        self.mergeable_ranks = mergeable_ranks
        self.token_ids = token_ids if token_ids is not None else dict(mergeable_ranks)
        self.special_tokens = special_tokens
        self.added_tokens = added_tokens or {}
        self._merges = merges
        if any(token not in self.token_ids for token in mergeable_ranks):
            raise TokenizerError(f"{where}: every ranked token needs an id")
        self.unk_text = unk_text if unk_text is not None and self._text_id(unk_text) is not None else None
        self.missing_bytes = tuple(b for b in range(256) if bytes([b]) not in mergeable_ranks)
        extra = self._unranked_tokens(where)
        rank_to_id = [0] * len(mergeable_ranks) + [token_id for _, token_id in extra]
        for token, rank in mergeable_ranks.items():
            rank_to_id[rank] = self.token_ids[token]
        if len({text for text, _ in extra}) != len(extra):
            raise TokenizerError(f"{where}: a special or added token is listed twice")
        _check_ids(rank_to_id, where)
        self.vocab_size = max(rank_to_id) + 1
        # tiktoken needs every byte: the missing ones take the ranks after the mergeable ones (no merge makes a
        # token with them, so they stay single) and encode as the unknown token.
        ranks = len(mergeable_ranks)
        self._byte_ranks = range(ranks, ranks + len(self.missing_bytes))
        unk_id = self._text_id(self.unk_text) if self.unk_text is not None else None
        rank_to_id[ranks:ranks] = [unk_id or 0] * len(self.missing_bytes)
        self._refuse_missing_bytes = bool(self.missing_bytes) and unk_id is None
        id_to_rank = [-1] * self.vocab_size
        for rank, token_id in enumerate(rank_to_id):
            if rank not in self._byte_ranks:
                id_to_rank[token_id] = rank
        self.missing_ids = tuple(i for i, rank in enumerate(id_to_rank) if rank < 0)
        self._missing = frozenset(self.missing_ids)
        identity = rank_to_id == list(range(len(rank_to_id)))
        # None on GPT-2's own layout: encoding then returns tiktoken's ids untouched, at tiktoken's speed.
        self._rank_to_id = None if identity else rank_to_id
        self._rank_to_id_array = None if identity else np.asarray(rank_to_id, dtype=np.uint32)
        self._id_to_rank = None if identity else id_to_rank
        self._split_out = set(self.added_tokens)
        self.eot_text = eot_text or self._default_eot()
        tiktoken_ranks = dict(mergeable_ranks)
        tiktoken_ranks.update((bytes([b]), r) for b, r in zip(self.missing_bytes, self._byte_ranks, strict=True))
        tiktoken_special = {text: len(tiktoken_ranks) + i for i, (text, _) in enumerate(extra)}
        try:
            self._encoding = tiktoken.Encoding(
                name=name, pat_str=GPT2_PATTERN, mergeable_ranks=tiktoken_ranks, special_tokens=tiktoken_special
            )
        except ValueError as err:  # tiktoken's matcher refused the special tokens (its size limits)
            raise TokenizerError(f"{where}: tiktoken cannot build this vocabulary ({err})") from None

    def _unranked_tokens(self, where: str) -> list[tuple[str, int]]:
        """(text, id) of tiktoken's special tokens, which follow the mergeable ranks. Besides the special and added
        tokens they hold the vocabulary's tokens that no merge makes: decodable, never produced by encoding."""
        extra = [*self.special_tokens.items(), *self.added_tokens.items()]
        for token, token_id in self.token_ids.items():
            if token not in self.mergeable_ranks:
                try:
                    extra.append((token.decode("utf-8"), token_id))
                except UnicodeDecodeError:
                    raise TokenizerError(
                        f"{where}: token {short_repr(token_to_str(token))} (id {token_id}) is not made by any merge and is not "
                        "UTF-8 text: not supported"
                    ) from None
        _check_special_texts(extra, where)
        return extra

    def _text_id(self, text: str) -> int | None:
        """The id of a token given as text (special, added, or vocabulary text in GPT-2's byte-to-unicode form)."""
        for table in (self.special_tokens, self.added_tokens):
            if text in table:
                return table[text]
        try:
            return self.token_ids.get(str_to_token(text))
        except TokenizerError:
            return None

    def _default_eot(self) -> str | None:
        if ENDOFTEXT in self.special_tokens:
            return ENDOFTEXT
        return next(iter(self.special_tokens), None) if len(self.special_tokens) == 1 else None

    # -- properties -------------------------------------------------------------------
    @property
    def eot_token(self) -> int:
        """The document separator's id: `<|endoftext|>`, or the tokenizer's declared end-of-text token."""
        if self.eot_text is None:
            raise TokenizerError(f"{self.name}: no end-of-text token ({ENDOFTEXT} is not in the vocabulary)")
        return self.special_tokens[self.eot_text]

    @property
    def sha256(self) -> str:
        """Identifies the vocabulary: equal hashes mean identical encodings and token ids."""
        digest = hashlib.sha256()
        for token in sorted(self.mergeable_ranks, key=self.mergeable_ranks.__getitem__):
            digest.update(base64.b64encode(token) + b" %d\n" % self.token_ids[token])
        for token, token_id in sorted(self.token_ids.items(), key=lambda item: item[1]):
            if token not in self.mergeable_ranks:
                digest.update(b"unranked " + base64.b64encode(token) + b" %d\n" % token_id)
        for text, token_id in sorted(self.special_tokens.items(), key=lambda item: item[1]):
            digest.update(text.encode() + b" %d\n" % token_id)
        for text, token_id in sorted(self.added_tokens.items(), key=lambda item: item[1]):
            digest.update(b"added " + text.encode() + b" %d\n" % token_id)
        if self.missing_bytes:  # what text with a missing byte encodes to
            digest.update(b"unknown " + (self.unk_text or "").encode() + b"\n")
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    # -- encoding ---------------------------------------------------------------------
    def _ids(self, ranks: list[int]) -> list[int]:
        if self._rank_to_id is None:
            return ranks
        if self._refuse_missing_bytes:
            self._check_bytes(ranks)
        table = self._rank_to_id
        return [table[r] for r in ranks]

    def _check_bytes(self, ranks: Iterable[int]) -> None:
        """Refuse text that needs a byte this vocabulary lacks, when it has no unknown token to stand for it."""
        missing = self._byte_ranks
        rank = next((r for r in ranks if missing.start <= r < missing.stop), None)
        if rank is not None:
            byte = self.missing_bytes[rank - missing.start]
            raise TokenizerError(
                f"{self.name}: the text needs byte 0x{byte:02x} ({token_to_str(bytes([byte]))!r} in vocab.json), "
                "which this vocabulary lacks, and it has no unknown token to stand for it"
            )

    def unknown_id(self, ids: Iterable[int]) -> str | None:
        """What is wrong with the first of `ids` that is no token of this vocabulary (beyond it, or a gap in
        its ids), as `token id N is ...`; None when every id is a token."""
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size:
                return f"token id {token_id} is out of vocabulary (outside the vocabulary, 0..{self.vocab_size - 1})"
            if token_id in self._missing:
                return f"token id {token_id} is not in the vocabulary (a gap in its ids)"
        return None

    def _ranks(self, ids: Iterable[int]) -> list[int]:
        ids = list(ids)
        problem = self.unknown_id(ids)
        if problem:
            raise TokenizerError(f"{self.name}: {problem}")
        table = self._id_to_rank
        return ids if table is None else [table[i] for i in ids]

    def encode(self, text: str, allowed_special: Iterable[str] | str = ()) -> list[int]:
        """Token ids of `text`. Special-token text is ordinary text unless listed in `allowed_special` ("all" for every one)."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        allowed |= self._split_out
        if not allowed:
            return self._ids(self._encoding.encode_ordinary(text))
        return self._ids(self._encoding.encode(text, allowed_special=allowed, disallowed_special=()))

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts in parallel threads (the Rust core releases the GIL)."""
        threads = num_threads or os.cpu_count() or 1
        if self._split_out:
            batches = self._encoding.encode_batch(
                texts, num_threads=threads, allowed_special=self._split_out, disallowed_special=()
            )
        else:
            batches = self._encoding.encode_ordinary_batch(texts, num_threads=threads)
        return batches if self._rank_to_id is None else [self._ids(ranks) for ranks in batches]

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """`encode(text)` as a uint32 array, built in Rust without a Python list (for bulk tokenizing)."""
        ranks = self._encoding.encode_to_numpy(text, allowed_special=self._split_out, disallowed_special=())
        if self._refuse_missing_bytes and ((ranks >= self._byte_ranks.start) & (ranks < self._byte_ranks.stop)).any():
            self._check_bytes(ranks.tolist())
        return ranks if self._rank_to_id_array is None else self._rank_to_id_array[ranks]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._encoding.decode_bytes(self._ranks(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._encoding.decode_single_token_bytes(self._ranks((token_id,))[0])

    # -- HF files ---------------------------------------------------------------------
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merge rules in rank order (GPT-2's merges.txt, equivalently vocab.bpe)."""
        if self._merges is None:
            ordered = sorted((rank, token) for token, rank in self.mergeable_ranks.items() if len(token) > 1)
            self._merges = [_merge_pair(token, self.mergeable_ranks) for _, token in ordered]
        return self._merges

    def vocab(self) -> dict[str, int]:
        """vocab.json's mapping: every token's text (GPT-2's byte-to-unicode form, or a special token) to its id."""
        entries = {token_to_str(token): token_id for token, token_id in self.token_ids.items()}
        entries.update(self.added_tokens)
        entries.update(self.special_tokens)
        return dict(sorted(entries.items(), key=lambda item: item[1]))

    def save(self, directory: str | os.PathLike) -> None:
        """Write tokenizer.json, vocab.json, merges.txt and the small configs transformers reads."""
        from gpt2kit.io import atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "vocab.json", json.dumps(self.vocab(), ensure_ascii=False))
        lines = ["#version: 0.2"] + [f"{token_to_str(a)} {token_to_str(b)}" for a, b in self.merges()]
        atomic_write_text(directory / "merges.txt", "\n".join(lines) + "\n")
        atomic_write_text(directory / "tokenizer.json", self._hf_tokenizer().to_str())
        special = {}
        if self.eot_text is not None:
            special = {"bos_token": self.eot_text, "eos_token": self.eot_text, "unk_token": self.eot_text}
        if self.unk_text is not None:
            special["unk_token"] = self.unk_text
        added = {
            **{t: (i, True) for t, i in self.special_tokens.items()},
            **{t: (i, False) for t, i in self.added_tokens.items()},
        }
        decoder = {
            str(token_id): {"content": text, "special": is_special, "lstrip": False, "rstrip": False,
                            "normalized": False, "single_word": False}
            for text, (token_id, is_special) in sorted(added.items(), key=lambda item: item[1][0])
        }  # fmt: skip
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "add_prefix_space": False,
            "model_max_length": 1024,
            "added_tokens_decoder": decoder,
            **special,
        }
        atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
        atomic_write_text(directory / "special_tokens_map.json", json.dumps(special, indent=2, ensure_ascii=False))

    def _hf_tokenizer(self):
        """This vocabulary as an HF `tokenizers` object (GPT-2's byte-level pipeline)."""
        from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
        from tokenizers import Tokenizer as HFTokenizer

        merges = [(token_to_str(a), token_to_str(b)) for a, b in self.merges()]
        # HF gives a byte the vocabulary lacks the model's unknown token (else drops it).
        unk = self.unk_text if self.missing_bytes else None
        hf = HFTokenizer(models.BPE(self.vocab(), merges, unk_token=unk))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        # Already in the vocabulary, so they keep their ids.
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.special_tokens])
        hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in self.added_tokens])
        return hf

    # -- loading (the files are read by tokenizer_files) ---------------------------------
    @classmethod
    def from_vocabulary(cls, vocabulary: Vocabulary) -> Tokenizer:
        return cls(
            vocabulary.mergeable_ranks,
            vocabulary.special_tokens,
            vocabulary.name,
            token_ids=vocabulary.token_ids,
            added_tokens=vocabulary.added_tokens,
            eot_text=vocabulary.eot_text,
            merges=vocabulary.merges,
            unk_text=vocabulary.unk_text,
            where=vocabulary.where,
        )

    @classmethod
    def from_tiktoken_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a `.tiktoken` rank file (base64 token, rank per line); `<|endoftext|>` follows the last rank."""
        return cls.from_vocabulary(tokenizer_files.read_tiktoken_file(path))

    @classmethod
    def from_vocab_merges(
        cls,
        vocab_path: str | os.PathLike,
        merges_path: str | os.PathLike,
        special: Iterable[str] = (),
        unk_text: str | None = None,
    ) -> Tokenizer:
        """Load GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe), whatever their id layout."""
        return cls.from_vocabulary(tokenizer_files.read_vocab_merges(vocab_path, merges_path, special, unk_text))

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, unk_text: str | None = None) -> Tokenizer:
        """Load an HF `tokenizer.json` holding a byte-level BPE with GPT-2's pre-tokenizer."""
        return cls.from_vocabulary(tokenizer_files.read_tokenizer_json(path, unk_text))

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        """A tokenizer directory: tokenizer.json, or vocab.json + merges.txt, or a .tiktoken file."""
        return cls.from_vocabulary(tokenizer_files.read_dir(directory))

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """The official GPT-2 vocabulary: $GPT2KIT_GPT2_VOCAB, else the HF cache or hub, else a clear error."""
        tokenizer = cls.from_vocabulary(tokenizer_files.read_gpt2())
        tokenizer.name = "gpt2"
        return tokenizer


def _check_ids(rank_to_id: list[int], where: str) -> None:
    """Refuse ids given twice or negative, and ids so large that tables sized by them would dwarf the vocabulary
    (checked before any table is sized by the largest id)."""
    if len(set(rank_to_id)) != len(rank_to_id) or min(rank_to_id) < 0:
        seen: set[int] = set()
        bad = next(i for i in rank_to_id if i < 0 or i in seen or seen.add(i))
        raise TokenizerError(f"{where}: token id {bad} is negative or given to two tokens")
    if max(rank_to_id) >= len(rank_to_id) + MAX_ID_GAPS:
        raise TokenizerError(
            f"{where}: token id {max(rank_to_id)} is too large for a vocabulary of {len(rank_to_id)} tokens "
            f"(at most {MAX_ID_GAPS} unused ids are allowed)"
        )


def _check_special_texts(entries: list[tuple[str, int]], where: str) -> None:
    """Refuse special and added tokens that tiktoken cannot match: empty (encoding would never advance), or too
    long for its matcher's memory."""
    total = 0
    for text, token_id in entries:
        if not text:
            raise TokenizerError(f"{where}: token id {token_id} is an empty special or added token")
        if len(text) > MAX_SPECIAL_CHARS:
            raise TokenizerError(
                f"{where}: special or added token id {token_id} is {len(text)} characters long "
                f"(at most {MAX_SPECIAL_CHARS})"
            )
        total += len(text)
    if total > MAX_SPECIAL_TOTAL_CHARS:
        raise TokenizerError(
            f"{where}: the special and added tokens hold {total} characters in all (at most {MAX_SPECIAL_TOTAL_CHARS})"
        )


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


def train_tokenizer(
    texts: Iterable[str | os.PathLike] | Iterator[str],
    vocab_size: int,
    *,
    files: bool | None = None,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE of `vocab_size` tokens (including `<|endoftext|>`).

    `texts` is a list of corpus inputs (`files=True`, the default for a list of paths: files, directories, glob
    patterns; text and JSON lines, compressed or not) or an iterator of strings.
    """
    from gpt2kit.tokenizer_train import train_ranks  # HF tokenizers and the corpus reader: only when training

    ranks = train_ranks(texts, vocab_size, files=files, min_frequency=min_frequency, show_progress=show_progress)
    return Tokenizer(ranks, name="trained")
