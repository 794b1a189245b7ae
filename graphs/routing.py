"""Routers: pure functions of the state, tested without any model or sandbox."""

from __future__ import annotations

from typing import Literal

from reprodesk.state import RunState

# langgraph.graph.END, spelled as a literal so that the return types say where a run can go.
END: Literal["__end__"] = "__end__"


def _approved(state: RunState, gate: str) -> bool:
    decision = state.last_decision(gate)
    return decision is not None and decision.approved


def after_reader(state: RunState) -> Literal["plan_gate", "__end__"]:
    return "plan_gate" if state.plan is not None and state.outcome is None else END


def after_plan_gate(state: RunState) -> Literal["reproducer", "__end__"]:
    return "reproducer" if _approved(state, "plan") else END


def after_reproducer(state: RunState) -> Literal["code_gate", "profiler", "__end__"]:
    """New jobs go to the code gate; with none left to run, the successes go on."""
    if state.outcome is not None:
        return END
    statuses = [w.status for w in state.work.values()]
    if "pending" in statuses:
        return "code_gate"
    return "profiler" if "ok" in statuses else END


def after_code_gate(state: RunState) -> Literal["execute", "reproducer", "__end__"]:
    """Approved: run it. Rejected with a revision request: back to the Reproducer."""
    if _approved(state, "code"):
        return "execute"
    decision = state.last_decision("code")
    if decision is not None and decision.revise and state.outcome is None:
        return "reproducer"
    return END


def after_execute(state: RunState) -> Literal["profiler", "reproducer"]:
    """A failed attempt goes back to the Reproducer, which repairs it or gives up (bounded)."""
    if any(w.status == "retry" for w in state.work.values()):
        return "reproducer"
    return "profiler"


def after_critic(state: RunState) -> Literal["publish_gate", "writer"]:
    """Approved drafts go to the human; rejected ones go back, a bounded number of times."""
    if state.critique is not None and state.critique.approved:
        return "publish_gate"
    if state.critic_rounds >= state.policy.max_critic_rounds:
        return "publish_gate"  # the human sees the open points in the draft
    return "writer"


def after_publish_gate(state: RunState) -> Literal["publish", "__end__"]:
    return "publish" if _approved(state, "publish") else END
