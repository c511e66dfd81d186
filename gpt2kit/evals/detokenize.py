"""Invertible detokenizers for tokenized benchmark text (WikiText, PTB, LAMBADA/CBT, 1BW).

GPT-2 reads natural text, so the paper scored these datasets after undoing
their tokenization ("invertible detokenizers"), while normalising the loss by
the dataset's own token count. Each detokenizer here removes spaces between
tokens (and maps a few tokens, like WikiText's `@-@` or PTB's `N`), and its
`retokenize` splits the result back into the original tokens.

Invertibility holds by construction: a space is removed only if
`segment` of the joined text returns exactly the tokens that were joined;
otherwise the space stays. So `retokenize(detokenize(line)) == line.split()`
for every line, and the token count (the perplexity denominator) is exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

# Multi-letter abbreviations that keep their final period as part of the token.
ABBREVIATIONS = frozenset(
    """mr mrs ms dr st no nos jr sr co corp inc ltd bros vs var pp sgt lt col gen capt cpt prof rev mt ft fig figs
    vol vols ed eds etc al approx dept est govt jan feb mar apr jun jul aug sep sept oct nov dec calif mass conn
    fla ga ill ind kan ky la md mich minn miss mo neb nev okla ore pa tenn tex va vt wash wis wyo ariz colo del
    messrs mme mlle op cf ca mss adm cmdr sen rep gov pres supt bldg assn univ ave blvd rd hwy sq ch pt nr""".split()
)
# One or more single letters each followed by a period ("H.", "U.S.", "a.m.", "e.g.").
INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
WORD_DOT_WORD = re.compile(r"[A-Za-z]\.[A-Za-z]")  # "About.com", "U.S": a period inside a word
ALNUM = r"[^\W_]"


@dataclass(frozen=True)
class Detokenizer:
    """Rules for one dataset's tokenization; `detokenize` and `retokenize` are each other's inverse."""

    name: str
    # Tokens written without the space before them (closing punctuation, clitics) -> their text.
    attach_left: dict[str, str] = field(default_factory=dict)
    # Tokens written without the space after them (opening brackets, currency) -> their text.
    attach_right: dict[str, str] = field(default_factory=dict)
    # Tokens joined on both sides (WikiText's "@-@" -> "-") -> their text; `infix` gives the regex that finds them.
    infix: dict[str, str] = field(default_factory=dict)
    infix_pattern: str | None = None
    # Ambiguous quote tokens: the odd occurrences in a line open (attach right), the even ones close.
    quotes: tuple[str, ...] = ()
    # Standalone token substitutions, e.g. PTB's number token "N" -> "1".
    replace: dict[str, str] = field(default_factory=dict)
    # Tokens that join a run of themselves ("= =" -> "==" in WikiText headings).
    runs: tuple[str, ...] = ()

    # -- detokenize -------------------------------------------------------------------
    def detokenize(self, text: str) -> str:
        """Detokenize every line; line breaks are kept, leading and trailing spaces of a line dropped."""
        return "\n".join(self.detokenize_line(line) for line in text.split("\n"))

    def detokenize_line(self, line: str) -> str:
        tokens = line.split()
        chunks: list[tuple[list[str], str]] = []  # (original tokens, text) per whitespace-separated chunk
        open_quote = dict.fromkeys(self.quotes, False)
        previous_opens = False
        i = 0
        while i < len(tokens):
            token = tokens[i]
            # An infix token ("@-@") joins its two neighbours at once: "self @-@ produced" -> "self-produced".
            if chunks and token in self.infix and i + 1 < len(tokens):
                joined_tokens = chunks[-1][0] + [token, tokens[i + 1]]
                joined_text = chunks[-1][1] + self.infix[token] + self._text(tokens[i + 1])
                if self.segment(joined_text) == joined_tokens:
                    chunks[-1] = (joined_tokens, joined_text)
                    previous_opens = tokens[i + 1] in self.attach_right
                    i += 2
                    continue
            opens = closes = False
            if token in open_quote:
                opens = not open_quote[token]
                closes = not opens
                open_quote[token] = opens
            text = self._text(token)
            wants_join = bool(chunks) and (
                previous_opens
                or closes
                or token in self.attach_left
                or (token in self.runs and chunks[-1][0][-1] == token)
            )
            previous_opens = opens or token in self.attach_right
            i += 1
            if wants_join:
                joined_tokens = chunks[-1][0] + [token]
                joined_text = chunks[-1][1] + text
                if self.segment(joined_text) == joined_tokens:
                    chunks[-1] = (joined_tokens, joined_text)
                    continue
            chunks.append(([token], text))
        return " ".join(self._readable(tokens, text) for tokens, text in chunks)

    def _readable(self, tokens: list[str], text: str) -> str:
        """A lone token whose substitute would not read back (a quote with nothing to attach to) stays as written."""
        if len(tokens) == 1 and self.segment(text) != tokens:
            return tokens[0]
        return text

    def _text(self, token: str) -> str:
        for table in (self.attach_left, self.attach_right, self.infix, self.replace):
            if token in table:
                return table[token]
        return token

    # -- retokenize -------------------------------------------------------------------
    def retokenize(self, text: str) -> list[str]:
        """The original tokens of detokenized text."""
        return [token for chunk in text.split() for token in self.segment(chunk)]

    def count_tokens(self, lines: Iterable[str]) -> int:
        return sum(len(self.retokenize(line)) for line in lines)

    def segment(self, chunk: str) -> list[str]:
        """Split one whitespace-free chunk into the tokens it was joined from."""
        if not any(c.isalnum() for c in chunk):
            # Punctuation alone ("?!", "--", "...") is one token, except runs like "==" (WikiText headings).
            return self._split_run(chunk) or [self._inverse_replace(chunk)]
        head: list[str] = []
        tail: list[str] = []
        prefixes = self._prefix_texts
        suffixes = self._suffix_texts
        progress = True
        while progress:
            progress = False
            for text, token in prefixes:
                if chunk.startswith(text) and len(chunk) > len(text):
                    head.append(token)
                    chunk = chunk[len(text) :]
                    progress = True
                    break
        progress = True
        while progress:
            progress = False
            for text, token in suffixes:
                if chunk.endswith(text) and len(chunk) > len(text) and self._may_split_suffix(chunk, text):
                    tail.insert(0, token)
                    chunk = chunk[: -len(text)]
                    progress = True
                    break
        return head + self._split_core(chunk) + tail

    @cached_property
    def _prefix_texts(self) -> list[tuple[str, str]]:
        pairs = [(text, token) for token, text in self.attach_right.items()]
        pairs += [(self._text(q), q) for q in self.quotes]
        return sorted(pairs, key=lambda pair: -len(pair[0]))

    @cached_property
    def _suffix_texts(self) -> list[tuple[str, str]]:
        pairs = [(text, token) for token, text in self.attach_left.items()]
        pairs += [(self._text(q), q) for q in self.quotes]
        return sorted(pairs, key=lambda pair: -len(pair[0]))

    def _may_split_suffix(self, chunk: str, suffix: str) -> bool:
        stem = chunk[: -len(suffix)]
        if suffix == ".":
            # Abbreviations and initials own their period.
            return not (INITIALS.fullmatch(stem) or WORD_DOT_WORD.search(stem) or stem.lower() in ABBREVIATIONS)
        if suffix == "'":
            return stem.endswith(("s", "S"))  # plural possessive: "players'"
        if set(suffix) == {"."}:
            return not stem.endswith(".")
        return True

    def _split_run(self, chunk: str) -> list[str] | None:
        for token in self.runs:
            if len(chunk) > 1 and chunk == token * len(chunk):
                return [token] * len(chunk)
        return None

    def _inverse_replace(self, piece: str) -> str:
        return next((token for token, text in self.replace.items() if text == piece), piece)

    def _split_core(self, core: str) -> list[str]:
        if not self.infix_pattern:
            return [self._inverse_replace(core)]
        inverse = {text: token for token, text in self.infix.items()}
        # re.split with one capture group alternates pieces (even indices) and separators (odd indices).
        parts = re.split(self.infix_pattern, core)
        pieces = [inverse[part] if k % 2 else self._inverse_replace(part) for k, part in enumerate(parts)]
        return [piece for piece in pieces if piece]


CLOSING_PUNCTUATION = {p: p for p in (",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "...")}
# WikiText splits "don't" as "don 't"; PTB-style tokenizations split it as "do n't".
APOSTROPHE_CLITICS = {c: c for c in ("'s", "'m", "'ve", "'re", "'ll", "'d", "'S", "'M", "'VE", "'RE", "'LL", "'D")}
WIKITEXT_CLITICS = {**APOSTROPHE_CLITICS, "'t": "'t", "'T": "'T"}
PTB_CLITICS = {**APOSTROPHE_CLITICS, "n't": "n't", "N'T": "N'T"}

WIKITEXT = Detokenizer(
    name="wikitext",
    attach_left={**CLOSING_PUNCTUATION, **WIKITEXT_CLITICS, "'": "'"},
    attach_right={"(": "(", "[": "[", "{": "{", "$": "$", "£": "£", "#": "#"},
    infix={"@-@": "-", "@,@": ",", "@.@": "."},
    # "-" inside a word, "," and "." inside a number: the places WikiText marked with @-@, @,@, @.@.
    infix_pattern=rf"((?<={ALNUM})-(?={ALNUM})|(?<=\d)[,.](?=\d))",
    quotes=('"',),
    runs=("=",),
)

PTB = Detokenizer(
    name="ptb",
    attach_left={**PTB_CLITICS, "'": "'"},
    attach_right={"$": "$", "#": "#"},
    # Mikolov's PTB writes every number as N; no token is a bare "1" otherwise, so "1" reads back as N.
    replace={"N": "1"},
)

# LAMBADA's original files and CBT: PTB-style tokens with `` '' quotes, lowercased (LAMBADA) or cased (CBT).
PTB_QUOTES = Detokenizer(
    name="ptb-quotes",
    attach_left={**CLOSING_PUNCTUATION, **PTB_CLITICS, "'": "'", "''": '"'},
    attach_right={"(": "(", "[": "[", "``": '"', "$": "$", "#": "#"},
)

# The One Billion Word benchmark: news sentences with split punctuation and clitics.
LM1B = Detokenizer(
    name="lm1b",
    attach_left={**CLOSING_PUNCTUATION, **PTB_CLITICS, "'": "'"},
    attach_right={"(": "(", "[": "[", "$": "$", "£": "£", "#": "#"},
    quotes=('"',),
)
