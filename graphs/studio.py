"""The graph for LangGraph's own tools: `langgraph dev`, LangGraph Studio, a LangGraph server.

`langgraph.json` at the repository root names `graphs/studio.py:make_graph`. The server
brings its own persistence (its checkpointer and store), so the graph is compiled
without ours; the dependencies come from the same composition root as the CLI's,
with settings read from the environment (REPRODESK_*). Runs started there are not in
this home's `reprodesk runs` list: that lists the home's own checkpointer.
"""

from __future__ import annotations

from typing import Any


def make_graph(config: Any = None) -> Any:
    """A compiled graph with no checkpointer, for a LangGraph server to drive."""
    del config  # per-run knobs travel in the state's Policy and the Context
    from graphs.graph import build_graph
    from reprodesk.compose import build_app
    from reprodesk.settings import load_settings

    app = build_app(load_settings())
    return build_graph(app.deps, checkpointer=None)
