"""The README's architecture picture is the code's: its layers are the import contract's, and
its tree names every module there is (and none that is gone)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _architecture() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Architecture\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _contract_layers() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = [c for c in config["contracts"] if c["type"] == "layers"]
    assert len(layers) == 1
    names: list[str] = layers[0]["layers"]
    assert names == config["root_packages"]
    return names


def _drawn_layers() -> list[str]:
    lines = [line for line in _architecture().splitlines() if "──▶" in line]
    assert len(lines) == 1, "one line draws the layers"
    return re.findall(r"(\w+)/", lines[0])


def _drawn_modules() -> set[str]:
    """Paths of the tree block: two spaces of indent per folder level."""
    blocks = re.findall(r"```text\n(.*?)```", _architecture(), re.S)
    assert len(blocks) == 1, "one ```text block draws the tree"
    folders: list[str] = []
    modules: set[str] = set()
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            modules.add("/".join([*folders, name]))
    return modules


def _actual_modules(packages: list[str]) -> set[str]:
    found = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            if path.name not in {"__init__.py", "__main__.py"}:
                found.add(path.relative_to(REPO).as_posix())
    return found


def test_the_drawn_layers_are_the_import_contract() -> None:
    assert _drawn_layers() == _contract_layers()


def test_the_drawn_tree_names_every_module() -> None:
    drawn = _drawn_modules()
    actual = _actual_modules(_contract_layers())
    assert sorted(actual - drawn) == [], "modules missing from the README's tree"
    assert sorted(drawn - actual) == [], "the README's tree names modules that do not exist"
