"""GGUF for llama.cpp's GPT-2 architecture, written with the `gguf` package.

Tensor names and metadata are those llama.cpp's own converter gives GPT-2 (arch `gpt2`,
`token_embd`, `position_embd`, `blk.N.attn_qkv`, ..., `output`), weights [out, in], and the
tokenizer embedded as llama.cpp's BPE (`tokenizer.ggml.model = gpt2`, pre-tokenizer `gpt-2`,
the byte-level token strings, merges in rank order), so llama.cpp runs the file without its
converter. The token list has one entry per output row; rows that are no token are UNUSED.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from gpt2kit.formats.base import CheckpointError, require
from gpt2kit.model import GPT, TANH_GELUS, check_output_rows
from gpt2kit.tokenizer import Tokenizer, token_to_str

# gpt2kit's name -> llama.cpp's, per block and outside the blocks.
BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
TOP_NAMES = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm", "lm_head": "output"}


def gguf_name(name: str) -> str:
    module, kind = name.rsplit(".", 1)
    if module.startswith("h."):
        _, layer, part = module.split(".", 2)
        return f"blk.{layer}.{BLOCK_NAMES[part]}.{kind}"
    return f"{TOP_NAMES[module]}.{kind}"


def vocabulary(tokenizer: Tokenizer, rows: int) -> tuple[list[str], list[int]]:
    """Token strings and types for `rows` output rows, in id order."""
    import gguf

    tokens = [f"[PAD{i}]" for i in range(rows)]
    types = [int(gguf.TokenType.UNUSED)] * rows
    for token, token_id in tokenizer.token_ids.items():
        tokens[token_id], types[token_id] = token_to_str(token), int(gguf.TokenType.NORMAL)
    for text, token_id in tokenizer.added_tokens.items():
        tokens[token_id], types[token_id] = text, int(gguf.TokenType.USER_DEFINED)
    for text, token_id in tokenizer.special_tokens.items():
        tokens[token_id], types[token_id] = text, int(gguf.TokenType.CONTROL)
    return tokens, types


def write(model: GPT, tokenizer: Tokenizer, path: Path, dtype: str = "f32") -> list[str]:
    try:
        import gguf
    except ImportError:
        raise CheckpointError("writing GGUF needs the gguf package: pip install 'gpt2kit[interop]'") from None
    config = model.config
    require(config, "llama.cpp's GPT-2", str(path), activation_function=TANH_GELUS, scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False)  # fmt: skip
    if dtype not in ("f32", "f16"):
        raise CheckpointError(f"{path}: GGUF is written as f32 or f16, not {dtype!r}")
    check_output_rows(config, tokenizer.vocab_size, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "gpt2")
        writer.add_name(path.stem)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.mlp_width)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        tokens, types = vocabulary(tokenizer, config.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges([f"{token_to_str(a)} {token_to_str(b)}" for a, b in tokenizer.merges()])
        if tokenizer.eot_text is not None:
            writer.add_bos_token_id(tokenizer.eot_token)
            writer.add_eos_token_id(tokenizer.eot_token)
        state = {name: t.detach().cpu().float() for name, t in model.state_dict().items()}
        state["lm_head.weight"] = model.output_weight.detach().cpu().float()  # llama.cpp's `output`, tied or not
        for name, tensor in state.items():
            array = tensor.numpy()
            # As llama.cpp's converter does: matrices in the file's type, vectors (norms, biases) in f32.
            if dtype == "f16" and array.ndim == 2:
                array = array.astype(np.float16)
            writer.add_tensor(gguf_name(name), array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the temporary, not the result
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return []
