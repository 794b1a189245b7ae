"""langgraph.json's entry loads the real graph, as `langgraph dev` would import it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_langgraph_json_entry_builds_the_graph(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = json.loads((ROOT / "langgraph.json").read_text())
    path, _, attr = spec["graphs"]["reprodesk"].partition(":")
    module_spec = importlib.util.spec_from_file_location("studio_entry", ROOT / path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    graph = getattr(module, attr)(None)
    nodes = set(graph.get_graph().nodes)
    assert {"reader", "plan_gate", "execute", "publish"} <= nodes
    assert graph.checkpointer is None  # the server brings its own persistence
    assert spec["dependencies"] == ["."]
