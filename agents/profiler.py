"""Profiler: more runs of the approved code, so that one number is never one sample.

The node asks the profile policy for (label, argv) per extra job and runs each with
the *approved* main job's files and limits: nothing runs that the code gate did not
show, even if the recipe on disk changed since. Every job goes through the ledger,
so a resumed run reuses finished grid points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from reprodesk.results import validate_metrics
from reprodesk.state import JobRecord, RunState
from tools.run_code import code_hash, run_job


def make_profiler(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    policy = deps.policies.profile

    def profiler(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="profiler")
        assert state.plan is not None
        work = dict(state.work)
        for w in state.runs_ok():
            approved = w.reproduction
            assert approved is not None
            records: list[JobRecord] = []
            for label, argv in policy(state.plan.get(w.key), approved):
                job = approved.job.model_copy(update={"argv": argv})
                done = run_job(deps.sandbox, deps.ledger, state.run_id, label, job)
                parsed, _ = validate_metrics(done.result.metrics)
                records.append(
                    JobRecord(
                        label=label,
                        key=done.key,
                        code_hash=code_hash(job.files),
                        result=done.result,
                        parsed=parsed if done.result.status == "ok" else None,
                        reused=done.reused,
                    )
                )
                log.info("profiler.job", label=label, status=done.result.status)
            work[w.key] = w.model_copy(update={"profile": records})
        return {"work": work}

    return profiler
