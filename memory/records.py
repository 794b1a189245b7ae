"""What one finding looks like to the store: a search hit, filters, and its metadata.

Pure data, no Chroma: the findings commands, the desk and the store share these.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date as Date
from typing import Any, get_args

from pydantic import BaseModel, Field, computed_field

from reprodesk.schemas import Finding, UserError, Verdict


class SearchHit(BaseModel):
    """One search result: the finding and how close it is to the query."""

    finding: Finding
    distance: float = Field(description="Cosine distance to the query, 0 (same) to 2.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def score(self) -> float:
        """Cosine similarity, ``1 - distance``: higher is closer, 1 is identical."""
        return 1.0 - self.distance


class Filters(BaseModel):
    """Exact-match filters on stored findings; every field that is set must hold.

    ``paper`` matches the paper's title or its source (arXiv id, URL, path), ignoring
    case. ``since`` and ``until`` are ISO dates, both inclusive.
    """

    paper: str | None = None
    mechanism: str | None = None
    verdict: str | None = None
    run_id: str | None = None
    since: str | None = None
    until: str | None = None

    def where(self) -> dict[str, Any] | None:
        """The Chroma ``where`` clause, or None when nothing is filtered."""
        if self.verdict is not None and self.verdict not in get_args(Verdict):
            raise UserError(
                f"unknown verdict {self.verdict!r}; expected one of {get_args(Verdict)}"
            )
        clauses: list[dict[str, Any]] = []
        if self.paper is not None:
            key = self.paper.strip().casefold()
            clauses.append({"$or": [{"paper_key": key}, {"source_key": key}]})
        if self.mechanism is not None:
            clauses.append({"mechanism": self.mechanism})
        if self.verdict is not None:
            clauses.append({"verdict": self.verdict})
        if self.run_id is not None:
            clauses.append({"run_id": self.run_id})
        if self.since is not None:
            clauses.append({"day": {"$gte": _day(self.since, "since")}})
        if self.until is not None:
            clauses.append({"day": {"$lte": _day(self.until, "until")}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _day(value: str, what: str) -> int:
    """``2025-01-02`` -> 20250102: Chroma compares numbers, not strings."""
    try:
        parsed = Date.fromisoformat(value.strip())
    except ValueError:
        raise UserError(f"{what} {value!r}: expected a date like 2025-01-31") from None
    return parsed.year * 10000 + parsed.month * 100 + parsed.day


def _metadata(finding: Finding) -> dict[str, str | int | float | bool]:
    """Flat scalars for filtering, plus the whole finding as JSON so it round-trips.

    Chroma rejects None values, so unset numbers are left out rather than stored.
    """
    flat: dict[str, Any] = {
        "paper": finding.paper,
        "source": finding.source,
        "paper_key": finding.paper.strip().casefold(),
        "source_key": finding.source.strip().casefold(),
        "mechanism": finding.mechanism,
        "metric": finding.metric,
        "unit": finding.unit,
        "verdict": finding.verdict,
        "paper_value": finding.paper_value,
        "measured_value": finding.measured_value,
        "date": finding.date,
        "day": _day(finding.date, f"finding {finding.id}: date"),
        "run_id": finding.run_id,
        "json": finding.model_dump_json(),
    }
    return {key: value for key, value in flat.items() if value is not None}


def _finding(metadata: Any) -> Finding:
    return Finding.model_validate_json(str(metadata["json"]))


def newest_first(findings: Sequence[Finding]) -> list[Finding]:
    """Newest date first; within a date by run id, then finding id (a stable order)."""
    by_id = sorted(findings, key=lambda f: (f.run_id, f.id))
    return sorted(by_id, key=lambda f: f.date, reverse=True)
