"""LLM Profiler policy: an ablation grid proposal, bounded in jobs and in estimated time.

The model proposes runs of the approved script with other argument values; only
arguments the approved run passes may change, at most `max_jobs` runs, and runs are kept
while their estimated time fits `budget_s`. The Profiler node runs them with the approved
files, so nothing runs that the code gate did not show. A catalog mechanism, or a model
that gives nothing usable, gets the Plan's grid (the offline policy).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from agents.llm.common import fence, render
from agents.offline import profile as offline_profile
from agents.offline.reproducer import recipe_argv
from reprodesk.models import LLM, BadOutput, EndpointFailed, human, system
from reprodesk.plan import MechanismPlan
from reprodesk.state import Reproduction

Value = float | int | str


class GridRun(BaseModel):
    """One extra run: a label and the arguments it changes."""

    label: str
    overrides: dict[str, Value]
    estimated_s: float = Field(default=0.0, ge=0)


class GridAnswer(BaseModel):
    """An ablation grid."""

    runs: list[GridRun]


class LLMProfiler:
    """`ProfilePolicy` over a model."""

    def __init__(
        self, llm: LLM, *, max_jobs: int = 4, budget_s: float = 600.0, fallback: bool = False
    ) -> None:
        self.llm, self.max_jobs, self.budget_s = llm, max_jobs, budget_s
        self.fallback = fallback

    def __call__(self, mech: MechanismPlan, approved: Reproduction) -> list[tuple[str, list[str]]]:
        if mech.source == "catalog":
            return offline_profile(mech, approved)
        try:
            answer = self.llm.structured(
                GridAnswer,
                [
                    system(render("profiler", "system", max_jobs=str(self.max_jobs))),
                    human(
                        render(
                            "profiler",
                            "user",
                            title=fence(mech.title, "paper"),
                            key=mech.key,
                            summary=fence(mech.summary, "paper"),
                            args=json.dumps(approved.args),
                            main_s=f"{mech.estimated_s:g}" if mech.estimated_s else "unknown",
                        )
                    ),
                ],
                what="grid",
            )
        except BadOutput:
            return offline_profile(mech, approved)
        except EndpointFailed:
            if self.fallback:
                return offline_profile(mech, approved)
            raise
        return self.bounded(mech, approved, answer)

    def bounded(
        self, mech: MechanismPlan, approved: Reproduction, answer: GridAnswer
    ) -> list[tuple[str, list[str]]]:
        """The model's runs within the bounds: known arguments, job count, time budget."""
        out: list[tuple[str, list[str]]] = []
        spent, labels = 0.0, set()
        per_job = approved.job.limits.wall_s
        for run in answer.runs:
            overrides = {k: v for k, v in run.overrides.items() if k in approved.args}
            if not overrides or len(out) >= self.max_jobs:
                continue
            estimate = min(run.estimated_s or per_job, per_job)
            if spent + estimate > self.budget_s:
                continue
            label = "".join(c if c.isalnum() or c in "-_" else "-" for c in run.label)[:40]
            if not label or label in labels:
                label = f"run{len(out) + 1}"
            labels.add(label)
            spent += estimate
            out.append(
                (
                    f"{mech.key}-{label}",
                    recipe_argv(approved.script, {**approved.args, **overrides}),
                )
            )
        return out or offline_profile(mech, approved)
