"""The `gpt2kit` command: a thin layer of argparse over library functions.

Each command parses its arguments, calls the library, and prints the result.
Bad input surfaces as GPT2KitError (or OSError) and becomes one line on stderr
with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from gpt2kit.errors import GPT2KitError

# -- tokenizer ----------------------------------------------------------------------


def _read_lines(file: str | None) -> Iterator[str]:
    """Lines without their newline, from a file or stdin, with a clear error for bad UTF-8."""
    source = "<stdin>" if file in (None, "-") else file
    handle = sys.stdin.buffer if file in (None, "-") else open(file, "rb")
    try:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8").rstrip("\n").removesuffix("\r")
            except UnicodeDecodeError as err:
                raise GPT2KitError(f"{source}:{number}: not UTF-8 (byte {err.start})") from None
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import train

    tokenizer = train(args.input, args.vocab_size, min_frequency=args.min_frequency, show_progress=True)
    tokenizer.save(args.out)
    print(f"trained {tokenizer.vocab_size} tokens -> {args.out}")
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    out = sys.stdout
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer.encode_batch(batch):
            out.write(" ".join(map(str, ids)) + "\n")
        batch.clear()

    for line in _read_lines(args.file):
        batch.append(line)
        if len(batch) >= 4096:
            flush()
    flush()
    return 0


def cmd_tokenizer_decode(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    source = args.file or "<stdin>"
    for number, line in enumerate(_read_lines(args.file), 1):
        try:
            ids = [int(token) for token in line.split()]
        except ValueError:
            raise GPT2KitError(f"{source}:{number}: expected space-separated token ids") from None
        bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
        if bad:
            raise GPT2KitError(
                f"{source}:{number}: token id {bad[0]} is outside the vocabulary (0..{tokenizer.vocab_size - 1})"
            )
        sys.stdout.write(tokenizer.decode(ids) + "\n")
    return 0


def cmd_tokenizer_info(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    print(f"name: {tokenizer.name}")
    print(f"vocab_size: {tokenizer.vocab_size}")
    print(f"merges: {len(tokenizer.mergeable_ranks) - 256}")
    print(f"special_tokens: {tokenizer.special_tokens}")
    print(f"sha256: {tokenizer.sha256}")
    return 0


# -- model --------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from gpt2kit.model import PRESETS

    if args.model in PRESETS:
        import torch

        from gpt2kit.model import GPT, preset_config

        config = preset_config(args.model)
        with torch.device("meta"):
            model = GPT(config)
        source = f"preset {args.model}"
    else:
        from gpt2kit.checkpoint import load

        model = load(args.model).model
        config = model.config
        source = str(args.model)
    print(f"model: {source}")
    print(f"layers: {config.n_layer}  width: {config.n_embd}  heads: {config.n_head}  context: {config.n_positions}")
    print(f"vocab: {config.vocab_size}")
    print(f"parameters: {model.num_parameters():,} ({model.num_parameters(non_embedding=True):,} non-embedding)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gpt2kit.demo import run_demo

    for line in run_demo(Path(args.out), quick=args.quick):
        print(line)
    return 0


# -- eval ---------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    import logging

    from gpt2kit.evals import (
        EvalOptions,
        evaluate,
        markdown_table,
        parse_tasks,
        task_listing,
        write_results,
        write_samples,
    )
    from gpt2kit.evals.data import parse_data_assignments

    if args.list:
        print(task_listing())
        return 0
    if not args.model or not args.tasks:
        raise GPT2KitError("--model and --tasks are required (or use --list)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = EvalOptions.from_file(args.config).to_dict() if args.config else {}
    overrides = {
        "limit": args.limit,
        "batch_size": args.batch_size,
        "context_length": args.context_length,
        "stride": args.stride,
        "shots": args.shots,
        "seed": args.seed,
    }
    options.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_detokenize is not None:
        options["no_detokenize"] = args.no_detokenize
    if args.lambada_stopword_filter:
        options["lambada_stopword_filter"] = True
    eval_options = EvalOptions.from_dict(options, where="eval options")
    tasks = parse_tasks(args.tasks)
    data = parse_data_assignments(args.data)

    from gpt2kit.checkpoint import load

    loaded = load(args.model, device=args.device)
    name = loaded.path.name if Path(args.model).is_dir() else args.model
    samples: list[dict] | None = [] if args.log_samples else None
    results = evaluate(
        loaded.model,
        loaded.tokenizer,
        tasks,
        data,
        data_dir=args.data_dir,
        options=eval_options,
        model_name=name,
        samples=samples,
    )
    if args.out:
        write_results(results, args.out)
    if samples is not None:
        write_samples(samples, args.log_samples)
    print(markdown_table(results))
    return 0


# -- parser -------------------------------------------------------------------------


def add_tokenizer_commands(commands) -> None:
    tok = commands.add_parser("tokenizer", help="train, inspect and run byte-level BPE tokenizers")
    tok_commands = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    p = tok_commands.add_parser("train", help="train a GPT-2-style BPE on text files")
    p.add_argument("--input", nargs="+", required=True, help="text files or directories")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--out", required=True, help="directory for vocab.json + merges.txt")
    p.set_defaults(func=cmd_tokenizer_train)
    for name, func, text in (
        ("encode", cmd_tokenizer_encode, "text lines -> lines of token ids"),
        ("decode", cmd_tokenizer_decode, "lines of token ids -> text lines"),
    ):
        p = tok_commands.add_parser(name, help=text)
        p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a tokenizer directory or a .tiktoken file")
        p.add_argument("file", nargs="?", help="input file (default: stdin)")
        p.set_defaults(func=func)
    p = tok_commands.add_parser("info", help="describe a tokenizer")
    p.add_argument("--tokenizer", default="gpt2")
    p.set_defaults(func=cmd_tokenizer_info)


def add_model_commands(commands) -> None:
    p = commands.add_parser("info", help="describe a model preset or a model directory")
    p.add_argument("model", help="a preset name (gpt2, cpu-6m, ...) or a model directory / hub id")
    p.set_defaults(func=cmd_info)


def add_demo_commands(commands) -> None:
    p = commands.add_parser("demo", help="run the main job end to end, offline")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--quick", action="store_true", help="one small model, for CI")
    p.set_defaults(func=cmd_demo)


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
    p.add_argument("--limit", type=int, help="at most N examples per task (lines for corpora)")
    p.add_argument("--batch-size", type=int, help="rows per forward pass (default 8; never changes a score)")
    p.add_argument("--context-length", type=int, help="tokens of context (default: the model's)")
    p.add_argument("--stride", type=int, help="corpus perplexity: window step (default: the context, no overlap)")
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
    p.add_argument("--shots", type=int, help="example pairs in the context for translation and NQ (default 10)")
    p.add_argument("--seed", type=int, help="seed for sampling and example draws (default 0)")
    p.add_argument("--config", help="a TOML or YAML file of eval options (flags override it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the results JSON here")
    p.add_argument("--log-samples", metavar="PATH", help="write per-example records (JSON lines) here")
    p.set_defaults(func=cmd_eval)


# Each area of the CLI registers its own subcommands; add new areas here, one per line.
COMMAND_GROUPS = (
    add_tokenizer_commands,
    add_model_commands,
    add_demo_commands,
    add_eval_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2kit", description="GPT-2: data, BPE, model, training, sampling, serving, eval"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in COMMAND_GROUPS:
        add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (GPT2KitError, OSError) as err:
        print(f"gpt2kit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt2kit: interrupted", file=sys.stderr)
        return 130
