"""The one config engine: typed dataclasses filled from TOML/YAML files, flags and `key=value` overrides.

Every field's type annotation drives parsing, so `optim.lr=3e-4` becomes a float and `compile=true` a bool.
Values are applied in one order everywhere: the dataclass's defaults, then the file, then the flags given on
the command line, then the overrides. Problems are reported together, one line per field, naming the source
and, for an unknown name, the closest known one. A config class lists its own bad values in `problems()`.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from gpt2kit.errors import GPT2KitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

C = TypeVar("C")

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
INT64_MAX = 2**63 - 1


# The most threads or worker processes a setting may ask for, per CPU of this machine. Past one per core they only
# contend for the cores, so a few per core is generous (room for workers that wait on I/O, or a count tuned on a
# bigger machine); at tens of thousands torch's OpenMP runtime crashes creating its threads, and processes exhaust
# memory.
PER_CPU_LIMIT = 4


def cpu_limit() -> int:
    """The most threads or worker processes a setting may ask for on this machine."""
    return PER_CPU_LIMIT * (os.cpu_count() or 1)


class ConfigError(GPT2KitError):
    """A config file or override is unreadable, names an unknown field, or has a bad value."""


class Checked:
    """A config dataclass that lists its bad values: `problems()` gives one line per bad field."""

    def problems(self) -> list[str]:
        return []

    def check(self: C, source: str = "config") -> C:
        """Raise ConfigError with every problem, each line prefixed by `source`."""
        bad = self.problems()
        if bad:
            raise ConfigError("\n".join(f"{source}: {line}" for line in bad))
        return self

    @classmethod
    def from_dict(cls: type[C], values: dict, source: str = "config") -> C:
        """The config from a parsed mapping (a saved config, a JSON table), as from a config file: an unknown key,
        a wrong type or a bad value is an error naming it."""
        return config_from_dict(cls, values, source)


BUNDLED_CONFIGS = Path(__file__).resolve().parent / "configs"


def bundled_configs() -> list[str]:
    """The names of the configs shipped with gpt2kit (gpt2kit/configs/*.toml)."""
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.toml"))


def config_path(spec: str | os.PathLike) -> Path:
    """A config file: a path, or the name of a bundled config (`cpu-smoke`), whatever the working directory."""
    path = Path(spec)
    if not path.exists() and path.parent == Path(".") and (BUNDLED_CONFIGS / f"{path.stem}.toml").exists():
        return BUNDLED_CONFIGS / f"{path.stem}.toml"
    return path


def read_config_file(path: str | os.PathLike, section: str | None = None) -> dict:
    """The mapping in a TOML or YAML file: its top level, or its `section` table when it has one. A bundled
    config's name works as well as a path."""
    path = config_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (bundled configs: {', '.join(bundled_configs())})") from None
    except OSError as err:
        raise ConfigError(f"{path}: unreadable config file ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 (byte {err.start})") from None
    if path.suffix.lower() == ".toml":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML ({err})") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    else:
        raise ConfigError(f"{path}: config files must end in .toml, .yaml or .yml")
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of setting names to values at the top level")
    if section is not None and isinstance(values.get(section), dict):
        values = values[section]
    return values


# -- coercion by type hint ----------------------------------------------------------------------------------------


def _coerce(value: Any, kind: Any, from_text: bool) -> Any:
    """`value` as type `kind`, or ValueError with the reason. `from_text`: the value came from a flag or override."""
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (from_text and str(value).lower() in ("none", "null")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, from_text)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {', '.join(map(str, args))}")
        return value
    if origin is dict:
        if from_text and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("must be a JSON object") from None
        if not isinstance(value, dict):
            raise ValueError("must be a mapping")
        key_kind, value_kind = args
        try:
            return {_coerce(k, key_kind, True): _coerce(v, value_kind, from_text) for k, v in value.items()}
        except ValueError as err:
            raise ValueError(f"entries {err}") from None
    if origin in (list, tuple):
        if from_text and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("must be a list of strings")
        return value if origin is list else tuple(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and str(value).lower() in TRUE_WORDS + FALSE_WORDS:
            return str(value).lower() in TRUE_WORDS
        raise ValueError("must be true or false")
    if kind is int:
        return _integer(value, from_text)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif from_text:
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ValueError("must be a number")
        if not math.isfinite(number):  # no setting of gpt2kit means anything at nan or inf
            raise ValueError("must be a finite number")
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("must be text")
    raise ValueError(f"has an unsupported type {kind}")


def is_int64(value: Any) -> bool:
    """An int (not a bool) that a signed 64-bit integer holds: seeds and counts that reach torch or numpy."""
    return isinstance(value, int) and not isinstance(value, bool) and -INT64_MAX - 1 <= value <= INT64_MAX


def _integer(value: Any, from_text: bool) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if not isinstance(value, int):
        try:
            number = float(str(value).replace("_", "")) if from_text else value
        except ValueError:
            raise ValueError("must be an integer") from None
        if not (isinstance(number, float) and number.is_integer()):
            raise ValueError("must be an integer")
        value = int(number)
    if not is_int64(value):
        raise ValueError("must fit in a signed 64-bit integer")
    return value


def _field_names(cls: type, prefix: str = "") -> list[str]:
    names = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            names.extend(_field_names(hints[f.name], f"{prefix}{f.name}."))
        else:
            names.append(prefix + f.name)
    return names


def _flatten(values: dict, cls: type | None, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, value) pairs; a mapping is a section unless it is the value of a mapping-typed field."""
    hints = typing.get_type_hints(cls) if cls is not None else {}
    items = []
    for key, value in values.items():
        kind = hints.get(str(key).replace("-", "_"))
        if isinstance(value, dict) and (kind is None or is_dataclass(kind)):
            items.extend(_flatten(value, kind, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _assign(config: object, dotted: str, value: Any, source: str, errors: list[str], from_text: bool) -> None:
    parts = dotted.replace("-", "_").split(".")
    target: Any = config
    for part in parts[:-1]:
        if not is_dataclass(target) or part not in {f.name for f in fields(target)}:
            target = None
            break
        target = getattr(target, part)
    name = parts[-1]
    if target is None or not is_dataclass(target) or name not in {f.name for f in fields(target)}:
        close = difflib.get_close_matches(dotted, _field_names(type(config)), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        errors.append(f"{source}: unknown field {dotted!r}{hint}")
        return
    kind = typing.get_type_hints(type(target))[name]
    if is_dataclass(kind):
        errors.append(f"{source}: {dotted} is a section; set its fields, e.g. {dotted}.{fields(kind)[0].name}")
        return
    try:
        setattr(target, name, _coerce(value, kind, from_text))
    except ValueError as err:
        errors.append(f"{source}: {dotted} {err}, got {value!r}")


def _raise(errors: list[str]) -> None:
    if errors:
        raise ConfigError("\n".join(errors))


# -- the engine -----------------------------------------------------------------------------------------------------


def apply_values(config: C, values: dict, source: str, from_text: bool = False) -> C:
    """Set fields from a (nested) mapping, checking every name and type; all problems are raised together."""
    errors: list[str] = []
    for name, value in _flatten(values, type(config)):
        _assign(config, name, value, source, errors, from_text)
    _raise(errors)
    return config


def apply_overrides(config: C, overrides: Sequence[str], source: str = "override") -> C:
    """Apply `key=value` strings (dotted names for nested fields), parsing each value by the field's type."""
    errors: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"{source} {item!r}: expected key=value")
            continue
        _assign(config, key.strip(), value.strip(), source, errors, from_text=True)
    _raise(errors)
    return config


def given(values: dict) -> dict:
    """The entries that were given (not None), nested mappings included: the flags a user typed."""
    kept = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = given(value)
            if value:
                kept[key] = value
        elif value is not None:
            kept[key] = value
    return kept


def load_config(
    cls: type[C],
    file: str | os.PathLike | None = None,
    *,
    section: str | None = None,
    flags: dict | None = None,
    overrides: Sequence[str] | None = None,
    source: str | None = None,
    check: bool = True,
    base: C | None = None,
) -> C:
    """Defaults (`base`, else the class's own), then `file` (its `section` table if it has one), then `flags`
    (None means not given), then `overrides`; then the class's checks, reported under `source` (default: the
    file's name)."""
    config = base if base is not None else cls()
    if file is not None:
        apply_values(config, read_config_file(file, section), str(file))
    if flags:
        apply_values(config, given(flags), "option", from_text=True)
    apply_overrides(config, overrides or ())
    if check and isinstance(config, Checked):
        config.check(source or (str(file) if file is not None else "config"))
    return config


def config_from_dict(cls: type[C], values: dict, source: str = "config", check: bool = True) -> C:
    """`cls` from a parsed mapping (a saved config, a JSON request), with the same errors as a config file."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of setting names to values, got {type(values).__name__}")
    config = apply_values(cls(), values, source)
    if check and isinstance(config, Checked):
        config.check(source)
    return config


def field_help(cls: type) -> dict[str, str]:
    """What each field of a config dataclass means, from the comment beside it (or the comment lines just above
    it): the one place a setting is described, for generated command-line help."""
    import inspect
    import textwrap
    import tokenize

    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines(keepends=True)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in fields(cls)}
    helps: dict[str, str] = {}
    above: list[str] = []
    line_start: dict[int, str] = {}  # line number -> the field defined on it
    for token in tokenize.generate_tokens(iter(lines).__next__):
        row, col = token.start
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if row in line_start:
                helps[line_start[row]] = text
            elif col == 4:
                above.append(text)
        elif token.type == tokenize.NAME and col == 4 and token.string in names and row not in line_start:
            line_start[row] = token.string
            if above:
                helps[token.string] = " ".join(above)
            above = []
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) and col == 4:
            above = []
    return helps


def get_field(config: object, dotted: str) -> Any:
    """The value of a dotted field name, e.g. `optim.lr`."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config
