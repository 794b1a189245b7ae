"""Replay: a run's history from the checkpointer, as a timeline a human can read.

History comes newest first from LangGraph; we turn it around. A checkpoint is
written after each super-step, so the node that produced checkpoint i is what
checkpoint i-1 said would run next.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from reprodesk.schemas import UserError
from reprodesk.state import RunState


class Step(BaseModel):
    """One super-step of a run, as the timeline shows it."""

    step: int
    ran: list[str]
    next: list[str]
    checkpoint_id: str
    created_at: str
    summary: str
    seconds: float | None = Field(
        default=None, description="Wall time since the previous checkpoint (a pause included)."
    )
    jobs: int = Field(default=0, description="Sandbox jobs this step launched.")
    reused: int = Field(default=0, description="Jobs this step took from the ledger.")
    decision: str = Field(default="", description="A gate's answer: approved/rejected, by whom.")


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


def _jobs(values: dict[str, Any]) -> dict[str, bool]:
    """Every job record in a state: key -> reused."""
    out: dict[str, bool] = {}
    for w in (values.get("work") or {}).values():
        w = w if isinstance(w, dict) else w.model_dump()
        for record in [*w.get("history", []), w.get("main"), *w.get("profile", [])]:
            if record:
                record = record if isinstance(record, dict) else record.model_dump()
                out[str(record["key"])] = bool(record.get("reused"))
    return out


def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def timeline(graph: Any, run_id: str) -> list[Step]:
    history = list(graph.get_state_history(_config(run_id)))
    if not history:
        raise UserError(
            f"unknown run id '{run_id}': no such run in this home (see `reprodesk runs`)"
        )
    history.reverse()
    steps: list[Step] = []
    previous_next: list[str] = []
    previous_jobs: dict[str, bool] = {}
    previous_at: datetime | None = None
    for snap in history:
        ran = [n for n in previous_next if not n.startswith("__")]  # __start__ is bookkeeping
        values = dict(snap.values)
        jobs = _jobs(values)
        new = {k: r for k, r in jobs.items() if k not in previous_jobs}
        at = _when(str(snap.created_at or ""))
        decision = ""
        gates = [n.removesuffix("_gate") for n in ran if n.endswith("_gate")]
        if gates and values.get("paper") is not None:
            d = RunState.model_validate(values).last_decision(gates[0])
            if d is not None:
                decision = f"{'approved' if d.approved else 'rejected'} by {d.by}"
                decision += " (edited)" if d.edited else ""
        steps.append(
            Step(
                step=int(snap.metadata.get("step", len(steps) - 1)) if snap.metadata else 0,
                ran=ran,
                next=list(snap.next),
                checkpoint_id=str(snap.config["configurable"]["checkpoint_id"]),
                created_at=str(snap.created_at or ""),
                summary=describe(ran, values),
                seconds=(at - previous_at).total_seconds() if at and previous_at else None,
                jobs=sum(not r for r in new.values()),
                reused=sum(r for r in new.values()),
                decision=decision,
            )
        )
        previous_next, previous_jobs, previous_at = list(snap.next), jobs, at
    return steps


def summary_at(values: dict[str, Any]) -> list[tuple[str, str]]:
    """A readable digest of the state at a step: (what, value) rows, nothing to scroll."""
    if values.get("paper") is None:
        return [("input", "no paper yet")]
    state = RunState.model_validate(values)
    rows: list[tuple[str, str]] = [("run", state.run_id), ("paper", state.paper.title)]
    if state.plan is not None:
        for m in state.plan.mechanisms:
            how = "reproduce" if m.selected and m.reproducible else "not reproduced"
            rows.append((f"plan: {m.key}", f"{m.role.replace('_', ' ')}, {how}"))
    for key, w in state.work.items():
        main = w.main.result if w.main else None
        job = f"{main.status} in {main.duration_s:.2f}s: {main.message}" if main else "not run"
        rows.append((f"job: {key}", f"attempt {w.attempts}, {job}"))
        if w.profile:
            statuses = ", ".join(f"{p.label} {p.result.status}" for p in w.profile)
            rows.append((f"profile: {key}", statuses))
        if w.gave_up:
            rows.append((f"gave up: {key}", w.gave_up))
    for d in state.decisions:
        rows.append(
            (
                f"gate: {d.gate}",
                f"{'approved' if d.approved else 'rejected'} by {d.by}"
                + (f": {d.reason}" if d.reason else ""),
            )
        )
    if state.draft is not None:
        rows.append(
            (
                "draft",
                f"round {state.draft.round}, {len(state.draft.evidence)} numbers, "
                f"{len(state.draft.findings)} findings",
            )
        )
    if state.critique is not None:
        verdict = "approved" if state.critique.approved else "; ".join(state.critique.issues)
        rows.append(("critic", verdict))
    if state.outcome is not None:
        rows.append(("outcome", f"{state.outcome.status}: {state.outcome.message}"))
    return rows


def state_at(graph: Any, run_id: str, step: int) -> dict[str, Any]:
    for snap in graph.get_state_history(_config(run_id)):
        if snap.metadata and int(snap.metadata.get("step", -99)) == step:
            return dict(snap.values)
    raise UserError(f"run '{run_id}' has no step {step} (see `reprodesk replay {run_id}`)")
