"""Profiler: repeat the measurement over a small grid, so one number is never one sample.

Offline policy: rerun the recipe with the argument sets its catalog entry
names (MLA: more repeats over a range of context lengths, two seeds), or else
with two more seeds, so that the write-up can show the spread of every claim. Every job goes
through the ledger, so a resumed run reuses finished grid points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from agents.reproducer import build_job
from recipes.catalog import CATALOG, Args, Recipe
from reprodesk.schemas import JobRecord, RunState
from tools.run_code import run_job

DEFAULT_PROFILE: dict[str, Args] = {f"seed{seed}": {"seed": seed} for seed in (1, 2)}


def profile_jobs(recipe: Recipe, base: Args) -> list[tuple[str, Args]]:
    """The recipe's own profile (e.g. MLA's context-length grid), or two more seeds."""
    plan = recipe.profile or DEFAULT_PROFILE
    return [(label, {**base, **overrides}) for label, overrides in plan.items()]


def make_profiler(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    def profiler(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="profiler")
        repro = state.reproduction
        assert repro is not None  # routed here only after a successful main job
        records: list[JobRecord] = []
        for label, args in profile_jobs(CATALOG[repro.mechanism], repro.args):
            job = build_job(deps, repro.script, args)
            done = run_job(deps.sandbox, deps.ledger, state.run_id, label, job)
            records.append(
                JobRecord(label=label, key=done.key, result=done.result, reused=done.reused)
            )
            log.info("profiler.job", label=label, status=done.result.status, reused=done.reused)
        return {"profile": records}

    return profiler
