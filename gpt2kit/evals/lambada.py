"""LAMBADA: predict the last word of a passage whose answer needs the whole passage.

Two accuracies, because the two protocols in use give very different numbers:
- `acc_last_token` (OpenAI's): the whole text is tokenized and the greedy
  prediction of its final BPE token, given all the others, must be right. The
  first pieces of a multi-token last word are given, which makes this easier.
- `acc_last_word` (lm-evaluation-harness's `lambada_openai`): context = the
  text up to the last space, continuation = " " + last word; every token of
  the continuation must be the greedy choice.
`ppl` is lm-eval's target perplexity, exp(-mean over examples of log P(word)).

`--lambada-stopword-filter` adds the paper's approximation: among the ten most
likely first tokens that start a new word, each greedily completed to a whole
word, the most likely word that is not a stop word is the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gpt2kit.evals.data import (
    DataSource,
    EvalDataError,
    HFDataset,
    expect_str,
    iter_records,
    read_text,
    require_examples,
)
from gpt2kit.evals.detokenize import PTB_QUOTES
from gpt2kit.evals.scoring import ScoreRequest
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec

# Function words a passage's final word is (almost) never: pronouns, determiners, auxiliaries, prepositions.
STOP_WORDS = frozenset(
    """a an the this that these those some any each every no all both either neither such what which who whom whose
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves one ones
    am is are was were be been being have has had having do does did doing will would shall should can could may
    might must ought
    and but or nor so yet if then than because as until while although though whether since unless
    of at by for with about against between into through during before after above below to from up down in out on
    off over under again further once here there when where why how
    not only own same too very just also even more most other few s t d ll m o re ve y don nt""".split()
)
CANDIDATES = 10  # first tokens considered by the stop-word filter
MAX_WORD_TOKENS = 6  # a completed word is at most this many BPE tokens


@dataclass(frozen=True)
class Passage:
    text: str
    context: str
    target: str  # the last word, without its leading space


def split_passage(text: str, where: str) -> Passage:
    text = text.strip()
    if " " not in text:
        raise EvalDataError(f"{where}: a LAMBADA passage needs a context and a last word, got {text[:60]!r}")
    context, target = text.rsplit(" ", 1)
    return Passage(text, context, target)


def load_passages(source: DataSource, detokenize: bool) -> tuple[list[Passage], str]:
    """Passages and the format read: OpenAI's jsonl, HF rows with "text", or the original plain text."""
    if source.rows is not None or source.path.suffix in (".jsonl", ".json"):
        passages = [
            split_passage(expect_str(record["text"], where, "text"), where)
            for where, record in iter_records(source, ("text",))
        ]
        fmt = "jsonl"
    else:
        # The original release: one tokenized (and lowercased) passage per line.
        passages = []
        for number, line in enumerate(read_text(source.path).splitlines(), 1):
            if line.strip():
                text = PTB_QUOTES.detokenize_line(line) if detokenize else line.strip()
                passages.append(split_passage(text, f"{source.path}:{number}"))
        fmt = "plain text, " + ("detokenized (PTB-style quotes and punctuation)" if detokenize else "as tokenized")
    require_examples(passages, source, "LAMBADA passages")
    return passages, fmt


def _word_continuation(ctx: TaskContext, passage: Passage) -> tuple[list[int], list[int], list[int]]:
    """lm-eval's split: whole = encode(text), context = encode(context), continuation = whole[len(context):]."""
    whole = ctx.encode(passage.context + " " + passage.target)
    context = ctx.encode(passage.context)
    return whole, context, whole[len(context) :]


def stopword_filtered_words(ctx: TaskContext, contexts: list[list[int]]) -> list[str]:
    """For each context, the most likely non-stop-word among greedy completions of its top word starts.

    Contexts run `batch_size` at a time, left-padded; each context's candidates
    then continue from its KV cache, copied once per candidate.
    """
    model, tokenizer = ctx.model, ctx.tokenizer
    device = model.wte.weight.device
    words: list[str] = []
    for start in range(0, len(contexts), ctx.options.batch_size):
        batch = [c[-(ctx.context_length - MAX_WORD_TOKENS) :] for c in contexts[start : start + ctx.options.batch_size]]
        width = max(map(len, batch))
        idx = torch.full((len(batch), width), tokenizer.eot_token, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, context in enumerate(batch):
            idx[row, width - len(context) :] = torch.tensor(context)
            mask[row, width - len(context) :] = 1
        idx, mask = idx.to(device), mask.to(device)
        padded = bool((mask == 0).any())
        cache = model.new_kv_cache(len(batch), width + MAX_WORD_TOKENS)
        with torch.no_grad():
            hidden = model.hidden(idx, kv_cache=cache, attention_mask=mask if padded else None)[:, -1]
            first_logprobs = torch.log_softmax(model.head(hidden).double(), dim=-1)
            candidates = [_word_starts(tokenizer, row) for row in first_logprobs]
            # Every context gets CANDIDATES rows (repeating its last start when it has fewer), so rows line up.
            tokens: list[list[int]] = []
            for cands in candidates:
                filled = (cands + cands[-1:] * CANDIDATES)[:CANDIDATES] if cands else [tokenizer.eot_token] * CANDIDATES
                tokens += [[t] for t in filled]
            owners = [b for b in range(len(batch)) for _ in range(CANDIDATES)]
            scores = [first_logprobs[owners[r], tokens[r][0]].item() for r in range(len(tokens))]
            rows = torch.tensor(owners, device=device)
            cache.select(rows)
            mask = mask[rows]
            open_rows = [True] * len(tokens)
            step = torch.tensor([t[:1] for t in tokens], device=device)
            for _ in range(MAX_WORD_TOKENS - 1):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                hidden = model.hidden(step, kv_cache=cache, attention_mask=mask if padded else None)[:, -1]
                step_logprobs = torch.log_softmax(model.head(hidden).double(), dim=-1)
                best = step_logprobs.argmax(dim=-1).tolist()
                for r, token in enumerate(best):
                    if open_rows[r] and _continues_word(tokenizer.decode([token])):
                        tokens[r].append(token)
                        scores[r] += step_logprobs[r, token].item()
                    else:
                        open_rows[r] = False
                if not any(open_rows):
                    break
                step = torch.tensor([[t] for t in best], device=device)
        for b, cands in enumerate(candidates):
            rows_of_b = range(b * CANDIDATES, b * CANDIDATES + len(cands))
            completed = sorted(
                ((scores[r], tokenizer.decode(tokens[r]).strip()) for r in rows_of_b), key=lambda p: -p[0]
            )
            words.append(
                next((w for _, w in completed if w.lower() not in STOP_WORDS), completed[0][1] if completed else "")
            )
    return words


def _word_starts(tokenizer, logprobs: torch.Tensor) -> list[int]:
    """The CANDIDATES most likely tokens that begin a new word (a space, then letters)."""
    ranked = torch.argsort(logprobs, descending=True)[:200].tolist()
    return [t for t in ranked if _starts_word(tokenizer.decode([t]))][:CANDIDATES]


def _starts_word(text: str) -> bool:
    return text.startswith(" ") and text[1:].isalpha()


def _continues_word(text: str) -> bool:
    return bool(text) and not text[0].isspace() and text.replace("'", "").isalpha()


def run(ctx: TaskContext) -> TaskOutput:
    passages, fmt = load_passages(ctx.data, ctx.options.detokenize_for(ctx.name))
    passages = ctx.limited(passages)
    requests: list[ScoreRequest] = []
    word_request: list[int] = []
    # OpenAI's last-token prediction reuses the word request when its input is exactly the whole text minus one
    # token; when the context does not tokenize to a prefix of the whole text, it needs a request of its own.
    last_token_request: list[int] = []
    contexts = []
    for i, passage in enumerate(passages):
        whole, context, continuation = _word_continuation(ctx, passage)
        if not continuation or not context:
            raise EvalDataError(f"{ctx.data.describe()}: passage {i} tokenizes to an empty context or last word")
        contexts.append(context)
        word_request.append(len(requests))
        requests.append(ScoreRequest(tuple(context), tuple(continuation)))
        if whole[: len(context)] == context:
            last_token_request.append(word_request[-1])
        else:
            last_token_request.append(len(requests))
            requests.append(ScoreRequest(tuple(whole[:-1]), (whole[-1],)))
    scores = ctx.scorer.score(requests)
    predictions = stopword_filtered_words(ctx, contexts) if ctx.options.lambada_stopword_filter else []
    samples, last_token_hits, word_hits, filter_hits, word_logprobs, last_logprobs = [], 0, 0, 0, [], []
    for i, passage in enumerate(passages):
        score, last = scores[word_request[i]], scores[last_token_request[i]]
        last_hit = last.token_greedy[-1]
        last_token_hits += last_hit
        word_hits += score.is_greedy
        word_logprobs.append(score.logprob)
        last_logprobs.append(last.token_logprobs[-1])
        sample = {
            "index": i,
            "target": passage.target,
            "target_logprob": score.logprob,
            "target_tokens": score.n_tokens,
            "correct_last_word": score.is_greedy,
            "correct_last_token": last_hit,
        }
        if ctx.options.lambada_stopword_filter:
            filter_hits += predictions[i] == passage.target
            sample["prediction_stopword_filter"] = predictions[i]
        samples.append(sample)
    n = len(passages)
    metrics = {
        "acc_last_token": last_token_hits / n,
        "acc_last_word": word_hits / n,
        "ppl": math.exp(-math.fsum(word_logprobs) / n),
        "ppl_last_token": math.exp(-math.fsum(last_logprobs) / n),
    }
    if ctx.options.lambada_stopword_filter:
        metrics["acc_stopword_filter"] = filter_hits / n
    protocol = (
        f"{fmt}; acc_last_token = greedy final BPE token of the whole text (OpenAI); acc_last_word = every token of "
        f"' ' + last word greedy after the text up to its last space (lm-eval lambada_openai); ppl = exp(-mean "
        f"log P(' ' + last word)); context {ctx.context_length} tokens"
        + (
            "; stop-word filter: best non-stop-word greedy completion of the top 10 word starts"
            if ctx.options.lambada_stopword_filter
            else ""
        )
    )
    return TaskOutput(metrics=metrics, n=n, protocol=protocol, samples=samples)


TASKS = (
    TaskSpec(
        name="lambada",
        metrics=("acc_last_token", "acc_last_word", "ppl", "ppl_last_token", "acc_stopword_filter (with the filter)"),
        family="reading comprehension / long-range dependency",
        columns=(
            Column(
                "acc_last_token", "LAMBADA (ACC)", "acc", {"117M": 45.99, "345M": 55.48, "762M": 60.12, "1542M": 63.24}
            ),
            Column("ppl", "LAMBADA (PPL)", "ppl", {"117M": 35.13, "345M": 15.60, "762M": 10.87, "1542M": 8.63}),
            Column("acc_last_word", "LAMBADA (ACC, last word)", "acc"),
        ),
        data_files=("lambada_test.jsonl", "lambada_test_plain_text.txt", "lambada_development_plain_text.txt"),
        file_format='lambada_test.jsonl (OpenAI\'s detokenized {"text": ...} lines), or the original plain text (one tokenized passage per line; detokenized unless --no-detokenize)',
        protocol="acc_last_token (OpenAI: final BPE token), acc_last_word (lm-eval: whole last word), target ppl",
        run=run,
        hf_dataset=HFDataset("EleutherAI/lambada_openai", "default", "test"),
    ),
)
