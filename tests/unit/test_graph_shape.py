"""The graph's shape, snapshot-tested: a new edge is a design change, made on purpose."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agents.deps import Deps
from agents.policies import offline_policies
from graphs.graph import build_graph, open_checkpointer
from reprodesk.schemas import Limits
from sandbox import SubprocessSandbox
from sandbox.ledger import Ledger

EDGES = {
    ("__start__", "reader", False),
    ("reader", "plan_gate", True),
    ("reader", "__end__", True),
    ("plan_gate", "reproducer", True),
    ("plan_gate", "__end__", True),
    ("reproducer", "code_gate", True),
    ("reproducer", "profiler", True),  # the others succeeded, one was given up
    ("reproducer", "__end__", True),
    ("code_gate", "execute", True),
    ("code_gate", "reproducer", True),  # rejected with a revision request
    ("code_gate", "__end__", True),
    ("execute", "profiler", True),
    ("execute", "reproducer", True),  # the repair loop
    ("profiler", "writer", False),
    ("writer", "finance_critic", False),
    ("finance_critic", "publish_gate", True),
    ("finance_critic", "writer", True),  # the review loop
    ("publish_gate", "publish", True),
    ("publish_gate", "__end__", True),
    ("publish", "__end__", False),
}


def _deps(tmp_path: Path) -> Deps:
    return Deps(
        home=tmp_path,
        sandbox=SubprocessSandbox(tmp_path / "jobs"),
        ledger=Ledger(tmp_path / "ledger.sqlite"),
        open_store=lambda: None,  # type: ignore[arg-type,return-value]
        policies=offline_policies(Limits()),
    )


def test_graph_edges(tmp_path: Path) -> None:
    graph = build_graph(_deps(tmp_path)).get_graph()
    assert {(e.source, e.target, e.conditional) for e in graph.edges} == EDGES


def test_checkpointer_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    saver = open_checkpointer(tmp_path / "runs.sqlite")
    assert saver.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert saver.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    tables = {
        r[0]
        for r in sqlite3.connect(tmp_path / "runs.sqlite").execute(
            "SELECT name FROM sqlite_master WHERE type='table'"
        )
    }
    assert "checkpoints" in tables
