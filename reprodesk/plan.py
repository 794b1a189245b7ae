"""The Plan: what a run will reproduce, and everything downstream needs to know about it.

The Reader's policy returns a `Plan` (the catalog is one source of it, an LLM Reader
another); the plan gate shows it and lets the user drop, add and edit; every agent after
the Reader reads the Plan in state and never the catalog. A Plan is also a file:
`plan.json` at the plan gate, edited by hand and given back with `reprodesk resume RUN
--plan FILE`, so every field here is plain data with a description.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from reprodesk.schemas import Hyperparameter, Quote, ScaleRow

Args = dict[str, float | int | str]

ClaimKind = Literal["paper", "implementation"]


class PlanClaim(BaseModel):
    """A claim the run will check, and the paper's sentence that states it."""

    id: str = Field(description="Stable id; a recipe reports its result under this id.")
    statement: str = Field(description="The claim in our words.")
    kind: ClaimKind = Field(
        default="paper",
        description="paper: the paper claims it, the run checks it; implementation: holds "
        "by construction when the code is right (a check of the code, not a reproduction).",
    )
    quote: Quote | None = Field(
        default=None, description="The paper's sentence that states this claim; None: not stated."
    )


class NotCheckable(BaseModel):
    """A claim of the paper that a small run cannot check, and why."""

    quote: Quote = Field(description="The paper's sentence.")
    why: str


class FigureSpec(BaseModel):
    """A figure drawn from the profiler's `grid` rows: y against x, one line per variant."""

    x: str
    y: str
    xlabel: str
    ylabel: str
    title: str


class Column(BaseModel):
    """One column of the measurements table: a metric of each variant and its label."""

    metric: str
    label: str


class MechanismPlan(BaseModel):
    """One mechanism of the paper: whether and how the run reproduces it."""

    key: str = Field(description="Catalog key (e.g. 'mla') or a slug of the paper's name.")
    title: str
    summary: str = ""
    role: Literal["introduces", "builds_on"] = Field(
        description="introduces: a contribution of this paper; builds_on: a known mechanism "
        "the paper uses (its result is not this paper's)."
    )
    score: float = Field(default=0.0, description="Strength of the evidence that it is there.")
    quotes: list[Quote] = Field(default_factory=list, description="Where the paper describes it.")
    source: Literal["catalog", "llm", "paper"] = Field(
        description="Who proposed this entry: the recipe catalog, an LLM Reader, or the "
        "paper's own words with no recipe behind them."
    )
    selected: bool = Field(default=True, description="Reproduce it in this run.")
    script: str | None = Field(default=None, description="Recipe file, when there is one.")
    not_reproduced_because: str = Field(
        default="", description="When it cannot be reproduced: why, and what would do it."
    )
    claims: list[PlanClaim] = Field(default_factory=list)
    hyperparameters: list[Hyperparameter] = Field(
        default_factory=list, description="Values the paper states, each with its quote."
    )
    args: Args = Field(default_factory=dict, description="The small-scale run's arguments.")
    scale_down: list[ScaleRow] = Field(default_factory=list)
    carries_over: list[str] = Field(default_factory=list)
    does_not_carry_over: list[str] = Field(default_factory=list)
    shrink: list[str] = Field(
        default_factory=list, description="Size arguments halved after a timeout or OOM."
    )
    grid: dict[str, Args] = Field(
        default_factory=dict, description="Profiler jobs: label -> argument overrides."
    )
    figures: list[FigureSpec] = Field(default_factory=list)
    table: list[Column] = Field(default_factory=list, description="Empty: every scalar metric.")
    gotchas: list[str] = Field(default_factory=list)
    finance_angle: str = ""
    not_checkable: list[NotCheckable] = Field(default_factory=list)
    estimated_s: float = Field(
        default=0.0, description="Estimated sandbox time for the main job and the grid."
    )
    prior_runs: list[str] = Field(
        default_factory=list, description="Earlier runs whose findings measured this mechanism."
    )

    @property
    def reproducible(self) -> bool:
        return self.script is not None and not self.not_reproduced_because


class Plan(BaseModel):
    """What the run reproduces: the paper's own contributions first."""

    mechanisms: list[MechanismPlan] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="What the Reader wants said.")

    def to_reproduce(self) -> list[MechanismPlan]:
        return [m for m in self.mechanisms if m.selected and m.reproducible]

    def not_reproduced(self) -> list[MechanismPlan]:
        """Contributions of the paper the run does not reproduce (selected or not)."""
        return [m for m in self.mechanisms if m.role == "introduces" and not m.reproducible]

    def get(self, key: str) -> MechanismPlan:
        return next(m for m in self.mechanisms if m.key == key)
