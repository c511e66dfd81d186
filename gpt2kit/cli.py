"""The `gpt2kit` command: a thin layer of argparse over library functions.

Each command parses its arguments, calls the library, and prints the result.
Bad input surfaces as GPT2KitError (or OSError) and becomes one line on stderr
with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

from gpt2kit.cli_parser import build_parser
from gpt2kit.errors import GPT2KitError
from gpt2kit.outputs import check_target

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
    from gpt2kit.outputs import TRAINED_TOKENIZER, check_owner, claim_directory
    from gpt2kit.tokenizer import train_tokenizer

    check_owner(args.out, TRAINED_TOKENIZER)  # before training: a model's or the user's directory is refused
    tokenizer = train_tokenizer(args.input, args.vocab_size, min_frequency=args.min_frequency, show_progress=False)
    with claim_directory(args.out, TRAINED_TOKENIZER):
        tokenizer.save(args.out)
    print(f"trained {tokenizer.vocab_size:,} tokens -> {args.out}")
    if tokenizer.vocab_size < args.vocab_size:
        print(
            f"note: {args.vocab_size:,} were asked for; this corpus has no more pairs seen at least "
            f"{args.min_frequency} times (lower --min-frequency or add text for more)"
        )
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
        problem = tokenizer.unknown_id(ids)
        if problem:
            raise GPT2KitError(f"{source}:{number}: {problem}")
        sys.stdout.write(tokenizer.decode(ids) + "\n")
    return 0


def cmd_tokenizer_info(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    merges = len(tokenizer.mergeable_ranks) - 256
    specials = ", ".join(f"{token} = {token_id}" for token, token_id in tokenizer.special_tokens.items())
    rows = (("name", tokenizer.name), ("vocab_size", f"{tokenizer.vocab_size:,}"), ("merges", f"{merges:,}"))
    rows += (("special tokens", specials or "none"), ("sha256", tokenizer.sha256))
    print("\n".join(f"{label}: {value}" for label, value in rows))
    return 0


# -- model --------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from gpt2kit.info import model_summary, preset_table

    if args.list or args.model is None:
        print(preset_table(args.vocab_size))
    else:
        print(model_summary(args.model))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from gpt2kit.convert import convert
    from gpt2kit.formats import format_of_target

    notes = convert(
        args.source,
        args.target,
        source_format=args.source_format,
        target_format=args.target_format,
        dtype=args.dtype,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
    )
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.target} ({args.target_format or format_of_target(args.target)}, {args.dtype})")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from gpt2kit.cli_values import parse_mix
    from gpt2kit.study.synth import DEFAULT_MIX, SynthConfig, synthesize

    config = SynthConfig(
        size_mb=args.size_mb,
        seed=args.seed,
        mix=parse_mix(args.mix) if args.mix else dict(DEFAULT_MIX),
        eval_examples=args.eval_examples,
    )
    result = synthesize(args.out, config, progress=True)
    print(result.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gpt2kit.study.demo import run_demo

    for line in run_demo(Path(args.out), quick=args.quick, seed=args.seed):
        print(line)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from gpt2kit.cli_parser import SWEEP_FLAGS
    from gpt2kit.cli_values import parse_eval_jobs
    from gpt2kit.config import given
    from gpt2kit.study.sweep import SweepConfig, run_sweep, sweep_summary

    config = SweepConfig(
        data=args.data,
        out=args.out,
        sizes=[s.strip() for s in args.sizes.split(",") if s.strip()],
        tokens=args.tokens,
        eval_jobs=parse_eval_jobs(args.eval_tasks, args.eval_data),
        config=args.config,
        overrides=args.set,
        no_detokenize=tuple(t for t in (args.no_detokenize or "").split(",") if t),
        prompts=args.prompt or [""],
        **given({name: getattr(args, name) for name in SWEEP_FLAGS}),
    )
    report, results = run_sweep(config)
    if report is None:
        return 0  # a torchrun rank other than 0: it trained, rank 0 reports
    print(sweep_summary(config, results))
    print(f"report: {report}")
    return 0


# -- webtext --------------------------------------------------------------------------


def cmd_webtext_build(args: argparse.Namespace) -> int:
    import logging

    from gpt2kit.config import load_config
    from gpt2kit.webtext import WebTextConfig, build_webtext, format_stage_table

    # trafilatura logs an ERROR for every page it cannot parse; the stage counts already report them
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    kind, inputs = next(
        (kind, value)
        for kind, value in (("reddit", args.reddit), ("urls", args.urls), ("warc", args.warc), ("html", args.html_dir))
        if value
    )
    flags = {
        "input_kind": kind,
        "inputs": [str(v) for v in ([inputs] if isinstance(inputs, str) else inputs)],
        "out": args.out,
        "workers": args.workers,
        "tasks": args.tasks,
        "reddit": _section_flags(args, "reddit"),
        "filters": _section_flags(args, "filters"),
    }
    config = load_config(WebTextConfig, args.config, flags=flags, overrides=args.set, check=False)
    report = build_webtext(config, _executor_config(args))
    print(format_stage_table(report))
    print(f"{report.documents:,} documents in {len(report.shards)} shards -> {report.out}")
    if report.top_domains:
        print("top domains: " + ", ".join(f"{d} ({n})" for d, n in report.top_domains[:10]))
    return 0


# -- overlap (the paper's 8-gram Bloom filter analysis) ------------------------------


def cmd_overlap_build(args: argparse.Namespace) -> int:
    from gpt2kit.data.overlap_build import build_overlap_filter

    executor = _executor_config(args)  # checks the executor flags even when they go unused
    result = build_overlap_filter(
        args.corpus,
        args.out,
        fpr=args.fpr,
        text_field=args.text_field,
        workers=args.workers,
        expected_ngrams=args.expected_ngrams,
        shards=args.shards,
        tasks=args.tasks,
        executor=executor if args.executor else None,
    )
    print("\n".join(result.summary()))
    return 0


def cmd_overlap_check(args: argparse.Namespace) -> int:
    import json

    from gpt2kit.data.bloom import BloomFilter
    from gpt2kit.data.overlap import check_overlap, format_table

    if bool(args.test) == bool(args.samples):
        raise GPT2KitError("give --test (test sets) or --samples (generated text), one of them")
    if args.samples:
        from gpt2kit.data.overlap import check_samples, format_samples_table

        rows = check_samples(args.filter, args.samples, args.verbatim_words)
        print(format_samples_table(rows))
    else:
        rows = check_overlap(
            args.filter, args.test, unit=args.unit, field=args.field, flags_out=args.flags, on_bad_utf8=args.on_bad_utf8
        )
        print(format_table(rows, BloomFilter.open(args.filter).header))
    if args.json:
        from gpt2kit.io import atomic_write_text

        atomic_write_text(args.json, json.dumps([row.summary() for row in rows], indent=2) + "\n")
    return 0


def cmd_demonstrations(args: argparse.Namespace) -> int:
    from gpt2kit.data.demonstrations import find_demonstrations, format_table

    result, kinds = find_demonstrations(
        args.corpus, args.out, workers=args.workers, text_field=args.text_field, patterns=args.patterns
    )
    print(format_table(result, kinds))
    print(f"-> {Path(args.out) / 'demonstrations.json'}, {Path(args.out) / 'examples.md'}")
    return 0


# -- sampling and serving -----------------------------------------------------------

SAMPLE_SEPARATOR = "=" * 40


def _generation_config(args: argparse.Namespace):
    """Generation settings: the paper's sampling defaults, then --config (TOML/YAML), then the flags given."""
    from gpt2kit.config import load_config
    from gpt2kit.sequences import PAPER_TOP_K, GenerationConfig

    flags = _config_flags(args, GenerationConfig)
    flags["logit_bias"] = None
    if args.logit_bias:
        flags["logit_bias"] = dict(_logit_bias_item(item) for item in args.logit_bias)
    base = GenerationConfig(top_k=PAPER_TOP_K)
    return load_config(GenerationConfig, args.config, section="generation", flags=flags, base=base)


def _logit_bias_item(item: str) -> tuple[int, float]:
    token, sep, bias = item.partition("=")
    try:
        return int(token), float(bias)
    except ValueError:
        raise GPT2KitError(f"--logit-bias expects TOKEN_ID=BIAS, got {item!r}") from None


def _print_samples(loaded, prompt: str, config, args: argparse.Namespace) -> None:
    from gpt2kit.generate import GenerationConfig, generate, stream

    shown_prompt = "" if args.unconditional else prompt
    header = lambda index: print(f"{SAMPLE_SEPARATOR} SAMPLE {index + 1} {SAMPLE_SEPARATOR}")
    if not args.stream:
        completions = generate(loaded.model, loaded.tokenizer, [prompt] * args.num_samples, config)
        for index, completion in enumerate(completions):
            if args.num_samples > 1:
                header(index)
            print(shown_prompt + completion.text, flush=True)
        return
    for index in range(args.num_samples):
        if args.num_samples > 1:
            header(index)
        # Sample i uses seed + i, as generate() gives it when batching the samples.
        seed = None if config.seed is None else config.seed + index
        sys.stdout.write(shown_prompt)
        for delta in stream(loaded.model, loaded.tokenizer, prompt, GenerationConfig(**{**vars(config), "seed": seed})):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()


def cmd_sample(args: argparse.Namespace) -> int:
    from gpt2kit.checkpoint import load
    from gpt2kit.inference import prepare_for_decoding

    config = _generation_config(args)
    sources = sum(bool(x) for x in (args.prompt is not None, args.prompt_file, args.unconditional, args.interactive))
    if sources != 1:
        raise GPT2KitError("give exactly one of --prompt, --prompt-file, --unconditional or --interactive")
    if args.num_samples < 1:
        raise GPT2KitError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise GPT2KitError(f"{args.prompt_file}: not UTF-8 (byte {err.start})") from None
    else:
        prompt = args.prompt or ""  # --unconditional: an empty prompt starts from <|endoftext|>
    loaded = load(args.model, device=args.device, quantize=args.quantize)
    prepare_for_decoding(loaded.model)
    if not args.interactive:
        _print_samples(loaded, prompt, config, args)
        return 0
    # As openai/gpt-2's interactive_conditional_samples.py: ask, sample, repeat until EOF.
    while True:
        try:
            prompt = input("Model prompt >>> ")
        except EOFError:
            print()
            return 0
        if not prompt.strip():
            print("Prompt should not be empty!")
            continue
        _print_samples(loaded, prompt, config, args)
        print(SAMPLE_SEPARATOR * 2)


def _executor_config(args: argparse.Namespace):
    """The --executor options as an ExecutorConfig (`--workers` caps the tasks run at once)."""
    from gpt2kit.cli_parser import EXECUTOR_FLAGS
    from gpt2kit.config import load_config
    from gpt2kit.executors import ExecutorConfig

    sbatch = {}
    for item in args.sbatch or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GPT2KitError(f"--sbatch {item}: expected KEY=VALUE, e.g. account=lm")
        sbatch[key.strip()] = value
    values = {name: getattr(args, name) for name in EXECUTOR_FLAGS}
    values |= {"kind": args.executor, "workers": args.workers}
    config = load_config(ExecutorConfig, flags=values, source="executor")
    config.sbatch_args = sbatch
    return config


def _config_flags(args: argparse.Namespace, config_class: type) -> dict:
    """The flags named after `config_class`'s fields (None where not given), for the file-then-flags merge."""
    return {f.name: getattr(args, f.name, None) for f in fields(config_class)}


def _section_flags(args: argparse.Namespace, section: str) -> dict:
    """The flags of a config's nested `section` (dests `section.field`), by field name."""
    prefix = f"{section}."
    return {dest.removeprefix(prefix): value for dest, value in vars(args).items() if dest.startswith(prefix)}


def cmd_serve(args: argparse.Namespace) -> int:
    from gpt2kit.config import load_config
    from gpt2kit.serve import ServerConfig, serve

    flags = _config_flags(args, ServerConfig)
    config = load_config(ServerConfig, args.config, section="serve", flags=flags)
    if not config.model:
        raise GPT2KitError("give --model (or model in the --config file)")
    serve(config)
    return 0


# -- data and training ----------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from gpt2kit.config import given
    from gpt2kit.data.prepare import PrepareConfig, prepare

    options = _config_flags(args, PrepareConfig) | {"progress": not args.quiet}
    executor = _executor_config(args) if args.executor or args.tasks else None
    result = prepare(args.input or [], args.tokenizer, args.out, executor, args.tasks, **given(options))
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
    from gpt2kit.config import load_config
    from gpt2kit.train import train
    from gpt2kit.train_config import TrainConfig

    flags = _config_flags(args, TrainConfig)
    config = load_config(TrainConfig, args.config, flags=flags, overrides=args.set, check=False)
    if args.config is None:
        print(f"no --config: training on the defaults: {config.describe()}")
    result = train(config, resume=args.resume)
    if result.checkpoint is not None:
        loss = f"{result.loss:.4f}" if result.loss is not None else "n/a"
        val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
        print(f"step {result.step}: {result.tokens:,} tokens, loss {loss}, val_loss {val}")
        print(f"checkpoint: {result.checkpoint}")
        print(f"metrics: {result.run_dir / 'metrics.jsonl'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from gpt2kit.study.report import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


# -- eval ---------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from gpt2kit.cli_values import parse_data_assignments, parse_tasks
    from gpt2kit.config import load_config
    from gpt2kit.evals import (
        EvalOptions,
        evaluate,
        markdown_table,
        task_listing,
        write_results,
        write_samples,
    )

    if args.list:
        print(task_listing())
        return 0
    if not args.model or not args.tasks:
        raise GPT2KitError("--model and --tasks are required (or use --list)")
    flags = _config_flags(args, EvalOptions)
    flags["lambada_stopword_filter"] = True if args.lambada_stopword_filter else None
    eval_options = load_config(EvalOptions, args.config, section="eval", flags=flags)
    tasks = parse_tasks(args.tasks)
    data = parse_data_assignments(args.data)
    # Refuse a file of the user's before the evaluation runs, not after.
    from gpt2kit.outputs import EVAL_RESULTS, EVAL_SAMPLES, check_file_output

    for path, kind in ((args.out, EVAL_RESULTS), (args.log_samples, EVAL_SAMPLES)):
        if path:
            check_file_output(path, kind)

    from gpt2kit.checkpoint import load
    from gpt2kit.inference import prepare_for_decoding

    loaded = load(args.model, device=args.device, quantize=args.quantize)
    prepare_for_decoding(loaded.model)
    name = args.model.rstrip("/")  # as the user named it: a run, a model directory or a hub id
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


def _setup_logging(verbose: bool) -> None:
    """gpt2kit's own progress at INFO; other libraries' chatter only with -v (their warnings always)."""
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("gpt2kit").setLevel(logging.INFO)


# The flag that sets each setting a library error names (`GPT2KitError.setting`, "name" or "name.key").
FLAG_HINTS = {
    "overwrite": "pass --overwrite to replace it",
    "data": "pass --data {key}=PATH",
    "resume": "pass --resume to continue it",
    "expected_ngrams": "leave out --expected-ngrams",
}


def _flag_hint(err: GPT2KitError) -> str:
    name, _, key = (err.setting or "").partition(".")
    hint = FLAG_HINTS.get(name)
    return f" ({hint.format(key=key)})" if hint else ""


# The commands, by the handler name their parser sets.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "tokenizer_train": cmd_tokenizer_train,
    "tokenizer_encode": cmd_tokenizer_encode,
    "tokenizer_decode": cmd_tokenizer_decode,
    "tokenizer_info": cmd_tokenizer_info,
    "info": cmd_info,
    "convert": cmd_convert,
    "synth": cmd_synth,
    "demo": cmd_demo,
    "sweep": cmd_sweep,
    "webtext_build": cmd_webtext_build,
    "overlap_build": cmd_overlap_build,
    "overlap_check": cmd_overlap_check,
    "demonstrations": cmd_demonstrations,
    "sample": cmd_sample,
    "serve": cmd_serve,
    "prepare": cmd_prepare,
    "train": cmd_train,
    "plot": cmd_plot,
    "eval": cmd_eval,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    func = COMMANDS[args.handler]
    try:
        if getattr(args, "out", None):
            check_target(args.out, directory=args.out_kind == "dir", replaced_whole=args.out_kind == "file")
        return func(args)
    except GPT2KitError as err:
        print(f"gpt2kit {args.command}: error: {err}{_flag_hint(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # "PATH: No space left on device", not "[Errno 28] ..."
        where = f"{err.filename}: " if err.filename else ""
        print(f"gpt2kit {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt2kit: interrupted", file=sys.stderr)
        return 130
