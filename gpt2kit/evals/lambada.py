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

from gpt2kit.evals.data import DataSource, EvalDataError, HFDataset, expect_str, iter_jsonl, read_text, require_examples
from gpt2kit.evals.detokenize import PTB_QUOTES
from gpt2kit.evals.scoring import ScoreRequest, head_logits, hidden_states
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec
from gpt2kit.model import KVCache

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
    if source.rows is not None:
        passages = [
            split_passage(expect_str(row.get("text"), f"{source.describe()} row {i}", "text"), source.describe())
            for i, row in enumerate(source.rows)
        ]
        return passages, "jsonl"
    path = source.path
    if path.suffix in (".jsonl", ".json"):
        passages = [
            split_passage(expect_str(record["text"], f"{path}:{number}", "text"), f"{path}:{number}")
            for number, record in iter_jsonl(path, ("text",))
        ]
        fmt = "jsonl"
    else:
        # The original release: one tokenized (and lowercased) passage per line.
        passages = []
        for number, line in enumerate(read_text(path).splitlines(), 1):
            if line.strip():
                text = PTB_QUOTES.detokenize_line(line) if detokenize else line.strip()
                passages.append(split_passage(text, f"{path}:{number}"))
        fmt = "plain text, " + ("detokenized (PTB-style quotes and punctuation)" if detokenize else "as tokenized")
    require_examples(passages, source, "LAMBADA passages")
    return passages, fmt


def _word_continuation(ctx: TaskContext, passage: Passage) -> tuple[list[int], list[int], list[int]]:
    """lm-eval's split: whole = encode(text), context = encode(context), continuation = whole[len(context):]."""
    whole = ctx.encode(passage.context + " " + passage.target)
    context = ctx.encode(passage.context)
    return whole, context, whole[len(context) :]


def stopword_filtered_word(ctx: TaskContext, context: list[int]) -> str:
    """The most likely non-stop-word among greedy completions of the top first tokens of a new word."""
    model, tokenizer = ctx.model, ctx.tokenizer
    context = context[-(ctx.context_length - MAX_WORD_TOKENS) :]
    device = model.wte.weight.device
    cache = KVCache(model.config, 1, len(context) + MAX_WORD_TOKENS, device=device, dtype=model.wte.weight.dtype)
    with torch.no_grad():
        last = hidden_states(model, torch.tensor([context], device=device), kv_cache=cache)[0, -1]
        logprobs = torch.log_softmax(head_logits(model, last[None])[0].double(), dim=-1)
        ranked = torch.argsort(logprobs, descending=True)[:200].tolist()
        firsts = [t for t in ranked if _starts_word(tokenizer.decode([t]))][:CANDIDATES]
        if not firsts:
            return ""
        rows = cache.repeat(len(firsts))
        words = [[t] for t in firsts]
        scores = [logprobs[t].item() for t in firsts]
        open_rows = [True] * len(firsts)
        step = torch.tensor([[t] for t in firsts], device=device)
        for _ in range(MAX_WORD_TOKENS - 1):
            hidden = hidden_states(model, step, kv_cache=rows)[:, -1]
            step_logprobs = torch.log_softmax(head_logits(model, hidden).double(), dim=-1)
            best = step_logprobs.argmax(dim=-1).tolist()
            for row, token in enumerate(best):
                if open_rows[row] and _continues_word(tokenizer.decode([token])):
                    words[row].append(token)
                    scores[row] += step_logprobs[row, token].item()
                else:
                    open_rows[row] = False
            if not any(open_rows):
                break
            step = torch.tensor([[t] for t in best], device=device)
    completed = [(score, tokenizer.decode(tokens).strip()) for score, tokens in zip(scores, words, strict=True)]
    completed.sort(key=lambda pair: -pair[0])
    for _, word in completed:
        if word.lower() not in STOP_WORDS:
            return word
    return completed[0][1]


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
            prediction = stopword_filtered_word(ctx, contexts[i])
            filter_hits += prediction == passage.target
            sample["prediction_stopword_filter"] = prediction
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
