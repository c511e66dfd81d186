"""The one output policy of every command that writes: what it may replace, and one writer at a time.

- A target is sane before anything is written: not the current directory or one above it, not a symlink or a
  device where a whole file or directory would be replaced, a directory where a directory is meant.
- A command never deletes or overwrites what it did not write. A directory a command writes into (a training
  run, prepared data, a corpus build, a report) carries a marker naming that command; an existing directory
  without it is refused unless it is empty (or, for directories made before markers, holds the command's own
  signature files). A model output (a directory in the HF layout, a GGUF, llm.c or nanoGPT file) is replaced
  whole, atomically, only with `overwrite` and only when what is there is a model of that kind.
- One writer at a time: a directory a command writes into is locked (`filelock`, an OS lock that dies with its
  process) for the whole command, and a second writer is refused naming the holder's process id.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from gpt2kit.errors import GPT2KitError

MARKER_NAME = ".gpt2kit-output.json"
LOCK_NAME = ".gpt2kit.lock"
HOLDER_NAME = ".gpt2kit.lock.holder"
OWN_HIDDEN = (MARKER_NAME, LOCK_NAME, HOLDER_NAME)

# What a model directory in the HF layout holds when gpt2kit (or transformers' save_pretrained) wrote it.
MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    }
)


class OutputError(GPT2KitError):
    """The output path cannot be written without losing something, or is not a usable path."""


class OutputExists(OutputError):
    """An earlier output is there; replacing it needs `overwrite` (the CLI says which flag sets it)."""


class OutputBusy(OutputError):
    """Another process is writing the same output."""


def _is_transient(name: str) -> bool:
    """Atomic writes' temporaries (`.NAME.XXXX.tmp`, `.NAME.old`) and the policy's own files."""
    return name in OWN_HIDDEN or (name.startswith(".") and name.endswith((".tmp", ".old", ".lock")))


def _entries(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not _is_transient(name))


def check_target(path: str | os.PathLike, directory: bool, replaced_whole: bool) -> Path:
    """`path` as a usable output path, or one line on why not.

    `replaced_whole`: the output is swapped in by a rename (a model directory, any file), so a symlink or a
    device there would be replaced rather than written through, and the current directory cannot be renamed.
    """
    path = Path(path)
    if str(path) in ("", "."):
        path = Path(".")
    absolute = Path(os.path.abspath(path))  # . and .. resolved by name, symlinks kept
    if replaced_whole:
        cwd = Path(os.getcwd())
        if absolute == cwd or absolute in cwd.parents:
            raise OutputError(f"{path}: is the current directory or one above it; name a new directory for the output")
    try:
        info = os.lstat(absolute)
    except (FileNotFoundError, NotADirectoryError):  # the latter: an ancestor is a file, said below
        info = None
    except OSError as err:
        raise OutputError(f"{path}: cannot be used as the output ({err.strerror or err})") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            if replaced_whole:
                raise OutputError(f"{path}: is a symbolic link; name the real path (it would be replaced)")
            if not absolute.is_dir():
                raise OutputError(f"{path}: is a symbolic link to something that is not a directory")
        elif not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
            raise OutputError(f"{path}: is not a regular file or directory (a device, pipe or socket)")
        is_dir = absolute.is_dir()
        if directory and not is_dir:
            raise OutputError(f"{path}: exists and is not a directory")
        if not directory and is_dir:
            raise OutputError(f"{path}: is a directory, not a file")
    # An existing file is replaced by an atomic write in its directory: that directory must be writable.
    ancestor = absolute if info is not None and directory else absolute.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: cannot be created, because {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot be created, because {ancestor} is not writable")
    return absolute


# -- outputs replaced whole ------------------------------------------------------------------------------------


def check_model_target(
    path: str | os.PathLike, fmt: str, overwrite: bool, file_format: Callable[[Path], str | None] | None = None
) -> Path:
    """A model output `path` for format `fmt` ("hf" is a directory, the others files) that may be written:
    new, an empty directory, or (with `overwrite`) a model of the same kind, which is then replaced whole.
    `file_format` tells which model format a file holds (`formats.format_of_file`)."""
    directory = fmt == "hf"
    absolute = check_target(path, directory=directory, replaced_whole=True)
    if not absolute.exists():
        return absolute
    if directory:
        entries = _entries(absolute)
        if not entries:
            return absolute
        foreign = [name for name in entries if name not in MODEL_FILES]
        if foreign or "config.json" not in entries:
            example = foreign[0] if foreign else entries[0]
            raise OutputError(
                f"{path}: exists and is not a model directory (it holds {example!r}); "
                "it would be replaced whole, so name a new or empty directory"
            )
    elif file_format is None or file_format(absolute) != fmt:
        raise OutputError(f"{path}: exists and is not a {fmt} model file; it would be replaced, so name a new file")
    if not overwrite:
        raise OutputExists(f"{path}: already holds a model; replacing it needs overwrite", setting="overwrite")
    return absolute


# -- directories a command writes into ------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryKind:
    command: str  # the command that owns such a directory, as its marker records it
    what: str  # what such a directory is, for messages
    signature: tuple[str, ...] = ()  # entries that prove a directory made before markers is this command's
    inside: tuple[str, ...] = ()  # other commands whose directory this one may also write into (the demo's sweep)


TRAINING_RUN = DirectoryKind("train", "a training run", ("metrics.jsonl", "train_config.json", "checkpoints"))
PREPARED_DATA = DirectoryKind("prepare", "prepared token shards", ("manifest.json", ".tasks"))
WEBTEXT_BUILD = DirectoryKind("webtext build", "a corpus build", ("stats.json",))
WORK_FOLDER = DirectoryKind("work", "a job's work folder", ("fingerprint",))
# No signature: a model directory holds the same vocab.json, and writing a new one there would break the model.
TRAINED_TOKENIZER = DirectoryKind("tokenizer train", "a trained tokenizer")
DEMONSTRATIONS = DirectoryKind("demonstrations", "a demonstrations report", ("demonstrations.json",))
DEMO = DirectoryKind("demo", "the demo's output", ("demo.json",))
SWEEP = DirectoryKind("sweep", "a model-size sweep", ("sweep.json",), inside=("demo",))


def _marker(directory: Path) -> dict | None:
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def check_owner(path: str | os.PathLike, kind: DirectoryKind) -> Path:
    """`path` as an absolute directory that `kind`'s command may write into: new, empty, or its own earlier
    output (by marker, or by signature for directories made before markers). Marks it as `kind`'s."""
    absolute = check_target(path, directory=True, replaced_whole=False)
    if absolute.exists():
        marker = _marker(absolute)
        owner = marker.get("command") if marker is not None else None
        if marker is not None and owner != kind.command and owner not in kind.inside:
            raise OutputError(f"{path}: holds the output of `gpt2kit {owner}`, not {kind.what}; name another directory")
        entries = _entries(absolute)
        if marker is None and entries and not any(name in kind.signature for name in entries):
            raise OutputError(
                f"{path}: exists and is not {kind.what} (it holds {entries[0]!r}); name a new or empty directory"
            )
    try:
        absolute.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot be created ({err.strerror or err})") from None
    if _marker(absolute) is None:
        from gpt2kit.io import atomic_write_text

        atomic_write_text(absolute / MARKER_NAME, json.dumps({"command": kind.command}))
    return absolute


class DirectoryClaim:
    """A directory this process writes into, locked until `release()` (or until the process ends: the lock is
    the operating system's, so a killed writer never blocks the next one)."""

    def __init__(self, directory: Path, lock: FileLock | None):
        self.directory, self._lock = directory, lock

    def release(self) -> None:
        if self._lock is None or _HELD.get(self.directory) is not self:
            return
        del _HELD[self.directory]
        with contextlib.suppress(OSError):
            (self.directory / HOLDER_NAME).unlink()
        self._lock.release(force=True)

    def __enter__(self) -> DirectoryClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[Path, DirectoryClaim] = {}  # claims this process holds: a nested claim (the demo's sweep) shares one


def _holder(directory: Path) -> str:
    try:
        holder = json.loads((directory / HOLDER_NAME).read_text(encoding="utf-8"))
        return f"process {int(holder['pid'])} on {holder.get('host', '?')} (gpt2kit {holder.get('command', '?')})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def claim_directory(path: str | os.PathLike, kind: DirectoryKind) -> DirectoryClaim:
    """Lock `path` for `kind`'s command for as long as the claim is held, after `check_owner`; a directory
    another process is writing is refused, naming that process."""
    absolute = check_owner(path, kind)
    if absolute in _HELD:
        return DirectoryClaim(absolute, None)
    lock = FileLock(absolute / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputBusy(f"{path}: {_holder(absolute)} is writing here; wait for it to finish") from None
    except OSError as err:
        raise OutputError(f"{path}: cannot be locked ({err.strerror or err})") from None
    from gpt2kit.io import atomic_write_text

    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": kind.command, "started": time.time()}
    atomic_write_text(absolute / HOLDER_NAME, json.dumps(holder))
    claim = DirectoryClaim(absolute, lock)
    _HELD[absolute] = claim
    return claim


# -- files replaced whole -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileKind:
    what: str  # what such a file is, for messages
    recognise: Callable[[Path], bool]  # whether an existing file is an earlier output of this kind


def _starts_with(*prefixes: bytes) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        with open(path, "rb") as handle:
            head = handle.read(max(map(len, prefixes)))
        return head.startswith(prefixes)

    return recognise


def _first_json_line_has(*keys: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        with open(path, "rb") as handle:
            line = handle.readline(1 << 20)
        try:
            record = json.loads(line)
        except ValueError:
            return False
        return isinstance(record, dict) and all(key in record for key in keys)

    return recognise


def _eval_results(path: Path) -> bool:
    if path.stat().st_size > 1 << 26:
        return False
    try:
        results = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(results, dict) and all(isinstance(v, dict) and "metrics" in v for v in results.values())


PNG = FileKind("a PNG image", _starts_with(b"\x89PNG"))
EVAL_RESULTS = FileKind("gpt2kit eval results", _eval_results)
EVAL_SAMPLES = FileKind("gpt2kit eval samples", _first_json_line_has("task"))
OVERLAP_FLAGS = FileKind("gpt2kit overlap flags", _first_json_line_has("file", "index"))


def check_file_output(path: str | os.PathLike, kind: FileKind) -> Path:
    """A file output `path`: new, empty, or an earlier output of `kind` (which is then replaced atomically)."""
    absolute = check_target(path, directory=False, replaced_whole=True)
    if absolute.exists() and absolute.stat().st_size:
        try:
            ours = kind.recognise(absolute)
        except OSError as err:
            raise OutputError(f"{path}: cannot be read to check what it is ({err.strerror or err})") from None
        if not ours:
            raise OutputError(f"{path}: exists and is not {kind.what}; it would be replaced, so name a new file")
    return absolute


@contextlib.contextmanager
def claimed_file(path: str | os.PathLike, kind: FileKind) -> Iterator[Path]:
    """`check_file_output`, and the file (with its siblings, such as a sharded filter's shards) locked for one
    writer through `.NAME.lock` beside it."""
    absolute = check_file_output(path, kind)
    absolute.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(absolute.with_name(f".{absolute.name}.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputBusy(f"{path}: another process is writing it; wait for it to finish") from None
    try:
        yield absolute
    finally:
        lock.release(force=True)
