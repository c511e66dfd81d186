"""CoQA: conversational question answering, scored with the official F1.

Prompt: the story, a blank line, the conversation so far as `Q: ...` / `A: ...`
turns (gold answers), then the new question and `A:`. The answer is decoded
greedily until a newline. F1 and EM follow the official script (SQuAD
normalisation; with several gold answers, the mean over leave-one-out maxima).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2kit.evals.data import DataSource, EvalDataError, HFDataset, expect_str, read_json, require_examples
from gpt2kit.evals.metrics import coqa_turn_scores
from gpt2kit.evals.task import Column, TaskContext, TaskOutput, TaskSpec, left_truncate

MAX_ANSWER_TOKENS = 32


@dataclass(frozen=True)
class Turn:
    story_id: str
    turn: int  # 1-based turn id
    prompt: str
    golds: tuple[str, ...]


@dataclass(frozen=True)
class Story:
    story_id: str
    story: str
    questions: list[str]
    answers: list[list[str]]  # per turn: the main answer first, then the additional ones


def build_prompt(story: str, history: list[tuple[str, str]], question: str) -> str:
    turns = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in history)
    return f"{story}\n\n{turns}Q: {question}\nA:"


def turns_of(stories: list[Story]) -> list[Turn]:
    turns = []
    for story in stories:
        history: list[tuple[str, str]] = []
        for k, (question, golds) in enumerate(zip(story.questions, story.answers, strict=True)):
            turns.append(Turn(story.story_id, k + 1, build_prompt(story.story, history, question), tuple(golds)))
            history.append((question, golds[0]))
    return turns


def _texts(items, where: str, key: str) -> list[str]:
    """The `input_text` strings of the official JSON's list of turns."""
    texts = [item.get("input_text") for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    if not isinstance(items, list) or len(texts) != len(items) or not all(isinstance(t, str) for t in texts):
        raise EvalDataError(f"{where}: {key!r} must be a list of entries with an 'input_text' string")
    return texts


def _column(columns, where: str, key: str) -> list[str]:
    """The `input_text` column of EleutherAI/coqa's {"input_text": [...], "turn_id": [...]}."""
    texts = columns.get("input_text") if isinstance(columns, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise EvalDataError(f"{where}: {key!r} must hold an 'input_text' list of strings")
    return texts


def _official_story(record: dict, where: str) -> Story:
    """One story of the official JSON (lists of {"turn_id", "input_text"}) or of EleutherAI/coqa (columns)."""
    try:
        story, questions, answers = record["story"], record["questions"], record["answers"]
    except (TypeError, KeyError) as err:
        raise EvalDataError(f"{where}: missing key {err} (expected story, questions, answers)") from None
    story = expect_str(story, where, "story")
    additional = record.get("additional_answers") or {}
    if not isinstance(additional, dict):
        raise EvalDataError(f"{where}: 'additional_answers' must be an object")
    read = _column if isinstance(questions, dict) else _texts  # HF columns, or the official lists of turns
    question_texts = read(questions, where, "questions")
    answer_sets = [read(answers, where, "answers")]
    answer_sets += [read(v, where, f"additional_answers/{k}") for k, v in additional.items()]
    if any(len(a) != len(question_texts) for a in answer_sets):
        raise EvalDataError(f"{where}: {len(question_texts)} questions but an answer list of another length")
    per_turn = [[answers[k] for answers in answer_sets] for k in range(len(question_texts))]
    return Story(str(record.get("id", where)), story, question_texts, per_turn)


def load_stories(source: DataSource) -> list[Story]:
    if source.rows is not None:
        stories = [_official_story(row, f"{source.describe()} row {i}") for i, row in enumerate(source.rows)]
    else:
        document = read_json(source.path)
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            raise EvalDataError(f"{source.path}: expected the official CoQA JSON, an object with a 'data' list")
        stories = [_official_story(r, f"{source.path}: data[{i}]") for i, r in enumerate(document["data"])]
    require_examples(stories, source, "CoQA stories")
    return stories


def run(ctx: TaskContext) -> TaskOutput:
    turns = ctx.limited(turns_of(load_stories(ctx.data)))
    room = ctx.context_length - MAX_ANSWER_TOKENS
    prompts = [left_truncate(ctx.encode(turn.prompt), room) for turn in turns]
    completions = ctx.generate(prompts, max_new_tokens=MAX_ANSWER_TOKENS, temperature=0.0, stop=("\n",))
    em_total = f1_total = 0.0
    samples = []
    for turn, completion in zip(turns, completions, strict=True):
        prediction = completion.text.strip()
        em, f1 = coqa_turn_scores(turn.golds, prediction)
        em_total += em
        f1_total += f1
        samples.append(
            {"story": turn.story_id, "turn": turn.turn, "prediction": prediction, "golds": list(turn.golds), "f1": f1}
        )
    n = len(turns)
    protocol = (
        "story + '\\n\\n' + history 'Q: q\\nA: a\\n\\n' (gold answers) + 'Q: q\\nA:', left-truncated to "
        f"{room} tokens; greedy, up to {MAX_ANSWER_TOKENS} tokens, until a newline; official CoQA F1/EM "
        "(SQuAD normalisation, leave-one-out over gold answers), averaged over turns"
    )
    return TaskOutput(metrics={"f1": f1_total / n, "em": em_total / n}, n=n, protocol=protocol, samples=samples)


TASKS = (
    TaskSpec(
        name="coqa",
        paper_split="dev",
        metrics=("f1", "em"),
        family="reading comprehension",
        columns=(Column("f1", "CoQA (F1)", "acc", {"1542M": 55.0}),),
        data_files=("coqa-dev-v1.0.json",),
        file_format="coqa-dev-v1.0.json: the official CoQA JSON",
        protocol="F1 (official script); greedy answer after 'A:', until a newline",
        run=run,
        hf_dataset=HFDataset("EleutherAI/coqa", None, "validation"),
    ),
)
