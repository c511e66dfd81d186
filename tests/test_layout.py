"""The house rules the README's Layout section states, checked: one meaning for `from_dict` on every config,
library errors that name settings rather than flags."""

import ast
import re
from pathlib import Path

import pytest

from gpt2kit.config import ConfigError
from gpt2kit.evals.task import EvalOptions
from gpt2kit.model import GPTConfig
from gpt2kit.train_config import TrainConfig

VALID = {GPTConfig: {}, TrainConfig: {"data": "data", "out": "run"}, EvalOptions: {}}
BAD_VALUE = {GPTConfig: {"n_head": 0}, TrainConfig: {"max_steps": -1}, EvalOptions: {"batch_size": 0}}


@pytest.mark.parametrize("cls", [GPTConfig, TrainConfig, EvalOptions])
def test_from_dict_means_the_same_on_every_config(cls):
    """Unknown names, wrong types and bad values are all refused, naming the key."""
    assert cls.from_dict(VALID[cls]) == cls(**VALID[cls])
    with pytest.raises(ConfigError, match="n_layr"):
        cls.from_dict({**VALID[cls], "n_layr": 3}, "saved")
    with pytest.raises(ConfigError, match=next(iter(BAD_VALUE[cls]))):
        cls.from_dict({**VALID[cls], **BAD_VALUE[cls]}, "saved")


PACKAGE = Path(__file__).resolve().parents[1] / "gpt2kit"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def library_modules():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not p.name.startswith("cli")]


def test_library_errors_name_settings_not_flags():
    """A Python caller is told which setting to change; the command line adds the flag (cli.FLAG_HINTS)."""
    found = []
    for path in library_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for text in (n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant)):
                if isinstance(text, str) and FLAG.search(text):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {FLAG.search(text).group()}")
    assert not found, found


def test_flags_take_their_help_and_default_from_the_config_field():
    """Each default is written once, beside its field: the flag's help is generated from it."""
    import argparse
    from dataclasses import dataclass

    from gpt2kit.cli_parser import add_config_flags
    from gpt2kit.config import field_help

    @dataclass
    class Example:
        # what the widget is called,
        # over two lines
        name: str = "widget"
        count: int = 3  # how many widgets
        unset: str | None = None

    assert field_help(Example) == {"name": "what the widget is called, over two lines", "count": "how many widgets"}
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example, ["name", "count", "unset"], flags={"unset": "--other"})
    helps = {a.dest: a.help for a in parser._actions if a.dest in ("name", "count", "unset")}
    assert helps == {"name": "what the widget is called, over two lines (default widget)",
                     "count": "how many widgets (default 3)", "unset": ""}  # fmt: skip
    assert vars(parser.parse_args(["--count", "5"])) == {"name": None, "count": "5", "unset": None}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The gpt2kit modules `path` imports, at module level or inside functions."""
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules]
            targets = subs + ([node.module] if len(subs) < len(node.names) else [])
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_dependencies_point_one_way():
    """No import cycle in the package, counting imports inside functions."""
    paths = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}  # fmt: skip
    graph = {name: imports_of(path, set(paths)) for name, path in paths.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_readme_layout_table_names_every_module_and_nothing_else():
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("## Layout") : readme.index("## Tests and benchmarks")]
    named = set(re.findall(r"`(gpt2kit/[\w/.]+)`", table))
    for path in named:
        assert (PACKAGE.parent / path).exists(), f"README's Layout names {path}, which does not exist"
    folders = {name for name in named if name.endswith("/")}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        if path.name == "__main__.py" or (path.name == "__init__.py" and path.parent != PACKAGE):
            continue
        assert relative in named or any(relative.startswith(folder) for folder in folders), (
            f"{relative} is missing from the README's Layout table"
        )
