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

from gpt2kit.errors import GPT2KitError, short_repr
from gpt2kit.io import parse_json

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-2's pre-tokenization regex as tiktoken writes it (GPT2_PATTERN) and as OpenAI's encoder.py and HF's ByteLevel do:
# the same matches, so a tokenizer.json that splits on either before a regex-free ByteLevel encodes as GPT-2 does.
GPT2_PATTERNS = (GPT2_PATTERN, r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
ENDOFTEXT = "<|endoftext|>"
GPT2_HUB_ID = "openai-community/gpt2"
VOCAB_ENV = "GPT2KIT_GPT2_VOCAB"
# Ids are embedding rows. A vocabulary may leave some unused (padding, pruned tokens), but no more than this many:
# the id tables here, and the model's rows, then stay proportional to the vocabulary's own size.
MAX_ID_GAPS = 2**16
# Special and added tokens (and unmerged vocabulary entries) become one alternation in tiktoken's matcher, whose
# memory grows some 300 bytes per character: real ones are a few dozen characters, a few hundred tokens at most.
MAX_SPECIAL_CHARS = 1024
MAX_SPECIAL_TOTAL_CHARS = 2**16


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
        # tiktoken's special tokens (text -> rank) follow the mergeable ranks. Besides the special and added
        # tokens they hold the vocabulary's tokens that no merge makes: decodable, never produced by encoding.
        extra = [*self.special_tokens.items(), *self.added_tokens.items()]
        for token, token_id in self.token_ids.items():
            if token not in mergeable_ranks:
                try:
                    extra.append((token.decode("utf-8"), token_id))
                except UnicodeDecodeError:
                    raise TokenizerError(
                        f"{where}: token {short_repr(token_to_str(token))} (id {token_id}) is not made by any merge and is not "
                        "UTF-8 text: not supported"
                    ) from None
        _check_special_texts(extra, where)
        rank_to_id = [0] * len(mergeable_ranks) + [token_id for _, token_id in extra]
        for token, rank in mergeable_ranks.items():
            rank_to_id[rank] = self.token_ids[token]
        if len({text for text, _ in extra}) != len(extra):
            raise TokenizerError(f"{where}: a special or added token is listed twice")
        if len(set(rank_to_id)) != len(rank_to_id) or min(rank_to_id) < 0:
            seen: set[int] = set()
            bad = next(i for i in rank_to_id if i < 0 or i in seen or seen.add(i))
            raise TokenizerError(f"{where}: token id {bad} is negative or given to two tokens")
        if max(rank_to_id) >= len(rank_to_id) + MAX_ID_GAPS:  # before any table is sized by the largest id
            raise TokenizerError(
                f"{where}: token id {max(rank_to_id)} is too large for a vocabulary of {len(rank_to_id)} tokens "
                f"(at most {MAX_ID_GAPS} unused ids are allowed)"
            )
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

    # -- loading ----------------------------------------------------------------------
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
    def from_vocab_merges(
        cls,
        vocab_path: str | os.PathLike,
        merges_path: str | os.PathLike,
        special: Iterable[str] = (),
        unk_text: str | None = None,
    ) -> Tokenizer:
        """Load GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe), whatever their id layout.

        `special` names the tokens that are special (from tokenizer_config.json); `<|...|>` tokens always are.
        `unk_text` (tokenizer_config.json's unknown token) stands for bytes the vocabulary lacks.
        """
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        vocab = _read_json(vocab_path)
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
        try:
            merge_lines = merges_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise TokenizerError(f"{merges_path}: tokenizer file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise TokenizerError(f"{merges_path}: unreadable tokenizer file ({err})") from None
        merges = []
        for number, line in enumerate(merge_lines, 1):
            if not line or (number == 1 and line.startswith("#version")):
                continue
            pair = line.split(" ")
            if len(pair) != 2:
                raise TokenizerError(f"{merges_path}:{number}: expected two tokens, got {line!r}")
            merges.append((pair[0], pair[1], f"{merges_path}:{number}"))
        name = vocab_path.parent.name or "bpe"
        return _from_hf_vocabulary(vocab, merges, set(special), {}, str(vocab_path), name, unk_text)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, unk_text: str | None = None) -> Tokenizer:
        """Load an HF `tokenizer.json` holding a byte-level BPE with GPT-2's pre-tokenizer.

        Its model's unknown token, else `unk_text` (tokenizer_config.json's), stands for bytes the vocabulary lacks.
        """
        path = Path(path)
        config = _read_json(path)
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise TokenizerError(f"{path}: expected a tokenizers JSON object with a 'model'")
        model = config["model"]
        _check_hf_pipeline(config, path)
        vocab = _typed(model.get("vocab"), dict, path, "model.vocab")
        raw_merges = _typed(model.get("merges"), (list, None), path, "model.merges") or []
        merges = []
        for number, merge in enumerate(raw_merges):
            pair = merge.split(" ") if isinstance(merge, str) else merge
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise TokenizerError(f"{path}: model.merges[{number}] is not a pair of tokens: {short_repr(merge)}")
            merges.append((pair[0], pair[1], f"{path}: model.merges[{number}]"))
        special, added = set(), {}
        for number, entry in enumerate(_typed(config.get("added_tokens"), (list, None), path, "added_tokens") or []):
            field = f"added_tokens[{number}]"
            entry = _typed(entry, dict, path, field)
            text = _typed(entry.get("content"), str, path, f"{field}.content")
            token_id = _typed(entry.get("id"), int, path, f"{field}.id")
            if _typed(entry.get("special"), (bool, None), path, f"{field}.special"):
                special.add(text)
            added[text] = token_id
        name = path.parent.name or "bpe"
        unk_text = _typed(model.get("unk_token"), (str, None), path, "model.unk_token") or unk_text
        tokenizer = _from_hf_vocabulary(vocab, merges, special, added, str(path), name, unk_text)
        # HF fuses a run of unknown bytes into one unknown token; tiktoken gives each its own.
        if tokenizer.missing_bytes and _typed(model.get("fuse_unk"), (bool, None), path, "model.fuse_unk"):
            raise TokenizerError(f"{path}: model.fuse_unk=true is not supported for a vocabulary that lacks bytes")
        return tokenizer

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        """A tokenizer directory: tokenizer.json, or vocab.json + merges.txt, or a .tiktoken file."""
        directory = Path(directory)
        tokenizer_json = directory / "tokenizer.json"
        unk = _declared_token(directory, "unk_token")
        if tokenizer_json.exists():
            tokenizer = cls.from_tokenizer_json(tokenizer_json, unk)
        elif (directory / "vocab.json").exists() or (directory / "merges.txt").exists():
            tokenizer = cls.from_vocab_merges(
                directory / "vocab.json", directory / "merges.txt", _declared_special(directory), unk
            )
        else:
            tiktoken_files = sorted(directory.glob("*.tiktoken"))
            if not tiktoken_files:
                raise TokenizerError(
                    f"{directory}: no tokenizer here (expected tokenizer.json, vocab.json + merges.txt, "
                    "or a .tiktoken file)"
                )
            return cls.from_tiktoken_file(tiktoken_files[0])
        eos = _declared_token(directory, "eos_token")
        if eos is not None and eos in tokenizer.special_tokens:
            tokenizer.eot_text = eos
        return tokenizer

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


def _read_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: unreadable tokenizer file ({err})") from None
    return parse_json(text, str(path), TokenizerError)


# What a JSON value is called in errors, by the Python type json gives it (None for null).
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", None: "null"}  # fmt: skip


def _json_type(value) -> str:
    if isinstance(value, bool):
        return json.dumps(value)
    return _JSON_TYPES.get(None if value is None else type(value), type(value).__name__)


def _typed(value, types, path: Path, field: str):
    """`value` when it is one of the JSON `types` (classes, or None for null), else one line naming `field`."""
    types = types if isinstance(types, tuple) else (types,)
    for kind in types:
        if (
            (value is None)
            if kind is None
            else (isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
        ):
            return value
    wanted = " or ".join(_JSON_TYPES[kind] for kind in types)
    raise TokenizerError(f"{path}: {field} must be {wanted}, got {_json_type(value)}")


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


def _check_hf_pipeline(config: dict, path: Path) -> None:
    """Refuse, in one line, what would make HF's encoding differ from GPT-2's byte-level BPE."""
    model = config["model"]
    kind = _typed(model.get("type", "BPE"), str, path, "model.type")
    if kind != "BPE":
        raise TokenizerError(f"{path}: model type {short_repr(kind)} is not supported (only byte-level BPE)")
    for option, types, neutral in (
        ("continuing_subword_prefix", (str, None), ""),
        ("end_of_word_suffix", (str, None), ""),
        ("byte_fallback", (bool, None), False),
    ):
        if (_typed(model.get(option), types, path, f"model.{option}") or neutral) != neutral:
            raise TokenizerError(f"{path}: model.{option}={short_repr(model[option])} is not supported")
    if model.get("dropout") not in (None, 0, 0.0):
        raise TokenizerError(f"{path}: model.dropout={short_repr(model['dropout'])} is not supported (BPE dropout)")
    normalizer = _typed(config.get("normalizer"), (dict, None), path, "normalizer")
    if normalizer is not None:
        raise TokenizerError(f"{path}: normalizer {short_repr(normalizer.get('type'))} is not supported")
    _check_pre_tokenizer(config, path)


def _check_pre_tokenizer(config: dict, path: Path) -> None:
    """GPT-2's pre-tokenization, as HF writes it: ByteLevel with its regex (alone, or a Sequence's one step), or a
    Sequence of a Split on GPT-2's regex then a ByteLevel without one (transformers' TikTokenConverter)."""
    pre = _typed(config.get("pre_tokenizer"), (dict, None), path, "pre_tokenizer") or {}
    steps = [("pre_tokenizer", pre)]
    if pre.get("type") == "Sequence":
        listed = _typed(pre.get("pretokenizers"), (list, None), path, "pre_tokenizer.pretokenizers") or []
        fields = [f"pre_tokenizer.pretokenizers[{i}]" for i in range(len(listed))]
        steps = [(field, _typed(step, dict, path, field)) for field, step in zip(fields, listed, strict=True)]
    split = len(steps) == 2 and steps[0][1].get("type") == "Split"
    field, byte_level = steps[-1]
    use_regex = _typed(byte_level.get("use_regex", True), bool, path, f"{field}.use_regex")
    if len(steps) != 1 + split or byte_level.get("type") != "ByteLevel" or use_regex == split:
        kinds = "Sequence[" + ", ".join(str(step.get("type")) for _, step in steps) + "]"
        shown = kinds if pre.get("type") == "Sequence" and pre.get("pretokenizers") else pre.get("type")
        raise TokenizerError(
            f"{path}: pre_tokenizer {short_repr(shown)} is not supported (only GPT-2's: ByteLevel, or a Split on "
            "GPT-2's regex then ByteLevel without one)"
        )
    if split:
        _check_gpt2_split(*steps[0], path)
    if _typed(byte_level.get("add_prefix_space"), (bool, None), path, f"{field}.add_prefix_space"):
        raise TokenizerError(f"{path}: {field}.add_prefix_space=true is not supported")


def _check_gpt2_split(field: str, split: dict, path: Path) -> None:
    """A Split that cuts text into GPT-2's pre-tokens: GPT-2's regex, each match a piece of its own."""
    pattern = _typed(split.get("pattern"), dict, path, f"{field}.pattern")
    regex = _typed(pattern.get("Regex"), (str, None), path, f"{field}.pattern.Regex")
    behavior = split.get("behavior")
    invert = _typed(split.get("invert", False), bool, path, f"{field}.invert")
    if regex not in GPT2_PATTERNS or behavior != "Isolated" or invert:
        shown = short_repr(regex if regex is not None else pattern)
        raise TokenizerError(
            f"{path}: {field}: a Split on {shown} (behavior {short_repr(behavior)}, invert={json.dumps(invert)}) "
            "is not supported (only on GPT-2's regex, isolated)"
        )


def _token_text(value, path: Path, field: str) -> str | None:
    """A token as tokenizer_config.json names it: a string, an object with its `content`, or null."""
    if isinstance(_typed(value, (str, dict, None), path, field), dict):
        return _typed(value.get("content"), str, path, f"{field}.content")
    return value


def _read_token_config(path: Path) -> dict:
    config = _read_json(path)
    if not isinstance(config, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return config


def _declared_special(directory: Path) -> set[str]:
    """Special tokens that tokenizer_config.json and special_tokens_map.json name."""
    names: set[str] = set()
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / file
        if not path.exists():
            continue
        config = _read_token_config(path)
        decoder = _typed(config.get("added_tokens_decoder"), (dict, None), path, "added_tokens_decoder") or {}
        for token_id, entry in decoder.items():
            field = f"added_tokens_decoder[{short_repr(token_id)}]"
            entry = _typed(entry, dict, path, field)
            text = _typed(entry.get("content"), str, path, f"{field}.content")
            if _typed(entry.get("special"), (bool, None), path, f"{field}.special"):
                names.add(text)
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            text = _token_text(config.get(key), path, key)
            if text is not None:
                names.add(text)
    return names


def _declared_token(directory: Path, key: str) -> str | None:
    """The token that tokenizer_config.json (else special_tokens_map.json) gives as `key` (eos_token, unk_token)."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / file
        if path.exists():
            text = _token_text(_read_token_config(path).get(key), path, key)
            if text is not None:
                return text
    return None


def _is_special_text(text: str, declared: set[str]) -> bool:
    return text in declared or (text.startswith("<|") and text.endswith("|>"))


def _from_hf_vocabulary(
    vocab: dict[str, int],
    merges: list[tuple[str, str, str]],
    special: set[str],
    added: dict[str, int],
    where: str,
    name: str,
    unk_text: str | None = None,
) -> Tokenizer:
    """Ranks from merge order, ids from the vocabulary.

    The vocabulary's byte tokens (all 256, or fewer in toy vocabularies) take the first ranks in id order, then
    each token made by a merge takes the next rank where its first merge stands. Special tokens are those
    declared special or written `<|...|>`; added tokens (from tokenizer.json) not in the vocabulary are split
    out of text. `merges` holds (left, right, where) with `where` naming the line for errors.
    """
    specials: dict[str, int] = {}
    plain_added: dict[str, int] = {}
    token_ids: dict[bytes, int] = {}
    candidates: dict[str, bytes] = {}
    for text, token_id in {**vocab, **added}.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise TokenizerError(f"{where}: token {short_repr(text)} has id {short_repr(token_id)}, not an integer")
        if _is_special_text(text, special):
            specials[text] = token_id
        elif text in added:
            plain_added[text] = token_id
            try:  # also a candidate for BPE, in case a merge makes it
                candidates[text] = str_to_token(text)
                token_ids[candidates[text]] = token_id
            except TokenizerError:
                pass
        else:
            token_ids[str_to_token(text, where)] = token_id
    byte_ids = sorted((token_id, token) for token, token_id in token_ids.items() if len(token) == 1)
    ranks = {token: rank for rank, (_, token) in enumerate(byte_ids)}
    pairs = _merge_pairs(merges, token_ids, ranks)
    # HF splits added tokens out of text before BPE; one that BPE makes anyway stays an ordinary token.
    for text, token in candidates.items():
        if token in ranks:
            del plain_added[text]
        else:
            del token_ids[token]
    return Tokenizer(
        ranks,
        specials,
        name,
        token_ids=token_ids,
        added_tokens=plain_added,
        merges=pairs,
        unk_text=unk_text,
        where=where,
    )


def _merge_pairs(
    merges: list[tuple[str, str, str]], token_ids: dict[bytes, int], ranks: dict[bytes, int]
) -> list[tuple[bytes, bytes]]:
    """Rank each token that `merges` make (into `ranks`, after the bytes) where its first merge stands; the merges.

    A merge may use a token that a later merge makes, and several merges may make one token, as transformers'
    TikTokenConverter writes them (every split of each tiktoken token, in rank order): tiktoken's BPE, which
    merges by the rank of the token made, then merges exactly as HF's does by the position of the merge.
    """
    pairs = []
    for left, right, line in merges:
        parts = str_to_token(left, line), str_to_token(right, line)
        if not (left and right):
            raise TokenizerError(f"{line}: merge {left!r} {right!r} has an empty side")
        for text, part in zip((left, right), parts, strict=True):
            if part not in token_ids:
                raise TokenizerError(f"{line}: merge {left!r} {right!r} uses {text!r}, which is not in the vocabulary")
        merged = parts[0] + parts[1]
        if merged not in token_ids:
            raise TokenizerError(f"{line}: merge {left!r} {right!r} makes {left + right!r}, which has no id")
        ranks.setdefault(merged, len(ranks))
        pairs.append(parts)
    for (left, right, line), parts in zip(merges, pairs, strict=True):
        for text, part in zip((left, right), parts, strict=True):
            if part not in ranks:
                raise TokenizerError(f"{line}: merge {left!r} {right!r} uses {text!r}, which no merge makes")
    return pairs


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
