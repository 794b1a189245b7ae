"""Graph wiring: nodes, edges, checkpointer. One graph per paper; run id = thread id.

reader -> plan_gate -> reproducer -> code_gate -> execute -> profiler
       -> writer -> finance_critic -> publish_gate -> publish
execute -> reproducer        (repair loop, bounded by policy.max_repair_attempts)
finance_critic -> writer     (review loop, bounded by policy.max_critic_rounds)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel

from agents.deps import Deps
from agents.finance_critic import make_finance_critic
from agents.profiler import make_profiler
from agents.reader import make_reader
from agents.reproducer import make_reproducer
from agents.writer import make_writer
from graphs import routing
from graphs.nodes import make_execute, make_gate, make_publish
from graphs.state import Context
from reprodesk import plan, results, schemas, state

# Only our own models may be revived from a checkpoint (strict msgpack allow-list):
# every pydantic model declared in the shared-schema modules, so a new one cannot be
# forgotten.
_STATE_TYPES: tuple[type, ...] = tuple(
    obj
    for module in (schemas, plan, results, state)
    for obj in vars(module).values()
    if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__
)


def open_checkpointer(path: Path) -> SqliteSaver:
    """SQLite in WAL mode with a busy timeout, one connection per process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    serde = JsonPlusSerializer(allowed_msgpack_modules=_STATE_TYPES)
    saver = SqliteSaver(conn, serde=serde)
    saver.setup()
    return saver


def _add(g: StateGraph[Any, Any, Any, Any], name: str, node: Any) -> None:
    # Nodes are plain typed callables; LangGraph's overloads want its own protocols.
    g.add_node(name, node)


def build_graph(deps: Deps, checkpointer: Any = None) -> CompiledStateGraph[Any, Any, Any, Any]:
    g: StateGraph[Any, Any, Any, Any] = StateGraph(state.RunState, context_schema=Context)
    _add(g, "reader", make_reader(deps))
    _add(g, "plan_gate", make_gate("plan"))
    _add(g, "reproducer", make_reproducer(deps))
    _add(g, "code_gate", make_gate("code"))
    _add(g, "execute", make_execute(deps))
    _add(g, "profiler", make_profiler(deps))
    _add(g, "writer", make_writer(deps))
    _add(g, "finance_critic", make_finance_critic(deps))
    _add(g, "publish_gate", make_gate("publish"))
    _add(g, "publish", make_publish(deps))

    g.add_edge(START, "reader")
    g.add_conditional_edges("reader", routing.after_reader)
    g.add_conditional_edges("plan_gate", routing.after_plan_gate)
    g.add_conditional_edges("reproducer", routing.after_reproducer)
    g.add_conditional_edges("code_gate", routing.after_code_gate)
    g.add_conditional_edges("execute", routing.after_execute)
    g.add_edge("profiler", "writer")
    g.add_edge("writer", "finance_critic")
    g.add_conditional_edges("finance_critic", routing.after_critic)
    g.add_conditional_edges("publish_gate", routing.after_publish_gate)
    g.add_edge("publish", END)
    return g.compile(checkpointer=checkpointer)
