"""The one home of rolling windows (gpt2kit.windows), shared by corpus perplexity and the server's prompt logprobs."""

import pytest
import torch

from gpt2kit.generate import prompt_logprobs
from gpt2kit.model import GPT, GPTConfig
from gpt2kit.sequences import token_text
from gpt2kit.windows import rolling_windows


@pytest.mark.parametrize("stride", [None, 1, 2, 3])
def test_full_context_moves_only_the_last_window_back_to_a_whole_context(stride):
    for n in range(0, 30):
        plain = rolling_windows(n, 4, stride)
        full = rolling_windows(n, 4, stride, full_context=True)
        assert [(w.end, w.n_scored) for w in full] == [(w.end, w.n_scored) for w in plain]
        assert [w.start for w in full[:-1]] == [w.start for w in plain[:-1]]
        assert all(w.start == max(0, w.end - 4) for w in full)
    assert [(w.start, w.end, w.n_scored) for w in rolling_windows(10, 4, full_context=True)] == [
        (0, 4, 4),
        (4, 8, 4),
        (5, 9, 1),
    ]


def windows_as_before(model, tokenizer, ids, top):
    """prompt_logprobs as it was written before it used rolling_windows: windows overlapping by half a context."""
    context = model.config.n_positions
    logprobs, tops = [None], [None] if top > 0 else None
    begin, end, scored = 0, min(len(ids), context), 1
    with torch.inference_mode():
        while scored < len(ids):
            logits = model(torch.tensor([ids[begin:end]]))[0, :, : tokenizer.vocab_size]
            log_probs = torch.log_softmax(logits.float(), -1)[scored - begin - 1 : end - begin - 1]
            logprobs += log_probs.gather(1, torch.tensor(ids[scored:end])[:, None])[:, 0].tolist()
            if tops is not None:
                values, indices = log_probs.topk(min(top, log_probs.shape[-1]), -1)
                for row_values, row_ids in zip(values.tolist(), indices.tolist(), strict=True):
                    tops.append({token_text(tokenizer, t): v for t, v in zip(row_ids, row_values, strict=True)})
            scored = end
            end = min(len(ids), end + max(1, context // 2))
            begin = max(0, end - context)
    return logprobs, tops


@pytest.mark.parametrize("n_positions", [2, 7, 8])
def test_prompt_logprobs_of_a_prompt_past_the_context_are_those_of_before_bit_for_bit(tiny_tokenizer, n_positions):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=n_positions, n_layer=2, n_head=2, n_embd=16)
    model = GPT(config).eval()
    ids = torch.randint(0, tiny_tokenizer.vocab_size, (31,)).tolist()
    for length in (1, 2, n_positions, n_positions + 1, 31):
        for top in (0, 3):
            assert prompt_logprobs(model, tiny_tokenizer, ids[:length], top) == windows_as_before(
                model, tiny_tokenizer, ids[:length], top
            )
