"""The GPT-2 Transformer, read top to bottom: config, attention, MLP, block, GPT.

Parameter names follow the released GPT-2 checkpoints (wte, wpe, h.N.ln_1,
attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f) so that checkpoints
map one to one. Linear layers are nn.Linear ([out, in]); checkpoint.py
transposes to and from HF's Conv1D ([in, out]) layout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gpt2kit.config import Checked
from gpt2kit.errors import GPT2KitError


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _laplace(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0))))


# transformers' names for GELU's tanh approximation, the one GPT-2 (and llm.c and llama.cpp) computes.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", "gelu_python_tanh")
# The MLP activations transformers' GPT2MLP accepts by name (ACT2FN), less the two with weights of their own.
# GPT-2 itself uses the tanh approximation of GELU; nanoGPT uses the exact one ("gelu").
ACTIVATIONS = {
    **dict.fromkeys(TANH_GELUS, _tanh_gelu),
    **dict.fromkeys(("gelu", "gelu_python"), F.gelu),
    "gelu_10": lambda x: F.gelu(x).clamp(-10, 10),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "linear": lambda x: x,
    "laplace": _laplace,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
}


@dataclass
class GPTConfig(Checked):
    vocab_size: int = 50257
    n_positions: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # MLP width; None means 4 * n_embd, as in GPT-2
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True  # the output layer is wte; False gives it its own weight, lm_head
    scale_attn_weights: bool = True  # attention logits / sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and / (layer index + 1), as some GPT-2 variants do

    def __post_init__(self) -> None:
        self.check("model config")

    def problems(self) -> list[str]:
        sizes = ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd")
        bad = [f"{name} must be a positive integer, got {getattr(self, name)!r}" for name in sizes
               if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0)]  # fmt: skip
        if not bad and self.n_embd % self.n_head:
            bad.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_inner is not None and not (isinstance(self.n_inner, int) and self.n_inner > 0):
            bad.append(f"n_inner must be a positive integer or null, got {self.n_inner!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            bad.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.layer_norm_epsilon, (int, float)) and self.layer_norm_epsilon > 0):
            bad.append(f"layer_norm_epsilon must be a positive number, got {self.layer_norm_epsilon!r}")
        if self.activation_function not in ACTIVATIONS:
            bad.append(
                f"activation_function {self.activation_function!r} is not supported (one of: {', '.join(ACTIVATIONS)})"
            )
        for name in ("tie_word_embeddings", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"):
            if not isinstance(getattr(self, name), bool):
                bad.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        return bad

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)


def check_output_rows(config: GPTConfig, tokenizer_size: int, where: str) -> None:
    """A tokenizer must have no more tokens than the model has output rows (it may have fewer: padding)."""
    if tokenizer_size > config.vocab_size:
        raise GPT2KitError(
            f"{where}: the tokenizer has {tokenizer_size} tokens but the model's vocab_size is {config.vocab_size}"
        )


# The four released GPT-2 sizes, plus CPU-sized models that train in minutes on 2 cores.
# CPU preset names give their approximate non-embedding parameter count.
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "cpu-25k": dict(n_layer=2, n_head=2, n_embd=32, n_positions=256),
    "cpu-100k": dict(n_layer=2, n_head=2, n_embd=64, n_positions=256),
    "cpu-1m": dict(n_layer=4, n_head=4, n_embd=128, n_positions=256),
    "cpu-6m": dict(n_layer=6, n_head=8, n_embd=256, n_positions=256),
    "cpu-25m": dict(n_layer=8, n_head=8, n_embd=512, n_positions=512),
}


def preset_config(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise GPT2KitError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})


class KVCache:
    """Preallocated keys and values for every layer, filled left to right.

    `length` counts the positions already cached; all rows of the batch share it
    (left padding keeps rows aligned, padding is masked with `attention_mask`).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_length: int, device=None, dtype=None):
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_length:
            raise GPT2KitError(f"KV cache is full: {end} positions requested, {self.max_length} allocated")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. to drop finished sequences)."""
        self.keys = self.keys[:, rows]
        self.values = self.values[:, rows]

    def repeat(self, times: int) -> KVCache:
        """A copy whose batch is this cache's batch repeated `times` (shared-prefix scoring)."""
        copy = KVCache.__new__(KVCache)
        copy.keys = self.keys.repeat_interleave(times, dim=1)
        copy.values = self.values.repeat_interleave(times, dim=1)
        copy.length = self.length
        return copy


# At most this many logits (128 MB in fp32) exist at a time in the output-layer loss. Larger chunks
# mean fewer passes over the (vocab, n_embd) gradient they accumulate into.
LOSS_CHUNK_LOGITS = 1 << 25


class OutputLoss(torch.autograd.Function):
    """Mean next-token cross-entropy through the output layer, one chunk of rows at a time.

    The full (B*T, vocab) logits and their gradient never exist: each chunk's
    logits go into one reused buffer, become exp(logits - max) in place, and
    give the gradients with respect to the hidden states and the embedding
    matrix right away (softmax minus one-hot, the 1/sum folded into small
    per-row scales), so backward only scales them. That saves the memory
    passes, and on CPU the page faults, of fresh logit-sized tensors.

    With `dtype` (the autocast dtype, bf16 or fp16) the three matmuls run in it, as autocast would run them,
    and the softmax in fp32 in a second buffer; the embedding gradient accumulates in fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, with_grads: bool, dtype: torch.dtype | None = None):
        hidden_dtype, weight_dtype = hidden.dtype, weight.dtype
        if dtype is not None:
            hidden, weight = hidden.to(dtype), weight.to(dtype)
        low = hidden.dtype in (torch.bfloat16, torch.float16)
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunks = -(-rows * vocab // LOSS_CHUNK_LOGITS)  # equal chunks, none of them a small remainder
        chunk = -(-rows // chunks)
        buffer = hidden.new_empty(chunk, vocab)
        fp32_buffer = hidden.new_empty(chunk, vocab, dtype=torch.float32) if low else buffer
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if with_grads else None
        grad_weight = None
        for start in range(0, rows, chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            n = len(t)
            exps = torch.mm(h, weight.t(), out=buffer[:n])
            if low:
                exps = fp32_buffer[:n].copy_(exps)
            row_max = exps.amax(dim=1, keepdim=True)
            picked = exps.gather(1, t[:, None])
            exps.sub_(row_max).exp_()
            row_sum = exps.sum(dim=1, keepdim=True)
            total += (row_max + row_sum.log() - picked).sum()
            if not with_grads:
                continue
            # d(mean loss)/d(logits) = (exps / row_sum - one_hot) / rows = (exps - row_sum * one_hot) * scale
            exps[torch.arange(n, device=t.device), t] -= row_sum.squeeze(1)
            scale = 1.0 / (row_sum * rows)
            if low:
                grad_logits = torch.mul(exps, scale, out=buffer[:n])  # back to the matmul dtype in the same pass
                torch.mm(grad_logits, weight, out=grad_hidden[start : start + n])
                part = torch.mm(grad_logits.t(), h)
                grad_weight = part.float() if grad_weight is None else grad_weight.add_(part)
            else:
                torch.mm(exps, weight, out=grad_hidden[start : start + n]).mul_(scale)
                if grad_weight is None:
                    grad_weight = torch.mm(exps.t(), h * scale)
                else:
                    grad_weight.addmm_(exps.t(), h * scale)
        # Kept on ctx (not saved tensors) so backward can hand them to autograd without a copy.
        if with_grads:
            ctx.grads = (grad_hidden.to(hidden_dtype), grad_weight.to(weight_dtype))
        return total / rows

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads  # once: the graph cannot be run backward twice
        return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), None, None, None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.n_head = config.n_head
        self.layer_index = layer_index
        self.dropout = config.dropout
        self.scale = (config.n_embd // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_index + 1
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, mask: torch.Tensor | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache may be kept in fp16 (GPT.kv_cache_dtype)
        dropout = self.dropout if self.training else 0.0
        if mask is None:
            # No cache and no padding: the fused causal kernel is fastest.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=T > 1, scale=self.scale)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_index: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, mask: torch.Tensor | None = None):
        x = x + self.attn(self.ln_1(x), kv_cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Output rows that are no token (a vocabulary padded past its tokenizer, gaps in its ids): their
        # logits are -inf, so nothing samples, scores or ranks them. Set by `mask_logits`, not saved.
        self.masked_token_ids: torch.Tensor | None = None
        # Set by `gpt2kit.inference`: what the model was turned into for inference only ("int8", "fp32-decoding"),
        # the output layer that replaces the matmul with output_weight, and a faster single-token step that
        # generation uses in place of forward (same cache, same logits).
        self.inference_form: str | None = None
        self.output_layer: nn.Module | None = None
        self.decode_step = None
        self.inference_parameters: int | None = None  # the count before the linears were replaced
        self.kv_cache_dtype: torch.dtype | None = None  # caches in another dtype than the weights' (fp16, quantized)
        self.apply(self._init_weights)
        # GPT-2 scales residual projections by 1/sqrt(2 * n_layer): two residual adds per block.
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.h:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """The output layer's (vocab_size, n_embd) weight: wte's, unless the config unties them."""
        if self.inference_form is not None and not self.config.tie_word_embeddings:
            raise GPT2KitError(f"this model is prepared for inference ({self.inference_form}): no output weight")
        return self.wte.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def mask_logits(self, token_ids) -> None:
        """Give these output rows -inf logits from now on (ids that the tokenizer cannot decode)."""
        token_ids = list(token_ids)
        self.masked_token_ids = torch.tensor(token_ids, dtype=torch.long) if token_ids else None

    def new_kv_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache for this model: on its device, in `kv_cache_dtype` or else the weights' dtype."""
        weight = self.wte.weight
        return KVCache(self.config, batch_size, max_length, weight.device, self.kv_cache_dtype or weight.dtype)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (a tied output layer is wte)."""
        total = self.inference_parameters or sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.wte.weight.numel() + self.wpe.weight.numel()
        return total

    def forward(
        self,
        idx: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids (B, T), or with `targets` (B, T) their mean cross-entropy.

        The body (`hidden`) and the output layer (`head`) are also callable apart: scoring and generation
        take the hidden states once and apply the head only where they need logits.
        `logits_to_keep` > 0 computes logits for only that many last positions (generation needs one).
        """
        h = self.hidden(idx, kv_cache=kv_cache, attention_mask=attention_mask, position_ids=position_ids)
        if targets is None and logits_to_keep > 0:
            return self.head(h[:, -logits_to_keep:])
        return self.head(h, targets)

    def hidden(
        self,
        idx: torch.Tensor,
        *,
        kv_cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final hidden states (B, T, n_embd), after `ln_f`, for token ids (B, T).

        With `kv_cache`, `idx` continues the cached positions and the cache is
        extended. `attention_mask` (B, cached + T), 1 for real tokens and 0 for
        padding, masks left padding; positions then count real tokens only.
        """
        B, T = idx.shape
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None and attention_mask is None:
            # Plain positions past..past+T-1: checked without reading the device (no sync in training).
            if past + T > self.config.n_positions:
                raise GPT2KitError(f"sequence of {past + T} tokens exceeds the context of {self.config.n_positions}")
            position_ids = torch.arange(past, past + T, device=idx.device).unsqueeze(0)
        else:
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past : past + T]
            if int(position_ids.max()) >= self.config.n_positions:
                raise GPT2KitError(f"sequence of {past + T} tokens exceeds the context of {self.config.n_positions}")
        mask = self._attention_mask(T, past, attention_mask, idx.device)
        x = self.drop(self.wte(idx) + self.wpe(position_ids))
        for block in self.h:
            x = block(x, kv_cache, mask)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.ln_f(x)

    def head(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The output layer: logits (..., vocab_size) for hidden states (..., n_embd), or with `targets`
        (the shape of h without its last dimension) the mean next-token cross-entropy, computed without
        materialising the logits."""
        if targets is None:
            logits = F.linear(h, self.output_weight) if self.output_layer is None else self.output_layer(h)
            if self.masked_token_ids is not None:
                logits.index_fill_(-1, self.masked_token_ids.to(logits.device), float("-inf"))
            return logits
        if self.inference_form is not None:
            raise GPT2KitError(f"this model is prepared for inference ({self.inference_form}); train the fp32 model")
        weight = self.output_weight
        device_type = h.device.type
        # Under bf16 autocast the matmuls run in bf16, as F.linear's would; the softmax stays fp32. fp16 keeps
        # autocast's own path: the fused loss forms the 1/rows-scaled logit gradients before the grad scaler's
        # factor arrives, and in fp16 most of them (~p/rows, 1e-9) would flush to zero.
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        if dtype == torch.float16:
            logits = F.linear(h, weight).float()
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        with_grads = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        with torch.autocast(device_type, enabled=False):
            return OutputLoss.apply(h.reshape(-1, h.size(-1)), weight, targets.reshape(-1), with_grads, dtype)

    @staticmethod
    def _attention_mask(T: int, past: int, attention_mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """A boolean (B or 1, 1, T, past + T) mask, or None when plain causal attention suffices."""
        if attention_mask is None and (past == 0 or T == 1):
            return None
        total = past + T
        key_pos = torch.arange(total, device=device)
        query_pos = torch.arange(past, total, device=device)
        causal = key_pos[None, :] <= query_pos[:, None]
        if attention_mask is None:
            return causal[None, None]
        keep = attention_mask[:, :total].bool()[:, None, None, :]
        # A padding query would otherwise see no key at all (NaN); let it see itself.
        itself = key_pos[None, :] == query_pos[:, None]
        return (causal & keep) | itself
