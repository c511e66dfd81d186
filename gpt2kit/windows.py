"""Sliding windows over a token stream longer than the model's context: every token after the first scored once.

Corpus perplexity (gpt2kit.evals) and the server's prompt logprobs (gpt2kit.generate) both score long
streams through them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2kit.errors import GPT2KitError


@dataclass(frozen=True)
class Window:
    """Model input `tokens[start:end]`; its last `n_scored` positions' next tokens are scored."""

    start: int
    end: int
    n_scored: int


def rolling_windows(
    n_tokens: int, max_length: int, stride: int | None = None, full_context: bool = False
) -> list[Window]:
    """Windows over a stream of `n_tokens` (the first being a `<|endoftext|>` that is never scored).

    Every token after the first is scored exactly once. With `stride` equal to
    `max_length` (the default) the scored spans do not overlap and each window
    sees only its own tokens; a smaller stride slides the window by `stride`
    tokens and scores only the new ones, so each has at least
    `max_length - stride` tokens of context. The last window, cut short by the
    end of the stream, starts `stride` after the one before it; with
    `full_context` it reaches back `max_length` tokens instead.
    """
    stride = stride or max_length
    if not 1 <= stride <= max_length:
        raise GPT2KitError(f"stride must be in 1..{max_length} (the context length), got {stride}")
    windows: list[Window] = []
    scored_until = 1  # tokens[1:scored_until] are scored
    start = 0
    while scored_until < n_tokens:
        end = min(start + max_length, n_tokens - 1)
        # Input tokens[start:end] predicts tokens[start+1:end+1].
        first = max(0, end - max_length) if full_context else start
        windows.append(Window(first, end, end + 1 - scored_until))
        scored_until = end + 1
        start += stride
    return windows
