"""Profiler: repeat the measurement over a small grid, so one number is never one sample.

Offline policy: rerun the recipe with more repeats over a range of context
lengths (decode latency grows with the cache) and two seeds (the cache size
must not depend on the seed; the timings show their spread). Every job goes
through the ledger, so a resumed run reuses finished grid points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from agents.reproducer import build_job
from reprodesk.schemas import JobRecord, RunState
from tools.run_code import run_job

SEQ_LENS = "64,256,512"
SEEDS = (0, 1)
REPEATS = 5


def grid_args(base: dict[str, float | int | str], seed: int) -> dict[str, float | int | str]:
    args = dict(base)
    args.update({"seq_lens": SEQ_LENS, "repeats": REPEATS, "seed": seed, "steps": 8})
    return args


def make_profiler(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    def profiler(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="profiler")
        repro = state.reproduction
        assert repro is not None  # routed here only after a successful main job
        records: list[JobRecord] = []
        for seed in SEEDS:
            label = f"grid-seed{seed}"
            job = build_job(deps, repro.script, grid_args(repro.args, seed))
            done = run_job(deps.sandbox, deps.ledger, state.run_id, label, job)
            records.append(
                JobRecord(label=label, key=done.key, result=done.result, reused=done.reused)
            )
            log.info("profiler.job", label=label, status=done.result.status, reused=done.reused)
        return {"profile": records}

    return profiler
