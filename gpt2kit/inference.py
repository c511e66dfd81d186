"""Inference-only transforms, applied from outside the model: the decode weight layout and int8 weights.

Decoding one token reads every weight once, so batch-1 speed on CPU is memory bandwidth. Two levers:
- `apply_decode_layout` stores the matrices whose longer side is their output input-major, which MKL's
  matrix-vector kernel streams faster (measured below);
- `quantize(model, "int8")` replaces every block linear and the output layer with fbgemm's dynamic int8
  linear (PyTorch's `torch.ao` dynamic quantization): weights int8, symmetric, one scale per output channel;
  activations stay fp32 between layers and are quantized per call inside the kernel. A quarter of the bytes.
A quantized model is for inference: it refuses a loss with targets, and `save`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT

QUANTIZATIONS = ("int8",)


def apply_decode_layout(model: GPT) -> None:
    """Store `attn.c_attn`, `mlp.c_fc` and the output layer input-major on CPU; shapes, names, values unchanged.

    On CPU MKL streams a matrix-vector product fastest when the weight's longer side is contiguous: nn.Linear
    keeps (out, in) rows, which suits the narrowing `c_proj`s but not the widening `c_attn`, `c_fc` and the
    (50257, 768) output layer. Measured on gpt2 (124M), 2 threads, batch 1: the output layer 12.8 -> 7.3 ms,
    the whole token 46 -> 43 ms (c_attn and c_fc were done before: 40 -> 33 ms then). A tied output layer is
    wte, whose rows the embedding then gathers with a stride: one row per token, nothing to measure.
    The strides persist, so this runs once per model; a caller that owns the model decides (`sample`,
    `serve` and `eval` apply it, `generate` does not). Training is unaffected but does not need it.
    """
    weights = [m.weight for n, m in model.named_modules() if n.endswith(("attn.c_attn", "mlp.c_fc"))]
    if model.output_layer is None:
        weights.append(model.output_weight)
    for weight in weights:
        if isinstance(weight, nn.Parameter) and weight.device.type == "cpu" and weight.is_contiguous():
            weight.data = weight.data.t().contiguous().t()


def quantize(model: GPT, kind: str) -> GPT:
    """Quantize `model` in place for inference (`kind`: int8); returns it."""
    if kind not in QUANTIZATIONS:
        raise GPT2KitError(f"quantize: {kind!r} is not supported (choose one of: {', '.join(QUANTIZATIONS)})")
    if model.quantization is not None:
        raise GPT2KitError(f"the model is already quantized ({model.quantization})")
    if model.wte.weight.device.type != "cpu":
        raise GPT2KitError("int8 quantization runs on CPU (fbgemm); load the model with device cpu")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    head = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
    head.weight = nn.Parameter(model.output_weight.detach(), requires_grad=False)
    with warnings.catch_warnings():  # torch.ao's notice that torchao is its successor; fbgemm's kernel stays
        warnings.simplefilter("ignore")
        quantize_dynamic(model.h, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
        holder = nn.Sequential(head)
        quantize_dynamic(holder, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    model.output_layer = holder[0]
    if not model.config.tie_word_embeddings:
        del model.lm_head  # its int8 copy is the output layer now
    model.quantization = kind
    return model
