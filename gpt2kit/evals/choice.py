"""Choice tasks scored by log-probability: the Children's Book Test and Winograd-style partial scoring.

CBT: the 20 context sentences, then the query up to its blank; each of the 10
candidates is scored together with the rest of the query sentence, and the
most probable wins. All candidates share the context, so it is encoded once.

Winograd / WinoGrande (partial scoring, Trinh & Le 2018): each option is
substituted into the sentence, and only the continuation after it is scored;
the option under which the continuation is most probable wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2kit.evals.data import (
    DataSource,
    EvalDataError,
    HFDataset,
    expect_str,
    expect_str_list,
    iter_jsonl,
    read_text,
    require_examples,
)
from gpt2kit.evals.detokenize import PTB_QUOTES
from gpt2kit.evals.scoring import ScoreRequest
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec

BLANK = "XXXXX"


@dataclass(frozen=True)
class ChoiceExample:
    contexts: tuple[str, ...]  # one per option (CBT: the same context for every candidate)
    continuations: tuple[str, ...]  # one per option (Winograd: the same continuation for every option)
    gold: int
    options: tuple[str, ...]


def score_choices(ctx: TaskContext, examples: list[ChoiceExample]) -> tuple[list[int], list[list[float]]]:
    """The predicted option of each example and every option's log-probability."""
    requests = []
    for i, example in enumerate(examples):
        for context, continuation in zip(example.contexts, example.continuations, strict=True):
            context_ids, continuation_ids = ctx.encode(context), ctx.encode(continuation)
            if not context_ids:
                context_ids = [ctx.tokenizer.eot_token]
            requests.append(ScoreRequest(tuple(context_ids), tuple(continuation_ids), group=i))
    scores = iter(ctx.scorer.score(requests))
    predictions, logprobs = [], []
    for example in examples:
        values = [next(scores).logprob for _ in example.options]
        logprobs.append(values)
        predictions.append(max(range(len(values)), key=lambda k: (values[k], -k)))
    return predictions, logprobs


def _choice_output(ctx: TaskContext, examples: list[ChoiceExample], protocol: str) -> TaskOutput:
    predictions, logprobs = score_choices(ctx, examples)
    samples = [
        {"index": i, "gold": ex.gold, "prediction": p, "options": list(ex.options), "logprobs": lp}
        for i, (ex, p, lp) in enumerate(zip(examples, predictions, logprobs, strict=True))
    ]
    hits = sum(p == ex.gold for p, ex in zip(predictions, examples, strict=True))
    return TaskOutput(metrics={"acc": hits / len(examples)}, n=len(examples), protocol=protocol, samples=samples)


# -- CBT ------------------------------------------------------------------------------------


def cbt_example(
    sentences: list[str], query: str, answer: str, candidates: list[str], where: str, detok: bool
) -> ChoiceExample:
    if BLANK not in query:
        raise EvalDataError(f"{where}: the query has no {BLANK} blank")
    if answer not in candidates:
        raise EvalDataError(f"{where}: the answer {answer!r} is not among the candidates")
    clean = PTB_QUOTES.detokenize_line if detok else str.strip
    story = " ".join(clean(s) for s in sentences)
    query = clean(query)
    before, after = query.split(BLANK, 1)
    if before == "" or before.endswith(" "):
        context = (story + " " + before.rstrip()).rstrip() if before.strip() else story
        continuations = tuple(" " + c + after for c in candidates)
    else:  # the blank follows an opening quote or bracket with no space
        context = story + " " + before
        continuations = tuple(c + after for c in candidates)
    return ChoiceExample(
        contexts=(context,) * len(candidates),
        continuations=continuations,
        gold=candidates.index(answer),
        options=tuple(candidates),
    )


def load_cbt(source: DataSource, detok: bool) -> list[ChoiceExample]:
    if source.rows is not None:
        where = source.describe()
        return [
            cbt_example(
                expect_str_list(row.get("sentences"), f"{where} row {i}", "sentences"),
                expect_str(row.get("question"), f"{where} row {i}", "question"),
                expect_str(row.get("answer"), f"{where} row {i}", "answer"),
                expect_str_list(row.get("options"), f"{where} row {i}", "options"),
                f"{where} row {i}",
                detok,
            )
            for i, row in enumerate(source.rows)
        ]
    path = source.path
    examples: list[ChoiceExample] = []
    sentences: list[str] = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        head, _, body = line.partition(" ")
        if not head.isdigit():
            raise EvalDataError(f"{path}:{number}: expected a line number, then the sentence (cbtest format)")
        if "\t" not in body:
            sentences.append(body)
            continue
        fields = body.split("\t")
        if len(fields) < 4:
            raise EvalDataError(f"{path}:{number}: expected 'query<TAB>answer<TAB><TAB>candidate|candidate|...'")
        candidates = [c for c in fields[3].split("|") if c]
        if len(candidates) < 2:
            raise EvalDataError(f"{path}:{number}: expected at least two candidates separated by '|'")
        if not sentences:
            raise EvalDataError(f"{path}:{number}: a query with no context sentences before it")
        examples.append(cbt_example(sentences, fields[0], fields[1], candidates, f"{path}:{number}", detok))
        sentences = []
    require_examples(examples, source, "CBT questions")
    return examples


def run_cbt(ctx: TaskContext) -> TaskOutput:
    detok = ctx.options.detokenize_for(ctx.name)
    examples = ctx.limited(load_cbt(ctx.data, detok))
    protocol = (
        f"20 context sentences{' (detokenized)' if detok else ''} + query up to the blank; each candidate scored "
        f"with the rest of the query sentence by total log-probability (context shared, encoded once); "
        f"context {ctx.context_length} tokens, truncated from the left"
    )
    return _choice_output(ctx, examples, protocol)


# -- Winograd -------------------------------------------------------------------------------


def winograd_example(options_text: list[str], continuation: str, gold: int, where: str) -> ChoiceExample:
    if not 0 <= gold < len(options_text):
        raise EvalDataError(f"{where}: gold {gold} is not an index into {len(options_text)} context_options")
    continuation = " " + continuation.strip()
    return ChoiceExample(
        contexts=tuple(options_text),
        continuations=(continuation,) * len(options_text),
        gold=gold,
        options=tuple(options_text),
    )


def _winograd_from_hf(row: dict, where: str) -> ChoiceExample:
    if "sentence" in row:  # allenai/winogrande
        sentence = expect_str(row["sentence"], where, "sentence")
        if "_" not in sentence:
            raise EvalDataError(f"{where}: the sentence has no '_' blank")
        blank = sentence.index("_")
        contexts = [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]]
        return winograd_example(contexts, sentence[blank + 1 :], int(row["answer"]) - 1, where)
    if "pronoun_loc" in row:  # WSC273 with the pronoun's position
        text, start = row["text"], int(row["pronoun_loc"])
        contexts = [text[:start] + option for option in row["options"]]
        return winograd_example(contexts, text[start + len(row["pronoun"]) :], int(row["label"]), where)
    raise EvalDataError(f"{where}: unknown Winograd row layout (keys: {', '.join(sorted(row))})")


def load_winograd(source: DataSource) -> list[ChoiceExample]:
    if source.rows is not None:
        examples = [_winograd_from_hf(row, f"{source.describe()} row {i}") for i, row in enumerate(source.rows)]
    else:
        examples = []
        for number, record in iter_jsonl(source.path, ("context_options", "continuation", "gold")):
            where = f"{source.path}:{number}"
            options = expect_str_list(record["context_options"], where, "context_options")
            continuation = expect_str(record["continuation"], where, "continuation")
            if not isinstance(record["gold"], int):
                raise EvalDataError(f"{where}: 'gold' must be an integer index")
            examples.append(winograd_example(options, continuation, record["gold"], where))
    require_examples(examples, source, "Winograd examples")
    return examples


def run_winograd(ctx: TaskContext) -> TaskOutput:
    examples = ctx.limited(load_winograd(ctx.data))
    protocol = (
        "partial scoring (Trinh & Le): each option substituted, log P(' ' + continuation | sentence up to and "
        "including the option); the common prefix of the options is encoded once"
    )
    return _choice_output(ctx, examples, protocol)


CBT_FORMAT = "cbtest format: numbered lines 1-20 of context, line 21 'query<TAB>answer<TAB><TAB>c1|...|c10'"
WINOGRAD_FORMAT = 'JSON lines {"context_options": [sentence up to each option], "continuation": str, "gold": int}'


def _cbt_task(kind: str, paper: dict[str, float]) -> TaskSpec:
    """Children's Book Test, common nouns (CN) or named entities (NE)."""
    return TaskSpec(
        name=f"cbt_{kind.lower()}",
        metrics=("acc",),
        family="cloze",
        columns=(Column("acc", f"CBT-{kind} (ACC)", "acc", paper),),
        data_files=(f"cbtest_{kind}_valid_2000ex.txt", f"cbtest_{kind}_test_2500ex.txt"),
        file_format=f"cbtest_{kind}_valid_2000ex.txt: {CBT_FORMAT}",
        protocol="accuracy; candidate + rest of the query scored given the 20-sentence context",
        run=run_cbt,
        hf_dataset=HFDataset("cam-cst/cbt", kind, "test"),
    )


TASKS = (
    _cbt_task("CN", {"117M": 87.65, "345M": 92.35, "762M": 93.45, "1542M": 93.30}),
    _cbt_task("NE", {"117M": 83.4, "345M": 87.1, "762M": 88.0, "1542M": 89.05}),
    TaskSpec(
        name="wsc273",
        paper_split="all 273",
        metrics=("acc",),
        family="commonsense reasoning",
        columns=(Column("acc", "Winograd (ACC)", "acc", {"1542M": 70.70}),),
        data_files=("wsc273.jsonl",),
        file_format=f"wsc273.jsonl: {WINOGRAD_FORMAT}",
        protocol="accuracy with partial scoring",
        run=run_winograd,
        hf_dataset=HFDataset("lighteval/winograd_wsc", "wsc273", "test"),
    ),
    TaskSpec(
        name="winogrande",
        metrics=("acc",),
        family="commonsense reasoning",
        columns=(Column("acc", "WinoGrande (ACC)", "acc"),),
        data_files=(
            "winogrande.jsonl",
            "winogrande_dev.jsonl",
            "winogrande_dev_llmfoundry.jsonl",
            "winograd/winogrande_dev_llmfoundry.jsonl",
        ),
        file_format=f"winogrande.jsonl: {WINOGRAD_FORMAT}",
        protocol="accuracy with partial scoring",
        run=run_winograd,
        hf_dataset=HFDataset("allenai/winogrande", "winogrande_xl", "validation"),
    ),
)
