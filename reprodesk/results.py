"""Typed results: what a recipe's final JSON line must hold (recipes/README.md).

`execute` validates every job's metrics into `RecipeResult`; a line that does not
validate makes the attempt fail with a message naming the field, which is what a human
or an LLM Reproducer needs back. Downstream agents read these models, never raw dicts.
Extra fields a recipe prints are kept (`extra="allow"`): evidence paths can point at them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reprodesk.schemas import Verdict

Scalar = float | int | str | bool | None


class ClaimResult(BaseModel):
    """One claim as the run measured it."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    claim: str = Field(description="The claim in words, as the recipe states it.")
    metric: str = Field(default="", description="Where the measured value comes from.")
    paper_value: float
    measured_value: float
    unit: str = ""
    tolerance: float | None = None
    verdict: Verdict
    reference: Literal["paper", "baseline"] = Field(
        default="paper",
        description="baseline: paper_value is itself measured in this run, not cited.",
    )


class Curve(BaseModel):
    """A figure a recipe draws from its own run: series of (x, y) points."""

    model_config = ConfigDict(extra="allow")

    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    series: dict[str, list[tuple[float, float]]]


class Environment(BaseModel):
    """Facts about where the job ran, as the job saw them."""

    model_config = ConfigDict(extra="allow")

    torch: str
    device: str
    gpu_name: str | None = None
    threads: int | None = None


class RecipeResult(BaseModel):
    """A recipe's final JSON metrics line."""

    model_config = ConfigDict(extra="allow")

    recipe: str = Field(min_length=1)
    config: dict[str, Any]
    env: Environment
    claims: list[ClaimResult] = Field(min_length=1)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    curves: dict[str, Curve] = Field(default_factory=dict)
    grid: list[dict[str, Any]] = Field(default_factory=list)
    wall_s: float | None = None

    @field_validator("claims")
    @classmethod
    def _unique_ids(cls, claims: list[ClaimResult]) -> list[ClaimResult]:
        seen: set[str] = set()
        for c in claims:
            if c.id in seen:
                raise ValueError(f"claim id '{c.id}' appears twice")
            seen.add(c.id)
        return claims

    def claim(self, claim_id: str) -> tuple[int, ClaimResult] | None:
        """The claim with this id and its index (metric paths say `claims.<index>`)."""
        return next(((i, c) for i, c in enumerate(self.claims) if c.id == claim_id), None)


def validate_metrics(metrics: dict[str, Any] | None) -> tuple[RecipeResult | None, str]:
    """(result, "") when the metrics line validates, else (None, a message naming the field)."""
    if not metrics:
        return None, "the job printed no JSON metrics line"
    try:
        return RecipeResult.model_validate(metrics), ""
    except ValidationError as exc:
        problems = []
        for e in exc.errors()[:3]:
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            problems.append(f"{where}: {e['msg']}")
        more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        return None, "the metrics line does not validate: " + "; ".join(problems) + more
