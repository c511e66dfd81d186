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


# -- data and training ----------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from gpt2kit.data.prepare import prepare

    result = prepare(
        args.input or [],
        args.tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        workers=args.workers,
        seed=args.seed,
        split_lines=args.split_lines,
        text_field=args.text_field,
        on_bad_utf8=args.on_bad_utf8,
        hf_dataset=args.hf_dataset,
        hf_split=args.split,
        shard_tokens=args.shard_tokens,
        progress=not args.quiet,
    )
    manifest = result.manifest
    for split in ("train", "val"):
        stats = manifest.split_stats(split)
        print(
            f"{split}: {stats.num_docs:,} documents, {stats.num_tokens:,} tokens, "
            f"{stats.bytes_per_token:.3f} bytes/token"
        )
    inputs = manifest.input_stats
    print(
        f"bad UTF-8 ({manifest.settings['on_bad_utf8']}): {inputs['bad_utf8_replaced']} documents repaired, "
        f"{inputs['bad_utf8_skipped']} skipped; {inputs['empty_skipped']} empty documents skipped"
    )
    print(
        f"shard groups: {result.groups_written} written, {result.groups_reused} reused; "
        f"{result.tokens_per_s:,.0f} tokens/s -> {result.out}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from gpt2kit.config import apply_overrides, load_config
    from gpt2kit.train import train

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    config.data, config.out = args.data, args.out
    for name in ("preset", "init_from", "max_steps", "seed"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.compile:
        config.compile = True
    apply_overrides(config, args.set)
    result = train(config, resume=args.resume)
    if result.checkpoint is not None:
        loss = f"{result.loss:.4f}" if result.loss is not None else "n/a"
        val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
        print(f"step {result.step}: {result.tokens:,} tokens, loss {loss}, val_loss {val}")
        print(f"checkpoint: {result.checkpoint}")
        print(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from gpt2kit.plot import plot_run

    print(plot_run(args.run_dir, args.out))
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


def add_data_commands(commands) -> None:
    p = commands.add_parser("prepare", help="tokenize a corpus into token shards for training")
    p.add_argument("--input", nargs="+", help="text/jsonl(.gz|.zst)/parquet files, directories or globs")
    p.add_argument("--hf-dataset", help="a HF dataset NAME[:CONFIG] (hub id or local directory), streamed")
    p.add_argument("--split", default="train", help="split of --hf-dataset (default: train)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a tokenizer or model directory, or a .tiktoken file")
    p.add_argument("--out", required=True, help="output directory for shards and manifest.json")
    p.add_argument("--val-fraction", type=float, default=0.005, help="share of documents for validation")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--split-lines", action="store_true", help="one document per line of text files")
    p.add_argument("--text-field", default="text", help="field (jsonl) or column (parquet, HF) with the text")
    p.add_argument("--on-bad-utf8", choices=("error", "replace", "skip"), default="replace")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="train tokens per shard")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)


def add_train_commands(commands) -> None:
    p = commands.add_parser("train", help="pretrain or fine-tune a model on prepared shards (torchrun for many)")
    p.add_argument("--config", required=True, help="a TOML or YAML training config (see configs/)")
    p.add_argument("--data", required=True, help="a directory written by `gpt2kit prepare`")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--preset", help="model size preset (gpt2, cpu-6m, ...)")
    p.add_argument("--init-from", dest="init_from", help="fine-tune this model directory or hub id")
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (same as --set compile=true)")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields (dotted names)",
    )
    p.set_defaults(func=cmd_train)
    p = commands.add_parser("plot", help="plot a run's train and validation loss to RUN_DIR/loss.png")
    p.add_argument("run_dir")
    p.add_argument("--out", help="the PNG to write (default RUN_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)


# Each area of the CLI registers its own subcommands; add new areas here, one per line.
COMMAND_GROUPS = (
    add_tokenizer_commands,
    add_model_commands,
    add_demo_commands,
    add_data_commands,
    add_train_commands,
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
