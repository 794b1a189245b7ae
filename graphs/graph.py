"""Graph wiring: nodes, edges, checkpointer. One graph per paper; run id = thread id.

reader -> plan_gate -> reproducer -> code_gate -> execute -> profiler
       -> writer -> finance_critic -> publish_gate -> publish
execute -> reproducer        (repair loop, bounded by policy.max_repair_attempts)
finance_critic -> writer     (review loop, bounded by policy.max_critic_rounds)
"""

from __future__ import annotations

import re
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
from reprodesk.schemas import UserError

# Only our own models may be revived from a checkpoint (strict msgpack allow-list):
# every pydantic model declared in the shared-schema modules, so a new one cannot be
# forgotten.
_STATE_TYPES: tuple[type, ...] = tuple(
    obj
    for module in (schemas, plan, results, state)
    for obj in vars(module).values()
    if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__
)


def open_checkpointer(path: Path, database_url: str | None = None) -> Any:
    """SQLite under the home (WAL, busy timeout), or Postgres when a URL is given.

    Postgres is the scale-out option: many drivers on many hosts share one database.
    A URL that refuses is one UserError naming the URL (without its password).
    """
    if database_url:
        return _postgres(database_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    saver = SqliteSaver(conn, serde=_serde())
    saver.setup()
    return saver


def _serde() -> JsonPlusSerializer:
    return JsonPlusSerializer(allowed_msgpack_modules=_STATE_TYPES)


def _postgres(url: str) -> Any:
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    shown = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
    try:
        conn = psycopg.connect(
            url, autocommit=True, prepare_threshold=0, row_factory=dict_row, connect_timeout=10
        )
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"REPRODESK_DATABASE_URL {shown}: cannot connect ({first})") from exc
    saver = PostgresSaver(conn, serde=_serde())
    saver.setup()
    return saver


def thread_ids(checkpointer: Any) -> list[str]:
    """Every run (thread) the checkpointer holds, newest first."""
    sql = (
        "SELECT thread_id, MAX(checkpoint_id) AS last FROM checkpoints GROUP BY thread_id "
        "ORDER BY last DESC"
    )
    if isinstance(checkpointer, SqliteSaver):
        return [str(r[0]) for r in checkpointer.conn.execute(sql).fetchall()]
    with checkpointer.conn.cursor() as cur:  # Postgres, dict rows
        cur.execute(sql)
        return [str(r["thread_id"]) for r in cur.fetchall()]


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
