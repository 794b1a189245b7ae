"""Finance-Critic: read the draft as a bank's model-risk reviewer would.

The node calls the review policy (`Deps.policies.review`) and counts the rounds; the
router sends a rejected draft back to the Writer, a bounded number of times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from reprodesk.state import RunState


def make_finance_critic(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    policy = deps.policies.review

    def finance_critic(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="finance_critic")
        assert state.draft is not None
        critique = policy(state.draft, state.critic_rounds + 1)
        log.info("critic.review", approved=critique.approved, issues=critique.issues)
        return {"critique": critique, "critic_rounds": state.critic_rounds + 1}

    return finance_critic
