"""`gpt2kit demo`: a short offline tour of what works so far.

Generates a small seeded text, trains a BPE on it, builds a CPU preset sized
to that vocabulary, saves it in the HF layout and loads it back.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from gpt2kit.checkpoint import load, save
from gpt2kit.model import GPT, preset_config
from gpt2kit.tokenizer import train

SUBJECTS = ["the river", "a merchant", "the old town", "every sailor", "the council", "my neighbour"]
VERBS = ["crossed", "remembered", "sold", "painted", "visited", "counted"]
OBJECTS = ["the bridge", "forty lanterns", "a blue boat", "the northern market", "three letters", "the harbour"]


def generated_text(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    sentences = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(n_sentences)]
    return "\n".join(" ".join(sentences[i : i + 5]).capitalize() for i in range(0, n_sentences, 5)) + "\n"


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> list[str]:
    """Run the tour, writing under `out`; returns the lines of its summary."""
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text(generated_text(2000 if quick else 20000, seed))
    tokenizer = train([corpus], vocab_size=512)
    tokenizer.save(out / "tokenizer")
    torch.manual_seed(seed)
    model = GPT(preset_config("cpu-1m", vocab_size=tokenizer.vocab_size))
    save(model, tokenizer, out / "model")
    reloaded = load(out / "model")
    sample = "The river crossed the bridge."
    ids = tokenizer.encode(sample)
    with torch.no_grad():
        logits = reloaded.model(torch.tensor([ids]))
    return [
        f"corpus: {corpus} ({corpus.stat().st_size:,} bytes)",
        f"tokenizer: {tokenizer.vocab_size} tokens; {sample!r} -> {len(ids)} tokens, {len(sample.encode()) / len(ids):.2f} bytes/token",
        f"model: cpu-1m, {model.num_parameters():,} parameters, saved to {out / 'model'} and reloaded",
        f"logits: {tuple(logits.shape)}",
    ]
