"""Graph state and per-invocation context.

`RunState` is declared in `reprodesk.state` so that agents can type their
nodes without importing this package; it is re-exported here as the graph's
state schema. `Context` holds per-invocation knobs (LangGraph's
`context_schema`), which are not checkpointed: a resumed run gets the context
of the process that resumes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from reprodesk.state import RunState

__all__ = ["Context", "RunState"]


@dataclass(frozen=True)
class Context:
    """Knobs for one invocation of the graph."""

    auto_approve: bool = False  # answer every gate 'approved' without asking
