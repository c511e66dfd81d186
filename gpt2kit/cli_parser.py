"""The `gpt2kit` command's arguments: one parser, each area of the CLI adding its own subcommands.

Each subcommand names its handler (`cmd_<handler>` in `gpt2kit.cli`); defaults that belong to a config
dataclass are left as None here, so that the file-then-flags merge sees only what was typed.
"""

from __future__ import annotations

import argparse
import dataclasses

QUANTIZE_HELP = (
    "int8: int8 weights per output row, about 3x faster decoding than fp32 on CPU; int4: 4-bit weights in groups of "
    "32, faster still at one sequence (fp32 by default)"
)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        unset = f.default is None or f.default is False or f.default == "" or f.default == ()
        return "" if unset else f" (default {f.default})"
    return ""


def add_config_flags(p, cls: type, names: list[str], flags: dict[str, str] | None = None, section: str = "") -> None:
    """A flag for each named field of the config dataclass `cls`, its help the comment beside the field and its
    default the field's own, so each is written once. The value stays None unless typed (the config engine parses
    and checks it, naming the setting); `dest` is the field's name, under `section.` for a nested section."""
    from gpt2kit.config import field_help

    helps = field_help(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        field = by_name[name]
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        dest = f"{section}.{name}" if section else name
        text = helps.get(name, "") + _default_text(field)
        kind = str(field.type).replace(" | None", "")
        if kind == "bool" and field.default is not True:
            p.add_argument(flag, dest=dest, action="store_const", const=True, help=text)
        elif kind == "bool":  # on by default: the flag takes true or false, which the config engine reads
            p.add_argument(flag, dest=dest, metavar="{true,false}", help=text)
        else:
            p.add_argument(flag, dest=dest, metavar=name.upper(), type=FLAG_TYPES.get(kind), help=text)


# Annotations whose flags argparse converts; the rest reach the config engine as text, which parses and checks them.
FLAG_TYPES = {"int": int, "float": float}


SWEEP_FLAGS = ["eval_data_dir", "eval_limit", "eval_shots", "train_filter", "memorisation_windows", "device", "seed"]
EXECUTOR_FLAGS = ["retries", "ray_address", "partition", "time", "qos", "cpus_per_task", "mem_per_cpu_gb"]
EXECUTOR_FLAGS += ["job_name", "env_command"]


def add_executor_options(p, tasks_help: str) -> None:
    """Where a data job's tasks run (gpt2kit.executors.ExecutorConfig)."""
    from gpt2kit.executors.stages import EXECUTORS, ExecutorConfig

    group = p.add_argument_group("executor (local processes, Ray or Slurm)")
    group.add_argument("--executor", choices=EXECUTORS, help="where the tasks run (default: local)")
    group.add_argument("--tasks", type=int, help=tasks_help)
    add_config_flags(group, ExecutorConfig, EXECUTOR_FLAGS)
    group.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="another #SBATCH option, e.g. account=lm")


def add_tokenizer_commands(commands) -> None:
    tok = commands.add_parser("tokenizer", help="train, inspect and run byte-level BPE tokenizers")
    tok_commands = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    p = tok_commands.add_parser("train", help="train a GPT-2-style BPE on text files")
    p.add_argument(
        "--input", nargs="+", required=True, help="text or JSON-lines files (compressed too), directories or globs"
    )
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--out", required=True, help="directory for vocab.json + merges.txt")
    p.set_defaults(out_kind="dir")
    p.set_defaults(handler="tokenizer_train")
    for name, func, text in (
        ("encode", "tokenizer_encode", "text lines -> lines of token ids"),
        ("decode", "tokenizer_decode", "lines of token ids -> text lines"),
    ):
        p = tok_commands.add_parser(name, help=text)
        p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a tokenizer directory or a .tiktoken file")
        p.add_argument("file", nargs="?", help="input file (default: stdin)")
        p.set_defaults(handler=func)
    p = tok_commands.add_parser("info", help="describe a tokenizer")
    p.add_argument("--tokenizer", default="gpt2")
    p.set_defaults(handler="tokenizer_info")


def add_model_commands(commands) -> None:
    p = commands.add_parser("info", help="describe a model, or list the presets")
    p.add_argument(
        "model", nargs="?", help="a preset name (gpt2, cpu-6m, ...), a model directory / hub id, or a model file"
    )
    p.add_argument("--list", action="store_true", help="list every preset (the default without a model)")
    p.add_argument("--vocab-size", type=int, default=50257, help="vocabulary for the preset parameter counts")
    p.set_defaults(handler="info")
    p = commands.add_parser(
        "convert",
        help="convert a model between HF, nanoGPT, llm.c and GGUF",
        description="Formats are inferred from the paths: a directory or hub id is HF, .pt nanoGPT, "
        ".bin llm.c, .gguf GGUF (output only).",
    )
    p.add_argument("source", help="an HF directory or hub id, a nanoGPT ckpt.pt, or an llm.c .bin")
    p.add_argument("target", help="an HF directory, a nanoGPT .pt, an llm.c .bin, or a .gguf file")
    p.add_argument(
        "--from", dest="source_format", choices=("hf", "nanogpt", "llmc"), help="override the inferred input format"
    )
    p.add_argument(
        "--to",
        dest="target_format",
        choices=("hf", "nanogpt", "llmc", "gguf"),
        help="override the inferred output format",
    )
    p.add_argument(
        "--dtype", default="f32", choices=("f32", "bf16", "f16"), help="llm.c: f32 or bf16; GGUF: f32 or f16"
    )
    p.add_argument("--tokenizer", help="the tokenizer (default: the source's own; GPT-2's for nanoGPT and llm.c)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a model already at the target (anything else there is never replaced)",
    )
    p.set_defaults(handler="convert")


def add_demo_commands(commands) -> None:
    p = commands.add_parser("synth", help="generate a synthetic web with naturally occurring tasks, and eval sets")
    p.add_argument("--out", required=True, help="directory for train/ shards, eval/ sets and manifest.json")
    p.set_defaults(out_kind="dir")
    p.add_argument("--size-mb", type=float, default=20.0, help="megabytes of training documents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", help="document kinds and weights, e.g. story=0.3,forum=0.1 (default: all kinds)")
    p.add_argument("--eval-examples", type=int, default=200, help="held-out examples per evaluation set")
    p.set_defaults(handler="synth")
    p = commands.add_parser("demo", help="run the main job end to end, offline")
    p.add_argument("--out", default="demo-out")
    p.set_defaults(out_kind="dir")
    p.add_argument("--quick", action="store_true", help="one small model, for CI")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler="demo")
    p = commands.add_parser("sweep", help="train several model sizes on the same data and budget, evaluate, report")
    p.add_argument("--data", required=True, help="a prepared data directory (gpt2kit prepare)")
    p.add_argument("--sizes", required=True, help="model presets, comma-separated (see gpt2kit info)")
    p.add_argument("--tokens", type=int, required=True, help="training tokens for every size")
    p.add_argument("--eval-tasks", required=True, help="eval tasks, comma-separated; NAME=TASK runs TASK as NAME")
    p.add_argument("--config", help="a gpt2kit train config (TOML or YAML); its preset and max_steps are set per size")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="train config overrides")
    p.add_argument("--eval-data", action="append", default=[], metavar="NAME[:examples]=PATH")
    p.add_argument("--no-detokenize", help="eval tasks whose detokenizer is off, comma-separated")
    p.add_argument("--prompt", action="append", help="a sample prompt (repeatable; default: unconditional)")
    from gpt2kit.study.sweep import SweepConfig

    add_config_flags(p, SweepConfig, SWEEP_FLAGS)
    p.add_argument("--out", default="sweep-out")
    p.set_defaults(out_kind="dir")
    p.set_defaults(handler="sweep")


def add_webtext_commands(commands) -> None:
    """`webtext build` (the corpus) and `overlap build|check` (its 8-gram overlap with test sets)."""
    from gpt2kit.webtext.config import FilterConfig, RedditConfig

    web = commands.add_parser("webtext", help="build a WebText-style corpus from Reddit links, URLs, WARC or HTML")
    web_commands = web.add_subparsers(dest="webtext_command", required=True, metavar="ACTION")
    p = web_commands.add_parser("build", help="read, fetch, extract, filter, deduplicate and write shards")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--reddit", nargs="+", metavar="FILE", help="Reddit submission dumps (JSON lines, .zst ok)")
    source.add_argument("--urls", metavar="FILE", help="a URL list, one per line")
    source.add_argument("--warc", nargs="+", metavar="FILE", help="WARC files")
    source.add_argument("--html-dir", metavar="DIR", help="a directory of saved HTML pages")
    p.add_argument("--out", required=True, help="output directory (shards, stats.json, domains.tsv)")
    p.set_defaults(out_kind="dir")
    p.add_argument("--workers", type=int, help="tasks run at once (default 1 locally, no limit on Ray or Slurm)")
    add_executor_options(p, "tasks per stage, each a slice of the domains (default: --workers)")
    p.add_argument("--config", help="TOML or YAML settings (see gpt2kit/webtext/config.py)")
    add_config_flags(
        p.add_argument_group("Reddit"), RedditConfig, ["min_karma", "cutoff", "subreddit_blocklist"], section="reddit"
    )
    add_config_flags(
        p.add_argument_group("filters"), FilterConfig, ["domain_blocklist", "min_words"], section="filters"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any setting, e.g. fetch.per_domain_delay=2")
    p.set_defaults(handler="webtext_build")
    _add_overlap_commands(commands)


def _add_overlap_commands(commands) -> None:
    ov = commands.add_parser("overlap", help="8-gram Bloom filter overlap between a corpus and test sets")
    ov_commands = ov.add_subparsers(dest="overlap_command", required=True, metavar="ACTION")
    p = ov_commands.add_parser("build", help="build a Bloom filter of every 8-gram of a corpus")
    p.add_argument("--corpus", nargs="+", required=True, help="text files, JSON-lines shards (.jsonl[.gz|.zst]), dirs")
    p.add_argument("--out", required=True, help="filter file to write")
    p.set_defaults(out_kind="file")
    p.add_argument("--fpr", type=float, default=1e-8, help="false-positive rate bound (default 1e-8)")
    p.add_argument("--workers", type=int, help="processes at once (default: all cores)")
    p.add_argument("--text-field", default="text", help="field holding the text in JSON lines")
    p.add_argument("--expected-ngrams", type=int, help="size for this many 8-grams and skip the counting pass")
    p.add_argument(
        "--shards", type=int, help="split the filter by hash into this many files, each built by its own task"
    )
    add_executor_options(p, "map tasks hashing the corpus (default: --workers); needs --shards or --executor")
    p.set_defaults(handler="overlap_build")
    p = ov_commands.add_parser("check", help="report how much of each test set's 8-grams the filter holds")
    p.add_argument("--filter", required=True)
    p.add_argument("--test", nargs="+", help="test files (.txt, .jsonl)")
    p.add_argument(
        "--samples", nargs="+", help="generated samples (gpt2kit sample output, or .jsonl): how much they memorise"
    )
    p.add_argument("--verbatim-words", type=int, default=25, help="with --samples: a run this long counts (default 25)")
    p.add_argument(
        "--unit", default="auto", choices=["auto", "line", "wikitext", "file"], help="example unit of text files"
    )
    p.add_argument("--field", help="JSON field of each example (default: text/article/question/...)")
    p.add_argument("--flags", help="write per-example overlap flags here (JSON lines)")
    p.add_argument("--json", help="write the table as JSON here")
    p.add_argument(
        "--on-bad-utf8",
        default="replace",
        choices=("error", "replace", "skip"),
        help="lines that are not UTF-8: default replace, as prepare",
    )
    p.set_defaults(handler="overlap_check")


def add_demonstrations_command(commands) -> None:
    p = commands.add_parser(
        "demonstrations", help="find naturally occurring task demonstrations (translation, Q/A, TL;DR, ...) in a corpus"
    )
    p.add_argument("--corpus", nargs="+", required=True, help="text files, JSON-lines shards or a webtext build output")
    p.add_argument("--out", required=True, help="directory for demonstrations.json and examples.md")
    p.add_argument("--workers", type=int, default=1, help="processes (one file each at a time)")
    p.add_argument("--text-field", default="text", help="JSON field holding the text (default: text)")
    p.add_argument("--patterns", help="a YAML list of extra kinds: {name, regexes, window}")
    p.set_defaults(out_kind="dir")
    p.set_defaults(handler="demonstrations")


def add_sampling_commands(commands) -> None:
    p = commands.add_parser("sample", help="sample text from a model (greedy with --temperature 0)")
    p.add_argument("--model", required=True, help="a model directory or hub id")
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    p.add_argument("--unconditional", action="store_true", help="sample from <|endoftext|>, as the paper did")
    p.add_argument("--interactive", action="store_true", help="a prompt loop on stdin")
    p.add_argument("--config", help="a TOML/YAML file of generation settings; flags override it")
    from gpt2kit.sequences import PAPER_TOP_K, GenerationConfig

    add_config_flags(p, GenerationConfig, ["max_new_tokens", "temperature", "top_p", "seed"])
    p.add_argument("--top-k", type=int, help=f"default {PAPER_TOP_K}, as the paper's samples; 0 turns it off")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    add_config_flags(p, GenerationConfig, ["presence_penalty", "frequency_penalty", "repetition_penalty"])
    p.add_argument("--logit-bias", action="append", metavar="ID=BIAS", help="add BIAS (-100..100) to token ID's logit")
    add_config_flags(p, GenerationConfig, ["min_tokens", "ignore_eos", "best_of"])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help=QUANTIZE_HELP,
    )
    p.set_defaults(handler="sample")

    p = commands.add_parser("serve", help="an OpenAI-compatible completions server with a playground page")
    p.add_argument("--config", help="a TOML/YAML file of server settings; flags override it")
    from gpt2kit.serve.config import ServerConfig

    names = [f.name for f in dataclasses.fields(ServerConfig)]
    add_config_flags(p, ServerConfig, names, flags={"request_timeout_s": "--request-timeout"})
    p.set_defaults(handler="serve")


def add_data_commands(commands) -> None:
    p = commands.add_parser("prepare", help="tokenize a corpus into token shards for training")
    p.add_argument("--input", nargs="+", help="text/jsonl(.gz|.zst)/parquet files, directories or globs")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a tokenizer or model directory, or a .tiktoken file")
    p.add_argument("--out", required=True, help="output directory for shards and manifest.json")
    p.set_defaults(out_kind="dir")
    from gpt2kit.data.prepare_common import PrepareConfig

    names = ["hf_dataset", "hf_split", "val_fraction", "workers", "seed", "split_lines", "text_field", "on_bad_utf8"]
    add_config_flags(p, PrepareConfig, names + ["shard_tokens"], flags={"hf_split": "--split"})
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_options(p, "tokenize as this many tasks, each a slice of the input files, with shards per file")
    p.set_defaults(handler="prepare")


def add_train_commands(commands) -> None:
    p = commands.add_parser("train", help="pretrain or fine-tune a model on prepared shards (torchrun for many)")
    p.add_argument(
        "--config",
        help="a TOML or YAML training config, or a bundled one by name: cpu-smoke, gutenberg-cpu, gpt2-124m-owt-8gpu "
        "(default: TrainConfig's own defaults, as nanoGPT's train.py runs on its own)",
    )
    p.add_argument("--data", required=True, help="a directory written by `gpt2kit prepare`")
    p.add_argument("--out", required=True, help="the run directory")
    p.set_defaults(out_kind="dir")
    from gpt2kit.train_config import TrainConfig

    add_config_flags(p, TrainConfig, ["preset", "init_from", "max_steps", "seed", "compile"])
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields (dotted names)",
    )
    p.set_defaults(handler="train")
    p = commands.add_parser("plot", help="plot a run's train and validation loss to RUN_DIR/loss.png")
    p.add_argument("run_dir")
    p.add_argument("--out", help="the PNG to write (default RUN_DIR/loss.png)")
    p.set_defaults(out_kind="file")
    p.set_defaults(handler="plot")


def add_eval_commands(commands) -> None:
    p = commands.add_parser("eval", help="zero-shot evaluation on the GPT-2 paper's tasks")
    p.add_argument("--model", help="a model directory or hub id")
    p.add_argument("--tasks", help="comma-separated task names, or 'all' (see --list)")
    p.add_argument("--list", action="store_true", help="list the tasks, their protocols and data files")
    p.add_argument("--data-dir", help="directory searched for each task's standard file names")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TASK=PATH",
        help="a task's data file (repeatable); PATH may be hf or hf:NAME[:CONFIG][@SPLIT]",
    )
    from gpt2kit.evals.task import EvalOptions

    add_config_flags(p, EvalOptions, ["limit", "batch_size", "context_length", "stride", "shots", "seed"])
    p.add_argument(
        "--no-detokenize",
        nargs="?",
        const="all",
        metavar="TASKS",
        help="turn detokenizers off (for all tasks, or the listed ones)",
    )
    p.add_argument(
        "--lambada-stopword-filter",
        action="store_true",
        help="also report the paper's stop-word-filtered LAMBADA accuracy",
    )
    p.add_argument("--config", help="a TOML or YAML file of eval options (flags override it)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help=QUANTIZE_HELP,
    )
    p.add_argument("--out", help="write the results JSON here")
    p.set_defaults(out_kind="file")
    p.add_argument("--log-samples", metavar="PATH", help="write per-example records (JSON lines) here")
    p.set_defaults(handler="eval")


# Each area of the CLI registers its own subcommands; add new areas here, one per line.
COMMAND_GROUPS = (
    add_tokenizer_commands,
    add_model_commands,
    add_demo_commands,
    add_webtext_commands,
    add_demonstrations_command,
    add_sampling_commands,
    add_data_commands,
    add_train_commands,
    add_eval_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2kit", description="GPT-2: data, BPE, model, training, sampling, serving, eval"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also show other libraries' log messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in COMMAND_GROUPS:
        add_commands(commands)
    return parser
