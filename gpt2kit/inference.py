"""Inference-only transforms, applied from outside the model: a C decoding step, int8 and int4 weights.

Decoding one token reads every weight once, so on CPU its speed is memory bandwidth plus whatever else runs per
token. What was measured on gpt2 (124M), 2 threads, Zen 5, batch 1, before writing kernels of our own:
- fp32: MKL's matrix-vector product behind nn.Linear streams the 768 x 50257 output layer at 10.9 GB/s, oneDNN's
  linear with its weight reordered once (`torch.ops.mkldnn`) at 21.7, Inductor's compiled `(w * x).sum(1)` at 19.2,
  while two threads stream memory at 25-40 GB/s (it varies by the hour on this shared host). Even at oneDNN's rate,
  the operators between the matmuls cost 8 ms of a 30 ms step in eager PyTorch (the flash-attention kernel alone
  1.9 ms for one query), where llama.cpp's whole step is 15-20 ms;
- int8 and int4: PyTorch's weight-only kernels `torch._weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`
  (what torchao's CPU layouts call) read the output layer at 1.8 and 0.5 GB/s with fp32 activations and 9.0 and
  9.6 with bf16 ones; fbgemm's dynamic int8 linear (torch.ao) decoded at 77-87 tokens/s, tinygemm's int4 at 92-95,
  against llama.cpp's q8_0 at 123-143 and q4_0 at 163-215 in the same runs.
None of them reaches the bandwidth, and the per-operator cost alone rules out llama.cpp's speed. So gpt2kit/kernels
holds C kernels of our own:
- linears that stream each weight row once for every row of the batch (fp32, int8, int4);
- a whole single-token step (`gpt2_decode_step`), called once per token.

A row-streaming fp32 kernel, prefetching 4 KB ahead, reads the output layer at 53-55 GB/s where a plain C sum over
the same memory reads 56-61. With VNNI, int8 and int4 multiply in integers (activations quantized per row):
converting every weight to fp32 had made them compute-bound, at 26 and 15 weights/ns a core. The weights live in
2 MB pages (`device.huge_page_copy`): 4 KB pages cost a quarter of the streaming rate in TLB misses. Each thread
takes one contiguous half of a matrix's rows (dynamic chunks of 64 rows had cost 20-30% at batch 1). Quantized
models keep their keys and values in fp16, as llama.cpp does (5% of a 16-row step at 128 positions); fp32 models
keep fp32 caches, and transformers' tokens. With the whole step in C, `bench/generate.py` (batch 1, alone, best of
3, decoding timed apart from the prompt as llama-bench does) measured 70.2 fp32, 235.5 int8 and 253.0 int4
tokens/s, against llama.cpp's f32 53.5, q8_0 172.0 and q4_0 241.1 in the same run.

- `prepare_for_decoding(model)` gives a CPU model its `decode_step` (`DecodeStep`), which `gpt2kit.generate` uses
  for every single-token step; prompts and scoring keep PyTorch's batched matmuls. Without a C compiler the fp32
  linears fall back to oneDNN-packed weights (`PackedLinear`), and decoding stays in PyTorch;
- `quantize(model, "int8")`: int8 weights, symmetric, one fp32 scale per output row;
- `quantize(model, "int4")`: 4-bit weights in groups of 32 with a bf16 scale and offset each (w = q x scale +
  offset, q in 0..15), 0.625 bytes a weight against q4_0's 0.5625.
Quantized linears run the C kernels (at any number of rows with VNNI; otherwise for a few rows, and for a prompt
or a scored window they dequantize their weight for PyTorch's matmul). Either way the model is for inference only:
it refuses a training loss and `save`. The tied embedding stays an fp32 table for lookups.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit import kernels
from gpt2kit.device import huge_page_copy
from gpt2kit.errors import GPT2KitError
from gpt2kit.model import GPT, TANH_GELUS, KVCache

QUANTIZATIONS = ("int8", "int4")
INT4_GROUP = 32  # weights per scale and offset, as llama.cpp's q4_0
# Where the kernels multiply in integers (AVX-512 VNNI), quantized linears run them at any number of rows: at 16 to
# 1024 rows they took 0.2-0.8x the time of dequantizing for PyTorch's matmul (gpt2's MLP matrices, 2 threads).
# Otherwise only up to this many rows; more (a prompt, a scored window) dequantize the weight once for the matmul.
KERNEL_ROWS = 16
# An fp32 linear runs the C kernel up to this many rows: at 32 and 64 rows it computed 1.05-1.35x MKL's rate on
# gpt2's MLP matrices, at 128 rows 0.94-0.96x.
FP32_KERNEL_ROWS = 64
STEP_ACTIVATIONS = {
    **dict.fromkeys(TANH_GELUS, "gelu_tanh"),
    **dict.fromkeys(("gelu", "gelu_python"), "gelu_erf"),
    "relu": "relu",
}


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class PackedLinear(nn.Module):
    """An fp32 linear for inference whose weight oneDNN reordered into its own layout, once (the fallback when
    the C kernels cannot be built)."""

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


class KernelLinear(nn.Module):
    """An fp32 linear on the C kernel for up to FP32_KERNEL_ROWS rows (decoding steps, short prompts), PyTorch's
    matmul above. It holds the model's own weight tensor: no copy."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight.detach().contiguous()
        self.bias = None if bias is None else bias.detach().contiguous()
        self.spec = kernels.Linear(
            kernels.KIND_F32,
            self.in_features,
            self.out_features,
            _address(self.weight),
            None,
            None,
            _address(self.bias),
            None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        lib = kernels.library()
        if lib is None or rows.shape[0] > FP32_KERNEL_ROWS or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        rows = rows.contiguous()
        y = torch.empty(rows.shape[0], self.out_features)
        lib.gpt2_linear(ctypes.byref(self.spec), rows.data_ptr(), rows.shape[0], y.data_ptr())
        return y.view(*x.shape[:-1], self.out_features)


def _bf16_bits(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.bfloat16).view(torch.int16)


def _pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(out, groups, 32) values 0..15 -> the kernels' bytes: a pair of groups in 32 bytes (the first group's weight
    j in byte j's low nibble, the second's in its high nibble), an odd last group alone in the low nibbles."""
    pairs = q.shape[1] // 2
    paired = q[:, : 2 * pairs].reshape(q.shape[0], pairs, 2, INT4_GROUP)
    packed = paired[:, :, 0] | (paired[:, :, 1] << 4)
    if q.shape[1] % 2:
        packed = torch.cat([packed, q[:, -1:]], 1)
    return packed.reshape(q.shape[0], -1).contiguous()


def _unpack_int4(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """`_pack_int4` undone: (out, groups, 32) values 0..15."""
    chunks = packed.reshape(packed.shape[0], -1, INT4_GROUP)
    pairs = torch.stack([chunks[:, : groups // 2] & 15, chunks[:, : groups // 2] >> 4], 2)
    q = pairs.reshape(packed.shape[0], -1, INT4_GROUP)
    return torch.cat([q, chunks[:, groups // 2 :]], 1) if groups % 2 else q


class QuantizedLinear(nn.Module):
    """A linear with int8 or int4 weights in the C kernels' formats (gpt2kit/kernels/cpu_decode.c), for inference.

    int8: `weight` int8 (out, in), `scale` fp32 (out,): w = q x scale, symmetric per output row.
    int4: `weight` uint8 (see `_pack_int4`), `scale` and `offset` bf16 bits (out, in / 32): w = q x scale + offset
    per group of 32 inputs, asymmetric.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str):
        super().__init__()
        self.kind = kind
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        self.offset = self.row_sums = None
        if kind == "int8":
            self.scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
            self.weight = (w / self.scale[:, None]).round().clamp(-127, 127).to(torch.int8)
            self.row_sums = self.weight.sum(1, dtype=torch.int32)
            code = kernels.KIND_INT8
        else:
            groups = w.reshape(self.out_features, -1, INT4_GROUP)
            low, high = groups.amin(2), groups.amax(2)
            # q is computed against the stored (bf16-rounded) scale and offset, so that dequantizing is exact
            scale = _bf16_bits((high - low).clamp(min=1e-6) / 15)
            offset = _bf16_bits(low)
            scale_f, offset_f = scale.view(torch.bfloat16).float(), offset.view(torch.bfloat16).float()
            q = groups.sub(offset_f[..., None]).div(scale_f[..., None]).round().clamp(0, 15).to(torch.uint8)
            self.weight = _pack_int4(q)
            self.scale, self.offset = scale, offset
            code = kernels.KIND_INT4
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.weight = huge_page_copy(self.weight)
        self.spec = kernels.Linear(
            code,
            self.in_features,
            self.out_features,
            _address(self.weight),
            _address(self.scale),
            _address(self.offset),
            _address(self.bias),
            _address(self.row_sums),
        )

    def dequantized(self) -> torch.Tensor:
        """The weight in fp32 (out, in)."""
        lib = kernels.library()
        if lib is not None:
            out = torch.empty(self.out_features, self.in_features)
            lib.gpt2_dequantize(ctypes.byref(self.spec), out.data_ptr())
            return out
        if self.kind == "int8":
            return self.weight.float() * self.scale[:, None]
        q = _unpack_int4(self.weight, self.in_features // INT4_GROUP)
        scale = self.scale.view(torch.bfloat16).float()[..., None]
        offset = self.offset.view(torch.bfloat16).float()[..., None]
        return (q.float() * scale + offset).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        lib = kernels.library()
        if lib is None or (rows.shape[0] > KERNEL_ROWS and not lib.gpt2_integer_dots()):
            y = F.linear(rows, self.dequantized(), self.bias)
        else:
            y = torch.empty(rows.shape[0], self.out_features)
            lib.gpt2_linear(ctypes.byref(self.spec), rows.data_ptr(), rows.shape[0], y.data_ptr())
        return y.view(*x.shape[:-1], self.out_features)


class DecodeStep:
    """One new token for every row of a batch, through the whole model in one C call (`gpt2_decode_step`).

    Called as `step(tokens, cache, attention_mask)` in place of `model(tokens[:, None], kv_cache=cache,
    attention_mask=attention_mask)[:, -1]`: the same keys and values go into the cache, and it returns the
    (rows, vocab_size) logits. It reads the model's own weight tensors, so it costs no memory of its own.
    """

    def __init__(self, model: GPT, lib: ctypes.CDLL):
        config = model.config
        self.model, self.lib = model, lib
        self.half_caches = bool(lib.gpt2_half_caches())  # fp16 keys and values (F16C)
        head = model.output_layer  # a KernelLinear or QuantizedLinear, as every block linear
        # Parameters the C structure below points at besides the linears' (which their modules hold): checked
        # before every call, since moving the model (`.to`, `load_state_dict(assign=True)`) would free them.
        self._addresses = [(p, p.data_ptr()) for p in model.parameters()]
        layers = (kernels.Layer * config.n_layer)()
        for i, block in enumerate(model.h):
            layers[i] = kernels.Layer(
                _address(block.ln_1.weight),
                _address(block.ln_1.bias),
                block.attn.c_attn.spec,
                block.attn.c_proj.spec,
                _address(block.ln_2.weight),
                _address(block.ln_2.bias),
                block.mlp.c_fc.spec,
                block.mlp.c_proj.spec,
                block.attn.scale,
            )
        self._layers = layers
        self.spec = kernels.Model(
            config.n_layer,
            config.n_head,
            config.n_embd,
            config.mlp_width,
            kernels.ACTIVATIONS[STEP_ACTIVATIONS[config.activation_function]],
            config.layer_norm_epsilon,
            _address(model.wte.weight),
            _address(model.wpe.weight),
            _address(model.ln_f.weight),
            _address(model.ln_f.bias),
            head.spec,
            layers,
        )
        self.vocab_rows = head.out_features

    @staticmethod
    def supports(model: GPT) -> bool:
        weights = [model.wte.weight, model.wpe.weight] + [p for p in model.h.parameters()]
        return (
            model.config.activation_function in STEP_ACTIVATIONS
            and model.config.n_embd % model.config.n_head == 0
            and all(w.device.type == "cpu" and w.dtype == torch.float32 and w.is_contiguous() for w in weights)
        )

    def __call__(self, tokens: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor | None) -> torch.Tensor:
        rows, length = tokens.shape[0], cache.length
        keys, values = cache.keys, cache.values
        if not (
            keys.dtype == values.dtype
            and (keys.dtype == torch.float32 or (keys.dtype == torch.float16 and self.half_caches))
            and keys.stride() == values.stride()
            and keys.stride(4) == 1
            and keys.shape[1] == rows
        ):
            return self.model(tokens[:, None], kv_cache=cache, attention_mask=attention_mask)[:, -1]
        if length + 1 > cache.max_length:
            raise GPT2KitError(f"KV cache is full: {length + 1} positions requested, {cache.max_length} allocated")
        if any(parameter.data_ptr() != address for parameter, address in self._addresses):
            raise GPT2KitError("the model's weights moved after prepare_for_decoding; load and prepare it again")
        if attention_mask is None:
            positions = torch.full((rows,), length, dtype=torch.long)
            mask_address, mask_stride = None, 0
        else:
            if attention_mask.shape[0] != rows or attention_mask.shape[1] < length + 1:
                raise GPT2KitError(
                    f"attention_mask {tuple(attention_mask.shape)} does not cover {rows} rows and {length + 1} positions"
                )
            attention_mask = attention_mask.to(torch.long)
            if attention_mask.stride(1) != 1:
                attention_mask = attention_mask.contiguous()
            positions = (attention_mask[:, : length + 1].sum(1) - 1).clamp(min=0)  # as GPT.hidden counts them
            mask_address, mask_stride = attention_mask.data_ptr(), attention_mask.stride(0)
        if int(positions.max()) >= self.model.config.n_positions:
            raise GPT2KitError(
                f"sequence of {int(positions.max()) + 1} tokens exceeds the context of {self.model.config.n_positions}"
            )
        tokens = tokens.to(torch.long).contiguous()
        if rows and (int(tokens.min()) < 0 or int(tokens.max()) >= self.model.config.vocab_size):
            raise GPT2KitError(f"token ids must be in 0..{self.model.config.vocab_size - 1}")
        strides = torch.tensor(keys.stride()[:4], dtype=torch.long)
        logits = torch.empty(rows, self.vocab_rows)
        self.lib.gpt2_decode_step(
            ctypes.byref(self.spec),
            rows,
            tokens.data_ptr(),
            positions.data_ptr(),
            mask_address,
            mask_stride,
            keys.data_ptr(),
            values.data_ptr(),
            int(keys.dtype == torch.float16),
            strides.data_ptr(),
            length,
            logits.data_ptr(),
        )
        cache.advance(1)
        if self.model.masked_token_ids is not None:
            logits.index_fill_(-1, self.model.masked_token_ids, float("-inf"))
        return logits


def _replace_linears(model: GPT, make_linear, form: str) -> GPT:
    """Swap every block linear and the output layer for `make_linear(weight, bias)`; the model becomes `form`."""
    model.inference_parameters = model.num_parameters()  # the new modules hold their weights as plain tensors
    with torch.no_grad():
        for block in model.h:
            for parent in (block.attn, block.mlp):
                for name in ("c_attn", "c_fc", "c_proj"):
                    linear = getattr(parent, name, None)
                    if isinstance(linear, nn.Linear):
                        setattr(parent, name, make_linear(linear.weight, linear.bias))
        model.output_layer = make_linear(model.output_weight, None)
    if not model.config.tie_word_embeddings:
        del model.lm_head  # its copy is the output layer now
    model.inference_form = form
    return model


def prepare_for_decoding(model: GPT) -> GPT:
    """Make a CPU model fast at decoding, in place (see the module notes); returns it. GPU models are left as
    they are: there nn.Linear is what cuBLAS wants."""
    if model.wte.weight.device.type != "cpu" or model.decode_step is not None or model.inference_form == "fp32-packed":
        return model
    lib = kernels.library()
    if lib is not None and DecodeStep.supports(model):
        if model.inference_form is None:
            with torch.no_grad():  # the weights decoding streams, wte's too when it is the output layer
                for parameter in model.parameters():
                    parameter.data = huge_page_copy(parameter.data)
            _replace_linears(model, KernelLinear, "fp32-decoding")
        elif model.inference_form in QUANTIZATIONS and lib.gpt2_half_caches():
            # Already approximate: keys and values in fp16 halve the attention's reads, as in llama.cpp (fp32
            # models keep fp32 caches, and transformers' tokens)
            model.kv_cache_dtype = torch.float16
        model.decode_step = DecodeStep(model, lib)
        return model
    if (
        model.inference_form is None
        and model.wte.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
    ):
        return _replace_linears(model, PackedLinear, "fp32-packed")
    return model


def quantize(model: GPT, kind: str) -> GPT:
    """Quantize `model` in place for inference (`kind`: int8 or int4); returns it."""
    if kind not in QUANTIZATIONS:
        raise GPT2KitError(f"quantize: {kind!r} is not supported (choose one of: {', '.join(QUANTIZATIONS)})")
    if model.inference_form is not None:
        raise GPT2KitError(f"the model is already prepared for inference ({model.inference_form})")
    if model.wte.weight.device.type != "cpu":
        raise GPT2KitError(f"{kind} quantization runs on CPU; load the model with device cpu")
    if kind == "int4" and (model.config.n_embd % INT4_GROUP or model.config.mlp_width % INT4_GROUP):
        raise GPT2KitError(f"int4 quantization needs widths (n_embd, the MLP's) divisible by {INT4_GROUP}")
    return _replace_linears(model, lambda weight, bias: QuantizedLinear(weight, bias, kind), kind)
