"""Build a WebText-style corpus (the GPT-2 paper's recipe) with datatrove pipeline steps.

`build_webtext(WebTextConfig(...))` runs the whole pipeline; see `pipeline.py` for the stages and `README.md`
for running it on Slurm or Ray.
"""

from gpt2kit.webtext.config import DedupConfig, FetchConfig, FilterConfig, RedditConfig, WebTextConfig
from gpt2kit.webtext.pipeline import (
    BuildReport,
    Stage,
    StageCount,
    build_webtext,
    finish_build,
    format_stage_table,
    plan_stages,
)

__all__ = [
    "BuildReport",
    "DedupConfig",
    "FetchConfig",
    "FilterConfig",
    "RedditConfig",
    "Stage",
    "StageCount",
    "WebTextConfig",
    "build_webtext",
    "finish_build",
    "format_stage_table",
    "plan_stages",
]
