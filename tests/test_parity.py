"""Parity with transformers, as llm.c checks its trainer: the same weights in `GPT2LMHeadModel` and in ours give
the same loss and every gradient on one batch, and ten AdamW steps follow a stored loss trajectory.

The golden file holds transformers' losses for this exact setup (seeded weights and batch, CPU, fp32). Both
trajectories are compared with it, so a change in either library, or in ours, shows up. Regenerate it only
after checking why it moved: GPT2KIT_UPDATE_GOLDEN=1 pytest tests/test_parity.py
"""

import json
import os
from pathlib import Path

import pytest
import torch

import gpt2kit

transformers = pytest.importorskip("transformers")

GOLDEN = Path(__file__).parent / "golden" / "parity_adamw_10_steps.json"
STEPS = 10
LR = 3e-3
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_reference(tokenizer, directory: Path):
    """A seeded random GPT2LMHeadModel (non-zero biases and LayerNorm parameters), saved with the tokenizer."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4, attn_pdrop=0.0,
        embd_pdrop=0.0, resid_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return model.train()


def batch(vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab_size, (4, 48), generator=generator)


def test_loss_and_every_gradient_match_transformers(tmp_path, gpt2_tokenizer):
    hf = hf_reference(gpt2_tokenizer, tmp_path)
    ours = gpt2kit.load(tmp_path).model.train()
    idx = batch(gpt2_tokenizer.vocab_size)
    hf_loss = hf(idx, labels=idx).loss
    hf_loss.backward()
    our_loss = ours(idx[:, :-1], targets=idx[:, 1:])
    our_loss.backward()
    torch.testing.assert_close(our_loss, hf_loss, rtol=0, atol=1e-5)
    hf_params = dict(hf.named_parameters())
    names = [name for name, _ in ours.named_parameters()]
    assert len(names) == len(hf_params)  # the LM head is tied in both: one wte gradient
    for name, param in ours.named_parameters():
        expected = hf_params[f"transformer.{name}"].grad
        if name.endswith(CONV1D_WEIGHTS):  # HF's Conv1D keeps (in, out); nn.Linear keeps (out, in)
            expected = expected.t()
        scale = expected.abs().max().item()
        assert (param.grad - expected).abs().max().item() <= 1e-4 * scale + 1e-7, name


def adamw_losses(model, forward) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = forward(model)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_ten_adamw_steps_follow_the_golden_losses(tmp_path, gpt2_tokenizer):
    hf = hf_reference(gpt2_tokenizer, tmp_path)
    ours = gpt2kit.load(tmp_path).model.train()
    idx = batch(gpt2_tokenizer.vocab_size)
    hf_losses = adamw_losses(hf, lambda m: m(idx, labels=idx).loss)
    our_losses = adamw_losses(ours, lambda m: m(idx[:, :-1], targets=idx[:, 1:]))
    if os.environ.get("GPT2KIT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"steps": STEPS, "lr": LR, "losses": hf_losses}, indent=2) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["steps"] == STEPS and golden["lr"] == LR
    assert our_losses[-1] < our_losses[0] - 0.5  # it learns the batch
    for step, (ours_, theirs, stored) in enumerate(zip(our_losses, hf_losses, golden["losses"], strict=True)):
        assert abs(theirs - stored) < 1e-4, f"step {step}: transformers {theirs} vs golden {stored}"
        assert abs(ours_ - stored) < 1e-4, f"step {step}: gpt2kit {ours_} vs golden {stored}"
