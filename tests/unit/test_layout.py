"""The rooms keep their arrows: nothing after the Reader reads the catalog, files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The offline policies that may read the catalog or the recipes folder: the catalog is
# one source of a Plan (reader) and the recipes are the code it runs (reproducer).
CATALOG_READERS = {"agents/offline/reader.py", "agents/offline/reproducer.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_downstream_of_the_reader_imports_the_catalog() -> None:
    offenders = []
    for folder in ("graphs", "agents"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in CATALOG_READERS:
                continue
            if any(name == "recipes" or name.startswith("recipes.") for name in _imports(path)):
                offenders.append(rel)
    assert offenders == []


def test_the_catalog_readers_do_import_it() -> None:
    # The rule above is only worth something if the scan sees real imports.
    assert "recipes.catalog" in _imports(ROOT / "agents" / "offline" / "reader.py")


def test_no_module_outside_recipes_and_sandbox_is_over_500_lines() -> None:
    big = []
    for folder in ("reprodesk", "graphs", "agents", "tools", "memory", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text(encoding="utf-8").count("\n")
            if lines > 520:  # "about 500"
                big.append((path.relative_to(ROOT).as_posix(), lines))
    assert big == []
