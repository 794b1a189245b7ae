"""Reproducer: a job for every mechanism the Plan reproduces, and repairs after failures.

The node calls the reproduce policy (`Deps.policies.reproduce`): `propose` for a
mechanism with no job yet, `repair` for one whose last attempt failed, `revise` for
one a human sent back from the code gate with a request — bounded by the run's
`max_repair_attempts`. A mechanism the policy cannot repair is given up
with the reason; the run goes on with the others, and fails only when all failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from reprodesk.schemas import Outcome
from reprodesk.state import MechanismRun, RunState


def make_reproducer(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    policy = deps.policies.reproduce

    def reproducer(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="reproducer")
        assert state.plan is not None  # routed here only with a plan
        work = dict(state.work)
        for mech in state.plan.to_reproduce():
            w = work.get(mech.key) or MechanismRun(key=mech.key)
            if w.reproduction is None and not w.gave_up:
                first = policy.propose(mech, state.paper)
                if isinstance(first, str):  # e.g. a model that returned no usable code
                    w = w.model_copy(update={"gave_up": first})
                else:
                    w = w.model_copy(update={"reproduction": first})
            elif w.status == "retry":
                last = (
                    f"revision requested: {w.revision}"
                    if w.revision
                    else f"{w.main.result.status}: {w.main.result.message}"
                    if w.main
                    else "no result"
                )
                if w.attempts >= state.policy.max_repair_attempts:
                    w = w.model_copy(update={"gave_up": f"failed {w.attempts} times; last: {last}"})
                else:
                    fixed = (
                        policy.revise(mech, w, w.revision) if w.revision else policy.repair(mech, w)
                    )
                    if isinstance(fixed, str):
                        w = w.model_copy(update={"gave_up": fixed})
                    else:
                        # A revision that did not run still counts against the bound.
                        attempts = w.attempts + (1 if w.revision and w.main is None else 0)
                        w = w.model_copy(
                            update={"reproduction": fixed, "revision": "", "attempts": attempts}
                        )
            work[mech.key] = w
            repro = w.reproduction
            log.info(
                "reproducer.job",
                mechanism=mech.key,
                attempt=repro.attempt if repro else 0,
                gave_up=w.gave_up or None,
            )
        update: dict[str, Any] = {"work": work}
        if work and all(w.status == "failed" for w in work.values()):
            update["outcome"] = Outcome(
                status="failed",
                message="; ".join(f"{k}: {w.gave_up}" for k, w in work.items())
                + f" — read each job's output with `reprodesk replay {state.run_id}`",
            )
        return update

    return reproducer
