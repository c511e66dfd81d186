"""Inference-only transforms, applied from outside the model: packed fp32 weights, int8 and int4 weights.

Decoding one token reads every weight once, so on CPU decoding speed is memory bandwidth, and at small
batches it is also how well the matmul kernel handles a handful of rows. Both transforms swap every block
linear and the output layer for a kernel PyTorch ships:
- `prepare_for_decoding(model)` (fp32): oneDNN's linear with its weight reordered once into oneDNN's own blocked
  layout (`torch.ops.mkldnn`). MKL's matrix-vector product behind nn.Linear streams weights at a fraction of the
  memory bandwidth on the AMD CPUs this project runs on. Measured on gpt2 (124M), 2 threads, Zen 5, greedy batch 1:
  the 768 x 50257 output layer alone 7.1 ms packed against 14.2 ms (21.7 against 10.9 GB/s), whole decoding
  31.5-39.4 against 16.2-20.4 tokens/s (two runs each); batch 8 1.34x (an older machine). Candidates measured
  so far: PyTorch's built-in weight-only kernels `torch._weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`
  read the output layer at 1.8 and 0.5 GB/s with fp32 activations, but 9.0 and 9.6 GB/s with bf16 ones (a 4-bit
  prototype on the latter decoded gpt2 at 106 tokens/s at batch 1; not built yet); Inductor's compiled fp32
  `(w * x).sum(1)` read it at 19.2 GB/s, no better than oneDNN;
- `quantize(model, "int8")`: fbgemm's dynamic int8 linear (PyTorch's `torch.ao` dynamic quantization):
  weights int8, symmetric, one scale per output channel; activations fp32 between layers, quantized per
  call inside the kernel. A quarter of the bytes: 81.5 tokens/s at batch 1 in the run above, 2-4x fp32;
- `quantize(model, "int4")`: PyTorch's tinygemm CPU kernel (`_weight_int4pack_mm_for_cpu`, what torchao's CPU
  int4 layout calls, without torchao's tensor-subclass dispatch): 4-bit weights in groups of 32 with a bf16 scale
  and zero each, bf16 activations into the kernel. 91.7 tokens/s at batch 1 on gpt2 (int8 77.0 in the same run).
Either way the model is for inference only: it refuses a training loss and `save`. The tied embedding
stays an fp32 table for lookups.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT

QUANTIZATIONS = ("int8", "int4")
INT4_GROUP = 32  # weights per scale and zero: 32 as llama.cpp's q4_0; 128 measured 5% slower here, not faster


class PackedLinear(nn.Module):
    """An fp32 linear for inference whose weight oneDNN reordered into its own layout, once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        # The batch-size hint only tunes the layout: 1 (decoding) measured best at batch 1 and 8 alike.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 1)
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """A linear with 4-bit weights for inference: PyTorch's tinygemm CPU kernel (`_weight_int4pack_mm_for_cpu`).

    Weights are quantized per group of INT4_GROUP inputs, asymmetric (a bf16 scale and zero per group:
    w = (q - 8) x scale + zero), with the output rows padded to the kernel's multiple of 16. Activations enter the
    kernel in bf16, which it needs to be fast (9.6 GB/s of 4-bit weights against 0.5 with fp32 here), and leave
    it in fp32.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        rows = -(-self.out_features // 16) * 16
        w = weight.detach().float()
        if rows != self.out_features:
            w = torch.cat([w, w.new_zeros(rows - self.out_features, self.in_features)])
        groups = w.reshape(-1, INT4_GROUP)
        low, high = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
        scales = (high - low).clamp(min=1e-6) / 15
        zeros = low + 8 * scales
        q = groups.sub(low).div(scales).round().clamp(0, 15).to(torch.int32).reshape(rows, self.in_features)
        self.packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        scales_and_zeros = torch.stack([scales.reshape(rows, -1), zeros.reshape(rows, -1)], 2)
        self.scales_and_zeros = scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, INT4_GROUP, self.scales_and_zeros)
        y = y[:, : self.out_features].float()
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], self.out_features)


def _replace_linears(model: GPT, linear_kind, form: str) -> GPT:
    """Swap every block linear and the output layer for `linear_kind(weight, bias)`; the model becomes `form`."""
    with torch.no_grad():
        for block in model.h:
            for parent in (block.attn, block.mlp):
                for name in ("c_attn", "c_fc", "c_proj"):
                    linear = getattr(parent, name, None)
                    if isinstance(linear, nn.Linear):
                        setattr(parent, name, linear_kind(linear.weight, linear.bias))
        model.output_layer = linear_kind(model.output_weight, None)
    if not model.config.tie_word_embeddings:
        del model.lm_head  # its copy is the output layer now
    model.inference_form = form
    return model


def _packable(model: GPT) -> bool:
    return (
        model.inference_form is None
        and model.wte.weight.device.type == "cpu"
        and model.wte.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
    )


def prepare_for_decoding(model: GPT) -> GPT:
    """Give an fp32 CPU model oneDNN-packed linears, in place (see the module notes); returns it. Other models are
    left as they are: int8 ones already have their kernels, and on GPUs nn.Linear is what cuBLAS wants."""
    if not _packable(model):
        return model
    return _replace_linears(model, PackedLinear, "fp32-packed")


def quantize(model: GPT, kind: str) -> GPT:
    """Quantize `model` in place for inference (`kind`: int8 or int4); returns it."""
    if kind not in QUANTIZATIONS:
        raise GPT2KitError(f"quantize: {kind!r} is not supported (choose one of: {', '.join(QUANTIZATIONS)})")
    if model.inference_form is not None:
        raise GPT2KitError(f"the model is already prepared for inference ({model.inference_form})")
    if model.wte.weight.device.type != "cpu":
        raise GPT2KitError(f"{kind} quantization runs on CPU; load the model with device cpu")
    if kind == "int4":
        if model.config.n_embd % INT4_GROUP:
            raise GPT2KitError(f"int4 quantization needs a width (n_embd) divisible by {INT4_GROUP}")
        return _replace_linears(model, Int4Linear, kind)
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
    model.inference_form = kind
    return model
