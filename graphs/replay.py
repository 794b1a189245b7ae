"""Replay: a run's history from the checkpointer, as a timeline a human can read.

History comes newest first from LangGraph; we turn it around. A checkpoint is
written after each super-step, so the node that produced checkpoint i is what
checkpoint i-1 said would run next.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from reprodesk.schemas import UserError
from reprodesk.state import RunState


class Step(BaseModel):
    step: int
    ran: list[str]
    next: list[str]
    checkpoint_id: str
    created_at: str
    summary: str


def _config(run_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": run_id}}


def describe(ran: list[str], values: dict[str, Any]) -> str:
    """One line on what the nodes in `ran` did, read from the state after them."""
    state = RunState.model_validate(values) if values.get("paper") is not None else None
    if state is None:
        return "input"
    parts: list[str] = []
    for node in ran:
        if node == "reader" and state.plan is not None and state.digest is not None:
            mechs = ", ".join(
                f"{m.key} ({m.role.replace('_', ' ')}{'' if m.selected else ', not selected'})"
                for m in state.plan.mechanisms
            )
            parts.append(
                f"mechanisms: {mechs or 'none known'}; {len(state.digest.hyperparameters)} "
                f"hyperparameters, {len(state.digest.claims)} claims"
            )
        elif node.endswith("_gate"):
            d = state.last_decision(node.removesuffix("_gate"))
            edited = " (edited)" if d and d.edited else ""
            parts.append(
                f"{'approved' if d.approved else 'rejected'} by {d.by}{edited}" if d else "waiting"
            )
        elif node == "reproducer":
            parts.append(
                ", ".join(
                    f"{k}: gave up ({w.gave_up[:60]})"
                    if w.gave_up
                    else f"{k}: {w.reproduction.script} attempt {w.reproduction.attempt}"
                    for k, w in state.work.items()
                    if w.reproduction is not None
                )
                or "no jobs"
            )
        elif node == "execute":
            parts.append(
                ", ".join(
                    f"{k}: {w.main.result.status} in {w.main.result.duration_s:.2f}s"
                    + (" (from ledger)" if w.main.reused else "")
                    + (f" — {w.main.result.message}" if w.main.result.status != "ok" else "")
                    for k, w in state.work.items()
                    if w.main is not None
                )
            )
        elif node == "profiler":
            parts.append(
                ", ".join(
                    f"{p.label}: {p.result.status}" for w in state.work.values() for p in w.profile
                )
                or "no jobs"
            )
        elif node == "writer" and state.draft:
            parts.append(
                f"draft round {state.draft.round}: {len(state.draft.evidence)} numbers, "
                f"{len(state.draft.findings)} findings"
            )
        elif node == "finance_critic" and state.critique:
            c = state.critique
            parts.append("approved" if c.approved else f"{len(c.issues)} issues: {c.issues}")
        elif node == "publish" and state.outcome:
            parts.append(state.outcome.message)
    if state.outcome and not parts:
        parts.append(f"{state.outcome.status}: {state.outcome.message}")
    return "; ".join(parts)


def timeline(graph: Any, run_id: str) -> list[Step]:
    history = list(graph.get_state_history(_config(run_id)))
    if not history:
        raise UserError(
            f"unknown run id '{run_id}': no such run in this home (see `reprodesk runs`)"
        )
    history.reverse()
    steps: list[Step] = []
    previous_next: list[str] = []
    for snap in history:
        ran = [n for n in previous_next if not n.startswith("__")]  # __start__ is bookkeeping
        steps.append(
            Step(
                step=int(snap.metadata.get("step", len(steps) - 1)) if snap.metadata else 0,
                ran=ran,
                next=list(snap.next),
                checkpoint_id=str(snap.config["configurable"]["checkpoint_id"]),
                created_at=str(snap.created_at or ""),
                summary=describe(ran, dict(snap.values)),
            )
        )
        previous_next = list(snap.next)
    return steps


def state_at(graph: Any, run_id: str, step: int) -> dict[str, Any]:
    for snap in graph.get_state_history(_config(run_id)):
        if snap.metadata and int(snap.metadata.get("step", -99)) == step:
            return dict(snap.values)
    raise UserError(f"run '{run_id}' has no step {step} (see `reprodesk replay {run_id}`)")
