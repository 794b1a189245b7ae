"""What a gate shows, and how an answer becomes state.

A gate's question (`gate_summary`) is a plain JSON-able dict: enough to decide, nothing
to scroll; the full material (plan.json, the job's files, the draft) is written to the
review folder by the run layer. An answer is `{"approved": bool, "reason": str}`, and
at the plan gate optionally `"plan"`: an edited Plan, already checked by
`check_plan_edit` before the run resumes, so a bad file leaves the run paused.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from reprodesk.plan import Plan
from reprodesk.schemas import Decision, Outcome, UserError
from reprodesk.state import RunState


def _plan_summary(plan: Plan, at: str) -> dict[str, Any]:
    mechanisms = []
    for m in plan.mechanisms:
        entry: dict[str, Any] = {
            "key": m.key,
            "title": m.title,
            "role": m.role,
            "score": m.score,
            "selected": m.selected and m.reproducible,
        }
        if m.quotes:
            entry["quote"] = f"{at}{m.quotes[0].page}: {m.quotes[0].text[:160]}"
        if not m.reproducible:
            entry["not reproduced"] = m.not_reproduced_because
        else:
            entry["claims"] = [
                f"[{c.kind}] {c.statement} — "
                + (f"stated {at}{c.quote.page}" if c.quote else "not stated in the paper")
                for c in m.claims
            ]
            entry["scale-down"] = {
                r.name: f"paper {'not stated' if r.paper is None else f'{r.paper:g}'} -> "
                f"ours {m.args.get(r.name, r.ours)}"
                for r in m.scale_down
            }
            entry["estimated_s"] = round(m.estimated_s, 1)
            if m.prior_runs:
                entry["measured before in"] = m.prior_runs
        mechanisms.append(entry)
    return {
        "mechanisms": mechanisms,
        "estimated_s": round(sum(m.estimated_s for m in plan.to_reproduce()), 1),
        "notes": plan.notes,
    }


def gate_summary(gate: str, state: RunState) -> dict[str, Any]:
    """What the human sees at `gate`."""
    at = "s." if state.paper.page_unit == "section" else "p."
    if gate == "plan":
        assert state.plan is not None
        return _plan_summary(state.plan, at)
    if gate == "code":
        jobs = []
        for w in state.work.values():
            if w.status != "pending" or w.reproduction is None:
                continue
            r = w.reproduction
            mech = state.plan.get(w.key) if state.plan else None
            grid = mech.grid if mech else {}
            jobs.append(
                {
                    "mechanism": w.key,
                    "script": r.script,
                    "command": " ".join(r.job.argv),
                    "lines_of_code": sum(len(t.splitlines()) for t in r.job.files.values()),
                    "attempt": r.attempt,
                    "note": r.note,
                    "limits": r.job.limits.model_dump(),
                    "then profiled with": sorted(grid),
                    "estimated_s": round(mech.estimated_s, 1) if mech else None,
                    "compared_with": f"attempt {r.attempt - 1}"
                    if r.attempt > 1
                    else f"recipes/{r.script}",
                }
            )
        return {"jobs": jobs}
    assert state.draft is not None
    critique = state.critique
    return {
        "tldr": state.draft.markdown.split("## TL;DR", 1)[-1].split("\n## ", 1)[0].strip(),
        "findings": len(state.draft.findings),
        "critic_approved": bool(critique and critique.approved),
        "critic_issues": critique.issues if critique else [],
    }


def check_plan_edit(state: RunState, data: Any, label: str) -> Plan:
    """An edited plan, validated against the one the Reader made (a UserError if not).

    Mechanisms can be dropped, added back (any the Reader found) and their values
    edited; a mechanism the paper never mentions cannot be added.
    """
    assert state.plan is not None
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UserError(f"{label}: not a valid plan: {where}: {first['msg']}") from exc
    found = {m.key: m for m in state.plan.mechanisms}
    for m in plan.mechanisms:
        if m.key not in found:
            raise UserError(
                f"{label}: mechanism '{m.key}' is not one the paper mentions "
                f"(found: {', '.join(found) or 'none'})"
            )
        if m.selected and not m.reproducible:
            raise UserError(
                f"{label}: mechanism '{m.key}' cannot be reproduced: {m.not_reproduced_because}"
            )
        if m.script != found[m.key].script:
            raise UserError(f"{label}: mechanism '{m.key}': the script cannot be changed here")
    if not plan.to_reproduce():
        raise UserError(f"{label}: selects no mechanism to reproduce; reject the run instead")
    return plan


def check_code_edit(state: RunState, edit: dict[str, dict[str, str]], label: str) -> None:
    """Edited job files: each names a waiting mechanism and one of its files (UserError)."""
    pending = {k: w for k, w in state.work.items() if w.status == "pending" and w.reproduction}
    if not edit:
        raise UserError(f"{label}: no file to edit")
    for key, files in edit.items():
        if key not in pending:
            raise UserError(
                f"{label}: no job of '{key}' waits at the code gate "
                f"(waiting: {', '.join(pending) or 'none'})"
            )
        known = pending[key].reproduction.job.files  # type: ignore[union-attr]
        for name, text in files.items():
            if name not in known:
                raise UserError(
                    f"{label}: '{name}' is not a file of the {key} job ({', '.join(known)})"
                )
            if not text.strip():
                raise UserError(f"{label}: '{name}' would be empty")


def _apply_code_edit(state: RunState, edit: dict[str, dict[str, str]]) -> dict[str, Any]:
    check_code_edit(state, edit, "the edited code")
    work = dict(state.work)
    for key, files in edit.items():
        w = work[key]
        assert w.reproduction is not None
        job = w.reproduction.job.model_copy(update={"files": {**w.reproduction.job.files, **files}})
        note = f"{w.reproduction.note}; edited by hand at the code gate ({', '.join(files)})"
        repro = w.reproduction.model_copy(update={"job": job, "note": note})
        work[key] = w.model_copy(update={"reproduction": repro})
    return work


def apply_answer(gate: str, state: RunState, answer: Any) -> dict[str, Any]:
    """The state update for a gate's answer.

    At the code gate an answer may carry `edit` (mechanism -> file -> text: what runs is
    what was saved) or `revise` with a reason (a revision request back to the Reproducer,
    bounded like a repair); at the plan gate, `plan` (an edited Plan).
    """
    approved = bool(answer.get("approved")) if isinstance(answer, dict) else bool(answer)
    reason = str(answer.get("reason", "")) if isinstance(answer, dict) else ""
    data = answer if isinstance(answer, dict) else {}
    edit = data.get("edit") if gate == "code" else None
    revise = bool(data.get("revise")) and gate == "code" and not approved
    edited = (data.get("plan") is not None and gate == "plan") or bool(edit)
    update: dict[str, Any] = {
        "decisions": [
            Decision(
                gate=gate,
                approved=approved,
                reason=reason,
                by="user",
                edited=edited and approved,
                revise=revise,
            )
        ]
    }
    if gate == "plan" and edited and approved:
        update["plan"] = check_plan_edit(state, data["plan"], "the edited plan")
    if edit and approved:
        update["work"] = _apply_code_edit(state, edit)
    if revise:
        work = dict(state.work)
        for key, w in state.work.items():
            if w.status == "pending":
                work[key] = w.model_copy(update={"revision": reason or "revise this code"})
        update["work"] = work
        return update
    if not approved:
        update["outcome"] = Outcome(
            status="rejected", message=f"rejected at the {gate} gate: {reason or 'no reason'}"
        )
    return update
