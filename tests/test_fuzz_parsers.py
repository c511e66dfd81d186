"""Fuzzing every parser of outside input: each example ends in success or a GPT2KitError, nothing else.

Valid files are mutated (a value anywhere replaced by another JSON value, a key dropped, a tensor's shape,
dtype or values changed, a header field set to an extreme) or replaced by arbitrary text. Each example runs
under hypothesis's deadline, and with the process's address space capped a couple of GiB above what it
uses, so an allocation sized by a declared count fails the example instead of passing slowly. The default
run is small; `pytest -m slow` runs many more examples.
"""

import contextlib
import json
import re
import resource
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_formats import nanogpt_tensors

import gpt2kit
from gpt2kit.errors import GPT2KitError

EXAMPLES, SLOW_EXAMPLES = 40, 1000
SETTINGS = dict(deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow], derandomize=True)
TINY_VOCAB = 512  # model rows for the nanoGPT and llm.c cases: above the tiny tokenizer's size


def fuzz(test):
    """Two tests from one body: a few examples by default, many under the slow mark."""
    quick = settings(max_examples=EXAMPLES, **SETTINGS)(given(data=st.data())(test))
    slow = pytest.mark.slow(settings(max_examples=SLOW_EXAMPLES, **SETTINGS)(given(data=st.data())(test)))
    return quick, slow


@contextlib.contextmanager
def memory_cap(extra: int = 2 << 30):
    """Cap this process's address space at what it maps now plus `extra` bytes, for the block."""
    mapped = int(re.search(r"VmSize:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def survive(action) -> None:
    """Run `action` under the memory cap: returning or a GPT2KitError are both fine outcomes."""
    with memory_cap(), contextlib.suppress(GPT2KitError):
        action()


@contextlib.contextmanager
def scratch():
    directory = Path(tempfile.mkdtemp(prefix="gpt2kit-fuzz-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- JSON values and mutations ----------------------------------------------------------------------------------

EXTREME_INTS = [0, -1, 1, 2, 3, 255, 256, 10**12, 2**31 - 1, 2**63, 2**70, -(2**70)]
scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from(EXTREME_INTS)
    | st.integers(-1000, 100_000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "<|endoftext|>", "Ġ", "a b", "ByteLevel", "Sequence", "BPE", "x" * 3000])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def paths_of(value, prefix=()):
    """Every place in a JSON document: tuples of keys and indexes, the root being ()."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths_of(child, (*prefix, index))


def mutate(data, document):
    """`document` with one to three places replaced by another JSON value or removed."""
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(paths_of(document))
        path = data.draw(st.sampled_from(paths))
        replacement = data.draw(json_values)
        if not path:
            document = replacement
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()):
            parent[path[-1]] = replacement
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return document


def text_of(data, document) -> str:
    """The document as JSON text, sometimes wrapped in deep nesting or replaced by arbitrary text."""
    choice = data.draw(st.sampled_from(["json", "json", "json", "nested", "text"]))
    if choice == "text":
        return data.draw(st.text(max_size=200))
    text = json.dumps(document)
    if choice == "nested":
        depth = data.draw(st.integers(1, 5000))
        text = "[" * depth + text + "]" * depth
    return text


# -- tokenizer files ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory, tiny_tokenizer):
    directory = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save(directory)
    return {p.name: p.read_text(encoding="utf-8") for p in directory.iterdir()}


def exercise_tokenizer(directory: Path) -> None:
    """Load, then encode and decode: a tokenizer that loads must also work (an empty added token once hung)."""
    tokenizer = gpt2kit.load_tokenizer(directory)
    ids = tokenizer.encode("Hello world <|endoftext|> naïve", allowed_special="all")
    tokenizer.decode(ids)


def tokenizer_case(data, tokenizer_files, name: str, keep: tuple[str, ...]):
    with scratch() as directory:
        for other in keep:
            (directory / other).write_text(tokenizer_files[other], encoding="utf-8")
        if name == "merges.txt":
            lines = tokenizer_files[name].splitlines()
            index = data.draw(st.integers(0, len(lines) - 1))
            lines[index] = data.draw(st.text(max_size=30) | st.sampled_from(["", "a", "a b c", "Ġ Ġ", "#version"]))
            text = "\n".join(lines)
        else:
            text = text_of(data, mutate(data, json.loads(tokenizer_files[name])))
        (directory / name).write_text(text, encoding="utf-8")
        survive(lambda: exercise_tokenizer(directory))


def tokenizer_json_case(data, tokenizer_files):
    tokenizer_case(data, tokenizer_files, "tokenizer.json", ("tokenizer_config.json",))


def vocab_json_case(data, tokenizer_files):
    tokenizer_case(data, tokenizer_files, "vocab.json", ("merges.txt", "tokenizer_config.json"))


def merges_txt_case(data, tokenizer_files):
    tokenizer_case(data, tokenizer_files, "merges.txt", ("vocab.json",))


def tokenizer_config_case(data, tokenizer_files):
    tokenizer_case(data, tokenizer_files, "tokenizer_config.json", ("vocab.json", "merges.txt"))


test_tokenizer_json, test_tokenizer_json_slow = fuzz(tokenizer_json_case)
test_vocab_json, test_vocab_json_slow = fuzz(vocab_json_case)
test_merges_txt, test_merges_txt_slow = fuzz(merges_txt_case)
test_tokenizer_config_json, test_tokenizer_config_json_slow = fuzz(tokenizer_config_case)


# -- model files ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    from gpt2kit.model import GPT, GPTConfig

    directory = tmp_path_factory.mktemp("model")
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, n_positions=16, n_layer=2, n_head=2, n_embd=8))
    gpt2kit.save(model, tiny_tokenizer, directory)
    return directory


def use(loaded) -> None:
    """A model that loads must also run."""
    loaded.model(torch.zeros(1, 1, dtype=torch.long))


def config_json_case(data, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    # Most mutations hit a size field: the ones a hostile file would use to make loading allocate.
    for field in data.draw(st.lists(st.sampled_from(["n_layer", "n_embd", "n_head", "n_positions", "n_inner",
                                                        "vocab_size", "n_ctx"]), max_size=2)):  # fmt: skip
        config[field] = data.draw(st.sampled_from(EXTREME_INTS) | json_values)
    with scratch() as directory:
        for file in model_dir.iterdir():
            shutil.copy(file, directory / file.name)
        (directory / "config.json").write_text(
            text_of(data, mutate(data, config) if data.draw(st.booleans()) else config)
        )
        survive(lambda: use(gpt2kit.load(directory)))


test_config_json, test_config_json_slow = fuzz(config_json_case)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool,
          torch.complex64, torch.float8_e4m3fn, torch.uint8]  # fmt: skip


def tensor_mutation(data, tensor: torch.Tensor) -> torch.Tensor:
    kind = data.draw(st.sampled_from(["shape", "dtype", "value", "sparse", "transpose"]))
    if kind == "shape":
        return torch.zeros(data.draw(st.lists(st.integers(0, 5), max_size=3)))
    if kind == "dtype":
        return tensor.to(data.draw(st.sampled_from(DTYPES)))
    if kind == "value":
        if tensor.layout != torch.strided or tensor.dtype not in DTYPES[:4] or not tensor.numel():
            return tensor
        tensor = tensor.contiguous().clone()
        tensor.view(-1)[data.draw(st.integers(0, tensor.numel() - 1))] = data.draw(
            st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e38, 0.0])
        )
        return tensor
    if kind == "sparse":
        return tensor.to_sparse()
    return tensor.t() if tensor.dim() == 2 else tensor


def nanogpt_case(data, tiny_tokenizer):
    sd = nanogpt_tensors(seed=0, vocab=TINY_VOCAB, bias=data.draw(st.booleans()))
    bias = "transformer.ln_f.bias" in sd
    for _ in range(data.draw(st.integers(0, 3))):
        name = data.draw(st.sampled_from(sorted(k for k, v in sd.items() if isinstance(k, str) and torch.is_tensor(v))))
        action = data.draw(st.sampled_from(["tensor", "drop", "key", "value", "duplicate", "layer"]))
        if action == "tensor":
            sd[name] = tensor_mutation(data, sd[name])
        elif action == "drop":
            del sd[name]
        elif action == "key":
            sd[data.draw(st.sampled_from([5, None, ("a",), 2.5, b"x"]))] = torch.zeros(2)
        elif action == "value":
            sd[name] = data.draw(st.sampled_from([5, "x", [torch.zeros(2)], {"a": torch.zeros(2)}, None]))
        elif action == "duplicate":
            sd["_orig_mod." + name] = sd[name]
        else:
            sd[f"transformer.h.{data.draw(st.sampled_from(EXTREME_INTS[2:]))}.ln_1.weight"] = torch.ones(32)
    from test_formats import C, L, T

    args = dict(n_layer=L, n_head=4, n_embd=C, block_size=T, bias=bias, vocab_size=TINY_VOCAB, dropout=0.0)
    for field in data.draw(st.lists(st.sampled_from(sorted(args)), max_size=2)):
        args[field] = data.draw(st.sampled_from(EXTREME_INTS) | scalars)
    checkpoint = {"model": sd, "model_args": args, "iter_num": 1}
    if data.draw(st.integers(0, 4)) == 0:
        checkpoint["gpt2kit_config"] = data.draw(json_values)
    if data.draw(st.integers(0, 9)) == 0:
        checkpoint = data.draw(st.sampled_from([[], 5, {"model": 5}, {"model": sd}, {"model": sd, "model_args": []}]))
    with scratch() as directory:
        torch.save(checkpoint, directory / "ckpt.pt")
        survive(lambda: use(gpt2kit.load(directory / "ckpt.pt", tokenizer=tiny_tokenizer)))


test_nanogpt_checkpoint, test_nanogpt_checkpoint_slow = fuzz(nanogpt_case)


def pytorch_model_bin_case(data, model_dir):
    weights = load_file(model_dir / "model.safetensors")
    name = data.draw(st.sampled_from(sorted(weights)))
    weights[name] = tensor_mutation(data, weights[name])
    if data.draw(st.booleans()):
        weights[data.draw(st.sampled_from([5, None, "transformer.h.7.ln_1.weight", "wte.weight"]))] = torch.ones(8)
    with scratch() as directory:
        for file in model_dir.iterdir():
            if file.name != "model.safetensors":
                shutil.copy(file, directory / file.name)
        torch.save(weights, directory / "pytorch_model.bin")
        survive(lambda: use(gpt2kit.load(directory)))


test_pytorch_model_bin, test_pytorch_model_bin_slow = fuzz(pytorch_model_bin_case)


INT32 = [0, 1, -1, 3, 5, 128, 2**31 - 1, -(2**31), 20240326]


def llmc_case(data, tiny_tokenizer):
    from gpt2kit.formats import llmc
    from gpt2kit.model import GPTConfig

    fields = [20240326, 3, 4, 300, 1, 2, 8, 384]  # magic, version, T, V, L, heads, C, padded V
    for index in data.draw(st.lists(st.integers(0, 7), max_size=3)):
        fields[index] = data.draw(st.sampled_from(INT32) | st.integers(-(2**31), 2**31 - 1))
    header = np.zeros(256, dtype="<i4")
    header[:8] = fields
    try:  # the body the header describes, when it is small enough to write
        config = GPTConfig(vocab_size=fields[7], n_positions=fields[2], n_layer=fields[4], n_head=fields[5],
                           n_embd=fields[6])  # fmt: skip
        size = sum(int(np.prod(shape, dtype=object)) for _, shape in llmc._layout(config)) * 4
    except GPT2KitError:
        size = 64
    size = size if size < 1 << 22 else 64
    size += data.draw(st.sampled_from([0, 0, 0, -4, 4, -size]))
    body = np.random.default_rng(data.draw(st.integers(0, 2**32))).standard_normal(max(size, 0) // 4, np.float32)
    if data.draw(st.booleans()) and body.size:
        body[data.draw(st.integers(0, body.size - 1))] = data.draw(st.sampled_from([np.nan, np.inf]))
    with scratch() as directory:
        (directory / "model.bin").write_bytes(header.tobytes() + body.tobytes()[: max(size, 0)])
        survive(lambda: use(gpt2kit.load(directory / "model.bin", tokenizer=tiny_tokenizer)))


test_llmc_header, test_llmc_header_slow = fuzz(llmc_case)


# -- the shard manifest -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_manifest(tmp_path_factory):
    from gpt2kit.data.shards import GroupInfo, Manifest, ShardInfo, write_shard

    directory = tmp_path_factory.mktemp("shards")
    tokens = np.arange(100, dtype=np.uint16)
    digest = write_shard(directory / "train-000000.bin", tokens, 3, np.dtype(np.uint16))
    manifest = Manifest(
        tokenizer={"name": "t", "sha256": "0" * 64, "vocab_size": 400, "eot_token": 399},
        dtype="uint16",
        settings={"val_fraction": 0.1},
        shards=[ShardInfo("train-000000.bin", "train", 0, 3, 100, 400, digest)],
        groups=[GroupInfo(0, 0, 1, "0" * 64)],
        complete=True,
    )
    manifest.save(directory)
    return directory


def manifest_case(data, prepared_manifest):
    from gpt2kit.data.shards import Manifest

    with scratch() as directory:
        shutil.copy(prepared_manifest / "train-000000.bin", directory)
        manifest = json.loads((prepared_manifest / "manifest.json").read_text())
        (directory / "manifest.json").write_text(text_of(data, mutate(data, manifest)))

        def read_and_verify():
            loaded = Manifest.load(directory)
            loaded.verify(directory)
            loaded.split_stats("train")

        survive(read_and_verify)


test_shard_manifest, test_shard_manifest_slow = fuzz(manifest_case)


# -- every eval task's JSON input ------------------------------------------------------------------------------

EVAL_RECORDS = {
    "lambada": ("lambada.jsonl", [{"text": "the cat sat on the mat"}]),
    "winograd": ("winograd.jsonl", [{"context_options": ["The cup", "The jug"], "continuation": "was full.", "gold": 1}]),
    "qa": ("nq.jsonl", [{"question": "who wrote it", "answer": ["someone", "a person"]}]),
    "summarization": ("cnndm.jsonl", [{"article": "A long article.", "highlights": "Short."}]),
    "coqa": ("coqa.json", {"data": [{"id": "s1", "story": "A story.", "questions": [{"turn_id": 1, "input_text": "Who?"}],
                                     "answers": [{"turn_id": 1, "input_text": "Me"}],
                                     "additional_answers": {"0": [{"turn_id": 1, "input_text": "I"}]}}]}),
}  # fmt: skip


def eval_loader(task: str):
    from gpt2kit.evals import choice, coqa, lambada, qa, summarization

    return {
        "lambada": lambda source: lambada.load_passages(source, detokenize=True),
        "winograd": choice.load_winograd,
        "qa": qa.load_questions,
        "summarization": summarization.load_articles,
        "coqa": coqa.load_stories,
    }[task]


def eval_data_case(data):
    from gpt2kit.evals.data import file_source

    task = data.draw(st.sampled_from(sorted(EVAL_RECORDS)))
    name, document = EVAL_RECORDS[task]
    document = mutate(data, json.loads(json.dumps(document)))
    with scratch() as directory:
        if name.endswith(".jsonl"):
            records = document if isinstance(document, list) else [document]
            text = "\n".join(text_of(data, record) for record in records)
        else:
            text = text_of(data, document)
        (directory / name).write_text(text, encoding="utf-8")
        survive(lambda: eval_loader(task)(file_source(directory / name)))


test_eval_data, test_eval_data_slow = fuzz(eval_data_case)
