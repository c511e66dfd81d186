"""Offline language identification: langid.py's model as py3langid bundles it (the WebText build and the
demonstrations finder use the same one)."""

from __future__ import annotations

import functools

MAX_CHARS = 20_000  # langid's accuracy does not improve past a few thousand characters


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the text's language."""
    language, probability = _identifier().classify(text[:MAX_CHARS])
    return language, float(probability)


def probability_of(text: str, language: str) -> float:
    """The probability that the text is in `language`."""
    return float(dict(_identifier().rank(text[:MAX_CHARS])).get(language, 0.0))
