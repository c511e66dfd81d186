"""The task registry: every task by name, in the order of the paper's tables."""

from __future__ import annotations

from types import MappingProxyType

from gpt2kit.errors import GPT2KitError
from gpt2kit.evals import choice, coqa, lambada, language_modeling, qa, summarization, translation
from gpt2kit.evals.task import TaskSpec

# Table 3's columns first (LAMBADA, CBT, the language modelling corpora), then the other experiments.
_ORDER = (
    lambada.TASKS
    + choice.TASKS[:2]
    + language_modeling.TASKS
    + choice.TASKS[2:]
    + coqa.TASKS
    + summarization.TASKS
    + translation.TASKS
    + qa.TASKS
)
TASKS: MappingProxyType[str, TaskSpec] = MappingProxyType({spec.name: spec for spec in _ORDER})


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise GPT2KitError(f"unknown task {name!r}; choose from {', '.join(TASKS)} (or 'all')")
    return TASKS[name]
