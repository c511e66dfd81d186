"""The `gpt2kit` command: a thin layer of argparse over library functions.

Each command parses its arguments, calls the library, and prints the result.
Bad input surfaces as GPT2KitError (or OSError) and becomes one line on stderr
with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
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


def cmd_synth(args: argparse.Namespace) -> int:
    from gpt2kit.study.synth import DEFAULT_MIX, SynthConfig, generate, parse_mix

    config = SynthConfig(
        size_mb=args.size_mb,
        seed=args.seed,
        mix=parse_mix(args.mix) if args.mix else dict(DEFAULT_MIX),
        eval_examples=args.eval_examples,
    )
    result = generate(args.out, config, progress=True)
    print(result.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gpt2kit.study.demo import run_demo

    for line in run_demo(Path(args.out), quick=args.quick, seed=args.seed):
        print(line)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from gpt2kit.study.report import markdown_table, trend_lines
    from gpt2kit.study.sweep import SweepConfig, default_columns, parse_eval_jobs, run_sweep

    config = SweepConfig(
        data=args.data,
        out=args.out,
        sizes=[s.strip() for s in args.sizes.split(",") if s.strip()],
        tokens=args.tokens,
        eval_jobs=parse_eval_jobs(args.eval_tasks, args.eval_data),
        config=args.config,
        overrides=args.set,
        eval_data_dir=args.eval_data_dir,
        eval_limit=args.eval_limit,
        eval_shots=args.eval_shots,
        no_detokenize=tuple(t for t in (args.no_detokenize or "").split(",") if t),
        prompts=args.prompt or [""],
        device=args.device,
        seed=args.seed,
    )
    report, results = run_sweep(config)
    if report is None:
        return 0  # a torchrun rank other than 0: it trained, rank 0 reports
    from gpt2kit.study.report import ModelReport

    models = [ModelReport(r.size, r.params, r.results) for r in results]
    columns = default_columns(config.eval_jobs)
    print(markdown_table(models, columns, {}))
    print("\n".join(trend_lines(models, columns, {})))
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
        "reddit": {"min_karma": args.min_karma, "cutoff": args.cutoff, "subreddit_blocklist": args.subreddit_blocklist},
        "filters": {"domain_blocklist": args.domain_blocklist, "min_words": args.min_words},
    }
    config = load_config(WebTextConfig, args.config, flags=flags, overrides=args.set, check=False)
    report = build_webtext(config)
    print(format_stage_table(report))
    print(f"{report.documents:,} documents in {len(report.shards)} shards -> {report.out}")
    if report.top_domains:
        print("top domains: " + ", ".join(f"{d} ({n})" for d, n in report.top_domains[:10]))
    return 0


# -- overlap (the paper's 8-gram Bloom filter analysis) ------------------------------


def cmd_overlap_build(args: argparse.Namespace) -> int:
    from gpt2kit.data.bloom import build_filter

    result = build_filter(
        args.corpus,
        args.out,
        fpr=args.fpr,
        workers=args.workers,
        text_field=args.text_field,
        expected_ngrams=args.expected_ngrams,
    )
    params = result.params
    print(f"{result.ngrams:,} 8-grams from {result.documents:,} documents in {result.files} files -> {result.path}")
    print(
        f"m={params.m:,} bits ({params.nbytes / 1e6:.1f} MB), k={params.k}, false-positive bound {params.fpr_bound:.2e}"
    )
    print(f"insert: {result.seconds:.1f} s, {result.ngrams_per_second:,.0f} 8-grams/s with {result.workers} processes")
    return 0


def cmd_overlap_check(args: argparse.Namespace) -> int:
    import json

    from gpt2kit.data.bloom import BloomFilter
    from gpt2kit.data.overlap import check_overlap, format_table

    rows = check_overlap(args.filter, args.test, unit=args.unit, field=args.field, flags_out=args.flags)
    print(format_table(rows, BloomFilter.open(args.filter).header))
    if args.json:
        from gpt2kit.io import atomic_write_text

        atomic_write_text(args.json, json.dumps([row.summary() for row in rows], indent=2) + "\n")
    return 0


# -- sampling and serving -----------------------------------------------------------

SAMPLE_SEPARATOR = "=" * 40


def _generation_config(args: argparse.Namespace):
    """Generation settings: the paper's sampling defaults, then --config (TOML/YAML), then the flags given."""
    from gpt2kit.config import load_config
    from gpt2kit.generate import PAPER_TOP_K, GenerationConfig

    flags = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k}
    flags |= {"top_p": args.top_p, "seed": args.seed, "stop": args.stop}
    base = GenerationConfig(top_k=PAPER_TOP_K)
    return load_config(GenerationConfig, args.config, section="generation", flags=flags, base=base)


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
    from gpt2kit.generate import apply_decode_layout

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
    loaded = load(args.model, device=args.device)
    apply_decode_layout(loaded.model)
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


SERVE_OPTIONS = (
    "model",
    "host",
    "port",
    "model_name",
    "api_key",
    "device",
    "max_prompt_tokens",
    "max_tokens_cap",
    "max_n",
    "max_choices",
    "max_body_bytes",
    "request_timeout_s",
    "max_batch_size",
)


def cmd_serve(args: argparse.Namespace) -> int:
    from gpt2kit.config import load_config
    from gpt2kit.serve import ServerConfig, serve

    flags = {name: getattr(args, name) for name in SERVE_OPTIONS}
    config = load_config(ServerConfig, args.config, section="serve", flags=flags)
    if not config.model:
        raise GPT2KitError("give --model (or model in the --config file)")
    serve(config)
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
    from gpt2kit.config import load_config
    from gpt2kit.train import train
    from gpt2kit.train_config import TrainConfig

    flags = {"data": args.data, "out": args.out, "preset": args.preset, "init_from": args.init_from}
    flags |= {"max_steps": args.max_steps, "seed": args.seed, "compile": True if args.compile else None}
    config = load_config(TrainConfig, args.config, flags=flags, overrides=args.set, check=False)
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
    from gpt2kit.config import load_config
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
    flags = {"limit": args.limit, "batch_size": args.batch_size, "context_length": args.context_length}
    flags |= {"stride": args.stride, "shots": args.shots, "seed": args.seed, "no_detokenize": args.no_detokenize}
    flags |= {"lambada_stopword_filter": True if args.lambada_stopword_filter else None}
    eval_options = load_config(EvalOptions, args.config, section="eval", flags=flags)
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
    p = commands.add_parser("synth", help="generate a synthetic web with naturally occurring tasks, and eval sets")
    p.add_argument("--out", required=True, help="directory for train/ shards, eval/ sets and manifest.json")
    p.add_argument("--size-mb", type=float, default=20.0, help="megabytes of training documents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", help="document kinds and weights, e.g. story=0.3,forum=0.1 (default: all kinds)")
    p.add_argument("--eval-examples", type=int, default=200, help="held-out examples per evaluation set")
    p.set_defaults(func=cmd_synth)
    p = commands.add_parser("demo", help="run the main job end to end, offline")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--quick", action="store_true", help="one small model, for CI")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    p = commands.add_parser("sweep", help="train several model sizes on the same data and budget, evaluate, report")
    p.add_argument("--data", required=True, help="a prepared data directory (gpt2kit prepare)")
    p.add_argument("--sizes", required=True, help="model presets, comma-separated (see gpt2kit info)")
    p.add_argument("--tokens", type=int, required=True, help="training tokens for every size")
    p.add_argument("--eval-tasks", required=True, help="eval tasks, comma-separated; NAME=TASK runs TASK as NAME")
    p.add_argument("--config", help="a gpt2kit train config (TOML or YAML); its preset and max_steps are set per size")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="train config overrides")
    p.add_argument("--eval-data", action="append", default=[], metavar="NAME[:examples]=PATH")
    p.add_argument("--eval-data-dir", help="directory with the eval tasks' standard file names")
    p.add_argument("--eval-limit", type=int, help="examples per eval task")
    p.add_argument("--eval-shots", type=int, help="example pairs for translation and question answering")
    p.add_argument("--no-detokenize", help="eval tasks whose detokenizer is off, comma-separated")
    p.add_argument("--prompt", action="append", help="a sample prompt (repeatable; default: unconditional)")
    p.add_argument("--device", default="auto", help="where evaluation and sampling run (default: CUDA if present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="sweep-out")
    p.set_defaults(func=cmd_sweep)


def add_webtext_commands(commands) -> None:
    """`webtext build` (the corpus) and `overlap build|check` (its 8-gram overlap with test sets)."""
    web = commands.add_parser("webtext", help="build a WebText-style corpus from Reddit links, URLs, WARC or HTML")
    web_commands = web.add_subparsers(dest="webtext_command", required=True, metavar="ACTION")
    p = web_commands.add_parser("build", help="read, fetch, extract, filter, deduplicate and write shards")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--reddit", nargs="+", metavar="FILE", help="Reddit submission dumps (JSON lines, .zst ok)")
    source.add_argument("--urls", metavar="FILE", help="a URL list, one per line")
    source.add_argument("--warc", nargs="+", metavar="FILE", help="WARC files")
    source.add_argument("--html-dir", metavar="DIR", help="a directory of saved HTML pages")
    p.add_argument("--out", required=True, help="output directory (shards, stats.json, domains.tsv)")
    p.add_argument("--workers", type=int, help="processes (tasks) per stage (default 1)")
    p.add_argument("--config", help="TOML or YAML settings (see gpt2kit/webtext/config.py)")
    p.add_argument("--min-karma", type=int, help="Reddit: minimum score (default 3)")
    p.add_argument("--cutoff", help="Reddit: drop submissions created on or after this date (default 2018-01-01)")
    p.add_argument("--subreddit-blocklist", help="Reddit: comma-separated subreddits to skip")
    p.add_argument("--domain-blocklist", help="comma-separated domains to drop (with their subdomains)")
    p.add_argument("--min-words", type=int, help="minimum words per document (default 64)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any setting, e.g. fetch.per_domain_delay=2")
    p.set_defaults(func=cmd_webtext_build)
    _add_overlap_commands(commands)


def _add_overlap_commands(commands) -> None:
    ov = commands.add_parser("overlap", help="8-gram Bloom filter overlap between a corpus and test sets")
    ov_commands = ov.add_subparsers(dest="overlap_command", required=True, metavar="ACTION")
    p = ov_commands.add_parser("build", help="build a Bloom filter of every 8-gram of a corpus")
    p.add_argument("--corpus", nargs="+", required=True, help="text files, JSON-lines shards (.jsonl[.gz|.zst]), dirs")
    p.add_argument("--out", required=True, help="filter file to write")
    p.add_argument("--fpr", type=float, default=1e-8, help="false-positive rate bound (default 1e-8)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--text-field", default="text", help="field holding the text in JSON lines")
    p.add_argument("--expected-ngrams", type=int, help="size for this many 8-grams and skip the counting pass")
    p.set_defaults(func=cmd_overlap_build)
    p = ov_commands.add_parser("check", help="report how much of each test set's 8-grams the filter holds")
    p.add_argument("--filter", required=True)
    p.add_argument("--test", nargs="+", required=True, help="test files (.txt, .jsonl)")
    p.add_argument(
        "--unit", default="auto", choices=["auto", "line", "wikitext", "file"], help="example unit of text files"
    )
    p.add_argument("--field", help="JSON field of each example (default: text/article/question/...)")
    p.add_argument("--flags", help="write per-example overlap flags here (JSON lines)")
    p.add_argument("--json", help="write the table as JSON here")
    p.set_defaults(func=cmd_overlap_check)


def add_sampling_commands(commands) -> None:
    p = commands.add_parser("sample", help="sample text from a model (greedy with --temperature 0)")
    p.add_argument("--model", required=True, help="a model directory or hub id")
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    p.add_argument("--unconditional", action="store_true", help="sample from <|endoftext|>, as the paper did")
    p.add_argument("--interactive", action="store_true", help="a prompt loop on stdin")
    p.add_argument("--config", help="a TOML/YAML file of generation settings; flags override it")
    p.add_argument("--max-new-tokens", type=int, help="default 64")
    p.add_argument("--temperature", type=float, help="default 1.0; 0 is greedy (argmax)")
    p.add_argument("--top-k", type=int, help="default 40, as the paper's samples; 0 turns it off")
    p.add_argument("--top-p", type=float, help="nucleus sampling; default 1.0 (off)")
    p.add_argument("--seed", type=int, help="sample i uses seed + i")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser("serve", help="an OpenAI-compatible completions server with a playground page")
    p.add_argument("--model", help="a model directory or hub id")
    p.add_argument("--config", help="a TOML/YAML file of server settings; flags override it")
    p.add_argument("--host", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--model-name", help="the id clients see (default: the directory name)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--device", help="default cpu")
    p.add_argument("--max-prompt-tokens", type=int, help="default: the model's context")
    p.add_argument("--max-tokens-cap", type=int, help="largest max_tokens a request may ask for (default 1024)")
    p.add_argument("--max-n", type=int, help="largest n a request may ask for (default 8)")
    p.add_argument("--max-choices", type=int, help="largest prompts x n in one request (default 32)")
    p.add_argument("--max-body-bytes", type=int, help="default 1000000")
    p.add_argument("--request-timeout", dest="request_timeout_s", type=float, help="seconds (default 300)")
    p.add_argument("--max-batch-size", type=int, help="sequences decoded together (default 16)")
    p.set_defaults(func=cmd_serve)


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
    add_webtext_commands,
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


def _setup_logging(verbose: bool) -> None:
    """gpt2kit's own progress at INFO; other libraries' chatter only with -v (their warnings always)."""
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("gpt2kit").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (GPT2KitError, OSError) as err:
        print(f"gpt2kit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpt2kit: interrupted", file=sys.stderr)
        return 130
