"""The one home for file I/O: atomic writes, compressed input, JSON lines, UTF-8 decoding and sha256.

Every reader raises GPT2KitError with one line naming the file (and line) and what is wrong, so that
each command reports bad input the same way.
"""

from __future__ import annotations

import bz2
import contextlib
import ctypes
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from gpt2kit.errors import GPT2KitError

# Pushshift-style Reddit dumps are compressed with long windows: allow the zstd format's maximum.
ZSTD_MAX_WINDOW = 2**31

# JSON from outside is nested a few levels deep; anything deeper is refused before json's recursive parser (and
# whatever walks the result) can exhaust the stack.
MAX_JSON_DEPTH = 100
# A JSON string (skipped whole, brackets in it do not count) or one bracket.
_JSON_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')

# The process's umask, read once (reading it means setting it), for the modes of atomically written results.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def user_cache_dir() -> Path:
    """gpt2kit's cache of things measured or built on this machine: $GPT2KIT_CACHE_DIR, else
    $XDG_CACHE_HOME/gpt2kit (~/.cache/gpt2kit)."""
    root = os.environ.get("GPT2KIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gpt2kit"
    )
    return Path(root)


# -- atomic writes ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle on a temporary sibling of `path`, renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0600 is for the temporary, not the result
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonl(rows: Iterable[dict]) -> str:
    """JSON lines: one object per line, UTF-8 kept as it is."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, to_jsonl(rows))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    global _RENAMEAT2
    if _RENAMEAT2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _RENAMEAT2 = libc.renameat2
            _RENAMEAT2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        except (OSError, AttributeError):
            _RENAMEAT2 = False
    if _RENAMEAT2 is False:
        return False
    at_cwd, rename_exchange = -100, 2
    return _RENAMEAT2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0


_RENAMEAT2 = None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` whole.

    The old and new directories are swapped in one step where the system allows it, so a kill at any moment
    leaves one of them at `path`; elsewhere the old one is moved to `.NAME.old` first, and a later write to
    `path` (or `remove_stale_temporaries`) puts it back if a kill came between the two renames.
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700 is for the temporary, not the result
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
    else:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(directory: str | os.PathLike, names: Iterable[str] | None = None) -> int:
    """Clear what atomic writes killed midway left in `directory`: `.NAME.XXXX.tmp` files and directories,
    and a `.NAME.old` (restored to NAME if a kill came between its two renames). `names` limits it to those
    NAMEs; the default is every one, for directories a run owns. Returns how many entries were removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    wanted = None if names is None else set(names)
    removed = 0
    for entry in directory.iterdir():
        if not entry.name.startswith("."):
            continue
        if entry.name.endswith(".tmp"):
            name = entry.name[1:].rsplit(".", 2)[0]
        elif entry.name.endswith(".old"):
            name = entry.name[1:-4]
        else:
            continue
        if wanted is not None and name not in wanted:
            continue
        if entry.name.endswith(".old") and not (directory / name).exists():
            os.replace(entry, directory / name)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


# -- reading ------------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """A file opened for reading, decompressed by suffix (.gz, .zst, .bz2, .xz); plain files as they are."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            return gzip.open(path, "rb")
        if name.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raise GPT2KitError(f"{path}: reading .zst needs zstandard (pip install 'gpt2kit[data]')") from None
            reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                open(path, "rb"), closefd=True
            )
            return io.BufferedReader(reader)
        if name.endswith(".bz2"):
            return bz2.open(path, "rb")
        if name.endswith(".xz"):
            return lzma.open(path, "rb")
        return open(path, "rb")
    except FileNotFoundError:
        raise GPT2KitError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GPT2KitError(f"{path}: is a directory, not a file") from None


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`open_binary(path)` whose read errors (truncated or corrupt streams included) become one clear line."""
    try:
        with open_binary(path) as handle:
            yield handle
    except GPT2KitError:
        raise
    except (EOFError, gzip.BadGzipFile, lzma.LZMAError) as err:
        raise GPT2KitError(f"{path}: corrupt or truncated compressed file ({err or type(err).__name__})") from None
    except OSError as err:
        raise GPT2KitError(f"{path}: cannot read ({err.strerror or err})") from None
    except Exception as err:
        if type(err).__name__ == "ZstdError":
            raise GPT2KitError(f"{path}: corrupt or truncated zstd file ({err})") from None
        raise


BAD_UTF8_POLICIES = ("error", "replace", "skip")


class Utf8Policy:
    """How input that is not UTF-8 is read, and a count of what was done about it.

    "error" stops at the first bad byte with one line naming where; "replace" puts U+FFFD in place of the bad
    bytes; "skip" drops the unit being decoded (a line, a record, a document).
    """

    def __init__(self, on_bad_utf8: str = "error", error: type[GPT2KitError] = GPT2KitError, hint: str = ""):
        self.error = error
        if on_bad_utf8 not in BAD_UTF8_POLICIES:
            raise error(f"on_bad_utf8 must be one of {', '.join(BAD_UTF8_POLICIES)}, got {on_bad_utf8!r}")
        self.on_bad_utf8 = on_bad_utf8
        self.hint = hint  # appended to the error, e.g. where the policy is set
        self.replaced = 0
        self.skipped = 0

    def decode(self, raw: bytes, where: str) -> str | None:
        """`raw` as text, or None when the policy skips it."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.on_bad_utf8 == "error":
                raise self.error(f"{where}: not UTF-8 (byte {err.start}){self.hint}") from None
            if self.on_bad_utf8 == "skip":
                self.skipped += 1
                return None
            self.replaced += 1
            return raw.decode("utf-8", errors="replace")

    def describe(self, unit: str) -> str:
        """`3 lines repaired` / `1 line skipped`, or "" when all input was UTF-8."""
        done = self.replaced or self.skipped
        if not done:
            return ""
        verb = "repaired" if self.replaced else "skipped"
        return f"bad UTF-8: {done} {unit}{'s' if done != 1 else ''} {verb}"


STRICT_UTF8 = Utf8Policy()  # bad UTF-8 is an error naming where: it never counts anything


def read_text(path: str | os.PathLike) -> str:
    """A whole (possibly compressed) UTF-8 file."""
    with reading(path) as handle:
        return STRICT_UTF8.decode(handle.read(), str(path))


def _too_deep(text: str) -> bool:
    """Whether `text` opens more than MAX_JSON_DEPTH brackets at once (outside strings)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:  # the common case, at C speed
        return False
    depth = 0
    for match in _JSON_STRUCTURE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif token in "]}":
            depth -= 1
    return False


def parse_json(text: str, where: str, error: type[GPT2KitError] = GPT2KitError) -> Any:
    """A JSON document from outside, or `error` with one line naming `where` and what is wrong.

    Every reader of JSON input goes through here, so nesting depth is bounded in one place."""
    if _too_deep(text):
        raise error(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        position = f"line {err.lineno} column {err.colno}" if err.lineno > 1 else f"column {err.colno}"
        raise error(f"{where}: not valid JSON ({err.msg} at {position})") from None


def read_json(path: str | os.PathLike, error: type[GPT2KitError] = GPT2KitError) -> Any:
    """A whole (possibly compressed) UTF-8 JSON file, parsed as `parse_json` does."""
    try:
        text = read_text(path)
    except GPT2KitError as err:
        raise error(str(err)) from None
    return parse_json(text, str(path), error)


def parse_json_line(raw: bytes | str, where: str) -> dict[str, Any]:
    """One JSON-lines record: a JSON object, or one line naming `where` and what is wrong."""
    line = STRICT_UTF8.decode(raw, where) if isinstance(raw, bytes) else raw
    record = parse_json(line, where)
    if not isinstance(record, dict):
        raise GPT2KitError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def iter_jsonl(
    path: str | os.PathLike, required: Sequence[str] = (), utf8: Utf8Policy | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a (possibly compressed) JSON-lines file.

    Blank lines are skipped; a line that is not a JSON object, or lacks one of the `required` keys, is an error.
    A line that is not UTF-8 is an error too, unless `utf8` repairs or skips it.
    """
    with reading(path) as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            line = raw if utf8 is None else utf8.decode(raw, where)
            if line is None:
                continue
            record = parse_json_line(line, where)
            missing = [key for key in required if key not in record]
            if missing:
                raise GPT2KitError(f"{where}: missing key {missing[0]!r} (expected keys: {', '.join(required)})")
            yield number, record


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file (see `iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path, required)]


def jsonl_texts(path: str | os.PathLike, field: str = "text", utf8: Utf8Policy | None = None) -> Iterator[str]:
    """The string `field` of each JSON line."""
    for number, record in iter_jsonl(path, utf8=utf8):
        value = record.get(field)
        if not isinstance(value, str):
            raise GPT2KitError(f"{path}:{number}: no string field {field!r}")
        yield value
