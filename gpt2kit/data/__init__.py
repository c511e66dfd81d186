"""Corpus to token shards (`prepare`), the shard format (`shards`) and the training loader (`loader`)."""

from gpt2kit.data.loader import TokenWindows, WindowLoader, eval_indices
from gpt2kit.data.prepare import PrepareError, PrepareResult, prepare
from gpt2kit.data.shards import Manifest, ShardError, load_manifest, open_tokens, read_header, write_shard

__all__ = [
    "Manifest",
    "PrepareError",
    "PrepareResult",
    "ShardError",
    "TokenWindows",
    "WindowLoader",
    "eval_indices",
    "load_manifest",
    "open_tokens",
    "prepare",
    "read_header",
    "write_shard",
]
