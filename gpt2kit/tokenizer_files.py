"""Reading tokenizer files into a `Vocabulary`: tiktoken rank files, GPT-2's vocab.json + merges.txt, HF's
tokenizer.json, and the special tokens that tokenizer_config.json and special_tokens_map.json declare.

A vocabulary's merge ranks (BPE priorities) come from merge order and its ids from the file, whatever their layout;
`Tokenizer.from_vocabulary` builds the tokenizer. What would make HF's encoding differ from GPT-2's byte-level BPE
is refused in one line naming the file and field.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpt2kit.errors import short_repr
from gpt2kit.io import parse_json
from gpt2kit.tokenizer_bytes import GPT2_PATTERNS, TokenizerError, str_to_token

GPT2_HUB_ID = "openai-community/gpt2"
VOCAB_ENV = "GPT2KIT_GPT2_VOCAB"


@dataclass
class Vocabulary:
    """What a tokenizer file says: the arguments of `Tokenizer` (see there)."""

    mergeable_ranks: dict[bytes, int]
    special_tokens: dict[str, int] | None = None
    name: str = "bpe"
    token_ids: dict[bytes, int] | None = None
    added_tokens: dict[str, int] | None = None
    eot_text: str | None = None
    merges: list[tuple[bytes, bytes]] | None = None
    unk_text: str | None = None
    where: str | None = None

    @property
    def lacks_bytes(self) -> bool:
        return any(bytes([b]) not in self.mergeable_ranks for b in range(256))


def read_tiktoken_file(path: str | os.PathLike) -> Vocabulary:
    """A `.tiktoken` rank file (base64 token, rank per line); `<|endoftext|>` follows the last rank."""
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
    return Vocabulary(ranks, name=path.stem)


def read_vocab_merges(
    vocab_path: str | os.PathLike,
    merges_path: str | os.PathLike,
    special: Iterable[str] = (),
    unk_text: str | None = None,
) -> Vocabulary:
    """GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe), whatever their id layout.

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


def read_tokenizer_json(path: str | os.PathLike, unk_text: str | None = None) -> Vocabulary:
    """An HF `tokenizer.json` holding a byte-level BPE with GPT-2's pre-tokenizer.

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
    vocabulary = _from_hf_vocabulary(vocab, merges, special, added, str(path), name, unk_text)
    # HF fuses a run of unknown bytes into one unknown token; tiktoken gives each its own.
    if vocabulary.lacks_bytes and _typed(model.get("fuse_unk"), (bool, None), path, "model.fuse_unk"):
        raise TokenizerError(f"{path}: model.fuse_unk=true is not supported for a vocabulary that lacks bytes")
    return vocabulary


def read_dir(directory: str | os.PathLike) -> Vocabulary:
    """A tokenizer directory: tokenizer.json, or vocab.json + merges.txt, or a .tiktoken file."""
    directory = Path(directory)
    tokenizer_json = directory / "tokenizer.json"
    unk = _declared_token(directory, "unk_token")
    if tokenizer_json.exists():
        vocabulary = read_tokenizer_json(tokenizer_json, unk)
    elif (directory / "vocab.json").exists() or (directory / "merges.txt").exists():
        vocabulary = read_vocab_merges(
            directory / "vocab.json", directory / "merges.txt", _declared_special(directory), unk
        )
    else:
        tiktoken_files = sorted(directory.glob("*.tiktoken"))
        if not tiktoken_files:
            raise TokenizerError(
                f"{directory}: no tokenizer here (expected tokenizer.json, vocab.json + merges.txt, "
                "or a .tiktoken file)"
            )
        return read_tiktoken_file(tiktoken_files[0])
    eos = _declared_token(directory, "eos_token")
    if eos is not None and eos in vocabulary.special_tokens:
        vocabulary.eot_text = eos
    return vocabulary


def read_gpt2() -> Vocabulary:
    """The official GPT-2 vocabulary: $GPT2KIT_GPT2_VOCAB, else the HF cache or hub, else a clear error."""
    configured = os.environ.get(VOCAB_ENV)
    if configured:
        path = Path(configured)
        if path.is_dir():
            return read_dir(path)
        if path.is_file():
            return read_tiktoken_file(path)
        raise TokenizerError(f"{VOCAB_ENV}={configured}: no such file or directory")
    try:
        vocab, merges = _hub_files(GPT2_HUB_ID, ("vocab.json", "merges.txt"))
    except Exception as err:  # offline, no cache, or hub error: all mean "not available here"
        raise TokenizerError(
            f"the GPT-2 vocabulary was not found: set {VOCAB_ENV} to a gpt2.tiktoken file or a directory "
            f"with vocab.json + merges.txt ({type(err).__name__})"
        ) from None
    return read_vocab_merges(vocab, merges)


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
) -> Vocabulary:
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
    return Vocabulary(
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
