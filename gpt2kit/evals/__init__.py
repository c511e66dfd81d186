"""Zero-shot evaluation with the GPT-2 paper's tasks and protocols.

`evaluate(model, tokenizer, ["lambada", "wikitext2"], {"lambada": "lambada_test.jsonl", ...})`
returns one result per task: flat metrics, the protocol in words, the number of
examples, the data file's sha256, the model and the runtime.
"""

from gpt2kit.evals.registry import TASKS, get_task
from gpt2kit.evals.report import markdown_table, task_listing
from gpt2kit.evals.runner import evaluate, write_results, write_samples
from gpt2kit.evals.scoring import ContinuationScore, Scorer, ScoreRequest
from gpt2kit.evals.task import EvalOptions

__all__ = [
    "TASKS",
    "ContinuationScore",
    "EvalOptions",
    "ScoreRequest",
    "Scorer",
    "evaluate",
    "get_task",
    "markdown_table",
    "task_listing",
    "write_results",
    "write_samples",
]
