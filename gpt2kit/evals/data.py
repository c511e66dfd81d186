"""Finding, hashing and reading evaluation data, with one clear error line for each way it can be wrong.

A task's data comes from `--data TASK=PATH` (PATH may be `hf` or
`hf:NAME[:CONFIG][@SPLIT]` for a Hugging Face dataset), or else from the
task's standard file names under `--data-dir`. Few-shot example pools (NQ,
translation) use the key `TASK:examples`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2kit.errors import GPT2KitError
from gpt2kit.io import file_sha256, iter_jsonl, parse_json, read_text


class EvalDataError(GPT2KitError):
    """Evaluation data is missing or malformed; the message names the file (and line) and what was expected."""


@dataclass(frozen=True)
class HFDataset:
    """A dataset on the Hugging Face hub: `load_dataset(name, config, split=split)`."""

    name: str
    config: str | None
    split: str

    def describe(self) -> str:
        return f"hf:{self.name}" + (f":{self.config}" if self.config else "") + f"@{self.split}"


@dataclass(frozen=True)
class DataSource:
    """Where a task's examples come from: local files, or rows of a HF dataset."""

    paths: tuple[Path, ...] = ()
    hf: HFDataset | None = None
    rows: tuple[dict, ...] | None = None
    sha256: str = ""

    def describe(self) -> str:
        return self.hf.describe() if self.hf else ",".join(str(p) for p in self.paths)

    @property
    def path(self) -> Path:
        if not self.paths:
            raise EvalDataError(f"{self.describe()}: expected a local file")
        return self.paths[0]


def sha256_rows(rows: Sequence[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
    return digest.hexdigest()


def file_source(*paths: Path) -> DataSource:
    for path in paths:
        if not path.is_file():
            raise EvalDataError(f"{path}: no such file")
    hashes = [file_sha256(p) for p in paths]
    combined = hashes[0] if len(hashes) == 1 else hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    return DataSource(paths=tuple(paths), sha256=combined)


def parse_hf_spec(spec: str, default: HFDataset | None, task: str) -> HFDataset:
    """`hf` (the task's default dataset) or `hf:NAME[:CONFIG][@SPLIT]`."""
    if spec == "hf":
        if default is None:
            raise EvalDataError(f"{task}: there is no default Hugging Face dataset; use hf:NAME[:CONFIG][@SPLIT]")
        return default
    body = spec.removeprefix("hf:")
    split = default.split if default else "test"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    if not name or not split:
        raise EvalDataError(f"{task}: {spec!r} is not of the form hf:NAME[:CONFIG][@SPLIT]")
    return HFDataset(name, config or None, split)


def load_hf(dataset: HFDataset, task: str) -> DataSource:
    """Rows of a HF dataset (downloaded, or from the local HF cache; offline without a cache it fails clearly)."""
    try:
        import datasets
    except ImportError:
        raise EvalDataError(f"{task}: loading {dataset.describe()} needs the 'datasets' package") from None
    try:
        loaded = datasets.load_dataset(dataset.name, dataset.config, split=dataset.split)
    except Exception as err:  # offline, unknown name, bad split: all mean "not available here"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise EvalDataError(
            f"{task}: cannot load Hugging Face dataset {dataset.describe()} "
            f"({type(err).__name__}: {first_line[:200]}); offline, give {task} a local data file",
            setting=f"data.{task}",
        ) from None
    rows = tuple(dict(row) for row in loaded)
    if not rows:
        raise EvalDataError(f"{task}: Hugging Face dataset {dataset.describe()} has no rows")
    return DataSource(hf=dataset, rows=rows, sha256=sha256_rows(rows))


def resolve(
    task: str,
    key: str,
    data: Mapping[str, str | os.PathLike],
    data_dir: str | os.PathLike | None,
    standard_names: Sequence[str | tuple[str, ...]],
    hf_default: HFDataset | None = None,
    required: bool = True,
) -> DataSource | None:
    """The data for `key` (a task name, or `TASK:examples`), from `data` or by standard name under `data_dir`.

    A standard name may be a tuple of files that belong together (a translation source and reference).
    A value `SRC,REF` in `data` names such a pair directly.
    """
    if key in data:
        value = str(data[key])
        if value == "hf" or value.startswith("hf:"):
            return load_hf(parse_hf_spec(value, hf_default, key), key)
        paths = [Path(p).expanduser() for p in value.split(",")]
        if len(paths) == 1 and paths[0].is_dir():
            found = _find_standard(paths[0], standard_names)
            if found is None:
                raise EvalDataError(f"{key}: {paths[0]} has none of {_names(standard_names)}")
            return file_source(*found)
        return file_source(*paths)
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        if not directory.is_dir():
            raise EvalDataError(f"data directory {directory}: no such directory")
        found = _find_standard(directory, standard_names)
        if found is not None:
            return file_source(*found)
    if not required:
        return None
    where = f"under {data_dir}" if data_dir is not None else "(no data directory given)"
    raise EvalDataError(
        f"{key}: no data: expected {_names(standard_names)} {where}, or give {key} a data file", setting=f"data.{key}"
    )


def _find_standard(directory: Path, standard_names: Sequence[str | tuple[str, ...]]) -> tuple[Path, ...] | None:
    for name in standard_names:
        group = (name,) if isinstance(name, str) else name
        paths = tuple(directory / n for n in group)
        if all(p.is_file() for p in paths):
            return paths
    return None


def _names(standard_names: Sequence[str | tuple[str, ...]]) -> str:
    return " or ".join(n if isinstance(n, str) else " + ".join(n) for n in standard_names)


# -- readers ----------------------------------------------------------------------------


def iter_records(source: DataSource, required: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for each row of a hub dataset or each line of a JSON-lines file; `where` names it in errors."""
    if source.rows is None:
        for number, record in iter_jsonl(source.path, required):
            yield f"{source.path}:{number}", record
        return
    described = source.describe()
    for index, row in enumerate(source.rows):
        missing = [key for key in required if key not in row]
        if missing:
            raise EvalDataError(
                f"{described} row {index}: missing key {missing[0]!r} (expected keys: {', '.join(required)})"
            )
        yield f"{described} row {index}", row


def read_json(path: Path) -> Any:
    return parse_json(read_text(path), str(path), EvalDataError)


def require_examples(examples: Sequence, source: DataSource, what: str) -> None:
    if not examples:
        raise EvalDataError(f"{source.describe()}: no {what} found")


def expect_str(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise EvalDataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def expect_str_list(value: Any, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise EvalDataError(f"{where}: {key!r} must be a non-empty list of strings")
    return value
