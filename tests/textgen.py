"""Test helper: seeded sentences, for tests that need a little text to train a tokenizer or a model on."""

from __future__ import annotations

import random


def generated_text(n_sentences: int, seed: int) -> str:
    """Simple seeded sentences, for tests that need a little text to train a tokenizer on."""
    rng = random.Random(seed)
    subjects = ["the river", "a merchant", "the old town", "every sailor", "the council", "my neighbour"]
    verbs = ["crossed", "remembered", "sold", "painted", "visited", "counted"]
    objects = ["the bridge", "forty lanterns", "a blue boat", "the northern market", "three letters", "the harbour"]
    sentences = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n_sentences)]
    return "\n".join(" ".join(sentences[i : i + 5]).capitalize() for i in range(0, n_sentences, 5)) + "\n"
