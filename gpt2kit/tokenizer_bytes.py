"""Byte-level BPE tokens: GPT-2's byte-to-unicode map, its pre-tokenization regex, and the tokenizer's error.

What the tokenizer (`tokenizer`), its file readers (`tokenizer_files`) and its trainer (`tokenizer_train`) share.
"""

from __future__ import annotations

from functools import lru_cache

from gpt2kit.errors import GPT2KitError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-2's pre-tokenization regex as tiktoken writes it (GPT2_PATTERN) and as OpenAI's encoder.py and HF's ByteLevel do:
# the same matches, so a tokenizer.json that splits on either before a regex-free ByteLevel encodes as GPT-2 does.
GPT2_PATTERNS = (GPT2_PATTERN, r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
ENDOFTEXT = "<|endoftext|>"


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
