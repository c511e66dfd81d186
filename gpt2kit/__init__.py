"""gpt2kit: GPT-2 from the paper to software: data, BPE, model, training, sampling, serving, zero-shot eval."""

from gpt2kit.checkpoint import LoadedModel, load, save
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT, PRESETS, GPTConfig, KVCache, preset_config
from gpt2kit.tokenizer import Tokenizer, load_tokenizer

__version__ = "0.1.0"
__all__ = [
    "GPT",
    "PRESETS",
    "GPT2KitError",
    "GPTConfig",
    "KVCache",
    "LoadedModel",
    "Tokenizer",
    "load",
    "load_tokenizer",
    "preset_config",
    "save",
]
