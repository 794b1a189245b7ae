"""Reader: which mechanisms does the paper introduce or build on, what does it claim?

The node calls the read policy (`Deps.policies.read`: the catalog offline, a model
later) for the digest and the Plan. A paper with nothing the run can reproduce ends
with status `unsupported` and a message that says what to do in this mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from reprodesk.plan import Plan
from reprodesk.schemas import Outcome, UserError
from reprodesk.state import RunState


def unsupported_message(plan: Plan, mode: str) -> str:
    """Why nothing will run, and what the user can do about it in `mode`."""
    unselected = [m.key for m in plan.mechanisms if m.reproducible and not m.selected]
    if unselected:
        return (
            f"no mechanism is selected for this run; the paper also mentions "
            f"{', '.join(unselected)}: rerun with --mechanism {unselected[0]}"
        )
    if not plan.mechanisms:
        lead = "the paper describes no mechanism the recipe catalog knows"
    else:
        names = ", ".join(m.title for m in plan.mechanisms)
        lead = f"the paper describes {names}, which the run cannot reproduce"
    if mode == "offline":
        return (
            f"{lead}; offline mode reproduces catalog recipes only: add a recipe under "
            "recipes/ (see recipes/README.md), or let a model write the code: rerun with "
            "--llm deepseek (or openai, mimo, ollama, llamacpp; see the README)"
        )
    return (
        f"{lead} in mode {mode}: the model's plan quoted no claim the paper states (see the "
        "plan's notes); try a stronger Reader model (REPRODESK_LLM_AGENTS) or add a recipe"
    )


def surface_prior_runs(deps: Deps, plan: Plan, run_id: str) -> None:
    """Name, per mechanism, the earlier runs the findings memory holds measurements of.

    The memory is read, never written, here; a memory that cannot be read is a note in
    the plan, not a failed run.
    """
    from memory import prior_findings

    try:
        store = deps.open_store()
        for m in plan.mechanisms:
            found = prior_findings(store, m.key, exclude_run=run_id)
            m.prior_runs = sorted({f.run_id for f in found if f.run_id})
    except UserError as exc:
        plan.notes.append(
            f"the findings memory could not be read, so prior runs are not listed: {exc}"
        )


def make_reader(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    policy = deps.policies

    def reader(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="reader")
        found, plan = policy.read(state.paper, state.restrict)
        surface_prior_runs(deps, plan, state.run_id)
        log.info(
            "reader.done",
            mechanisms=[(m.key, m.role, m.selected) for m in plan.mechanisms],
            hyperparameters=len(found.hyperparameters),
            claims=len(found.claims),
        )
        update: dict[str, Any] = {"digest": found, "plan": plan}
        if not plan.to_reproduce():
            update["outcome"] = Outcome(
                status="unsupported", message=unsupported_message(plan, policy.name)
            )
        return update

    return reader
