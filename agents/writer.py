"""Writer: the write-up, where every number is measured or cited, never typed in.

The node calls the write policy (`Deps.policies.write`) on the state: the Plan and
the typed results. See `agents.offline.writer` for the structure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from reprodesk.state import RunState


def make_writer(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    policy = deps.policies.write

    def writer(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="writer")
        draft = policy(state)
        log.info("writer.draft", chars=len(draft.markdown), evidence=len(draft.evidence))
        return {"draft": draft}

    return writer
