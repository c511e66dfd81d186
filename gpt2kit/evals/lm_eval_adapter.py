"""lm-evaluation-harness on a gpt2kit model: an `lm_eval` LM backed by our scorer and generator.

```python
import lm_eval
from gpt2kit.evals.lm_eval_adapter import GPT2KitLM

results = lm_eval.simple_evaluate(model=GPT2KitLM(pretrained="path/to/model"), tasks=["lambada_openai"])
```

Importing this module also registers the class as lm-eval model "gpt2kit"
(`model="gpt2kit", model_args="pretrained=DIR"`). Scores come from
`gpt2kit.evals.scoring.Scorer`, so requests that share a context (every
multiple-choice task) encode it once; the text-to-token split is lm-eval's own
(`TemplateLM._encode_pair`), so numbers match lm-eval's HF backend.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gpt2kit.evals.scoring import Scorer, ScoreRequest

DEFAULT_GENERATION_TOKENS = 256


@register_model("gpt2kit")
class GPT2KitLM(TemplateLM):
    def __init__(
        self,
        pretrained: str | None = None,
        model=None,
        tokenizer=None,
        batch_size: int | str = 8,
        device: str = "cpu",
        max_length: int | None = None,
        **_: Any,  # lm-eval passes settings other backends use (e.g. max_batch_size)
    ):
        super().__init__()
        if model is None:
            from gpt2kit.checkpoint import load

            if pretrained is None:
                raise ValueError("GPT2KitLM needs pretrained=DIR_OR_HUB_ID or a model and tokenizer")
            loaded = load(pretrained, device=device)
            model, tokenizer = loaded.model, loaded.tokenizer
        if tokenizer is None:
            raise ValueError("GPT2KitLM: a model needs its tokenizer")
        self.model = model.eval()
        self.gpt2kit_tokenizer = tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.scorer = Scorer(model, self.batch_size, max_length)
        self._device = model.wte.weight.device

    # -- TemplateLM's hooks ----------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.gpt2kit_tokenizer.eot_token

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.gpt2kit_tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.gpt2kit_tokenizer.decode(tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split, except for a context made only of whitespace: TemplateLM moves that whitespace into
        the continuation and is left with no context at all (an error, in 0.4.13 and lm-eval's newest code alike).
        Treat it as lm-eval treats an empty context: condition on <|endoftext|>, scoring the whitespace with the
        continuation."""
        if context and not context.strip():
            return [self.prefix_token_id], self.tok_encode(context + continuation)
        return super()._encode_pair(context, continuation)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        counts: dict[tuple[int, ...], int] = {}
        for _, context, _ in requests:
            counts[tuple(context)] = counts.get(tuple(context), 0) + 1
        # Requests with the same context (the choices of one question) share its encoding.
        scored = self.scorer.score(
            [
                ScoreRequest(
                    tuple(context), tuple(continuation), group=tuple(context) if counts[tuple(context)] > 1 else None
                )
                for _, context, continuation in requests
            ]
        )
        results = []
        for (cache_key, _, _), score in zip(requests, scored, strict=True):
            answer = (score.logprob, score.is_greedy)
            self.cache_hook.add_partial("loglikelihood", cache_key, answer)
            results.append(answer)
        return results

    # -- LM's other two -------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood with lm-eval's windows (each token predicted once, the last window full)."""
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            pairs = get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, pairs):
                windows.append(ScoreRequest(tuple(context), tuple(continuation)))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self.scorer.score(windows), strict=True):
            totals[owner] += score.logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations decoded with `gpt2kit.generate`, batched across requests that share settings."""
        from gpt2kit.generate import GenerationConfig, generate

        groups: dict[str, tuple[GenerationConfig, list[int]]] = {}
        prompts = []
        for index, req in enumerate(requests):
            context, settings = req.args
            config = self._generation_config(dict(settings or {}))
            room = self.max_length - config.max_new_tokens
            prompts.append(self.tok_encode(context)[-room:] or [self.eot_token_id])
            groups.setdefault(repr(config), (config, []))[1].append(index)
        texts = [""] * len(requests)
        for config, members in groups.values():
            completions = generate(
                self.model,
                self.gpt2kit_tokenizer,
                [prompts[i] for i in members],
                config,
                max_batch_size=self.batch_size,
            )
            for i, completion in zip(members, completions, strict=True):
                texts[i] = completion.text
        for req, text in zip(requests, texts, strict=True):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    def _generation_config(self, settings: dict[str, Any]):
        """lm-eval's generation kwargs (until, max_gen_toks, do_sample, temperature, top_k, top_p) as our config."""
        from gpt2kit.generate import GenerationConfig

        until = settings.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(settings.get("do_sample", False))
        temperature = float(settings.get("temperature", 1.0 if sample else 0.0))
        return GenerationConfig(
            max_new_tokens=min(int(settings.get("max_gen_toks", DEFAULT_GENERATION_TOKENS)), self.max_length - 1),
            temperature=temperature if sample else 0.0,
            top_k=int(settings.get("top_k") or 0),
            top_p=float(settings.get("top_p") or 1.0),
            stop=tuple(s for s in until if s),
            seed=settings.get("seed"),
        )
