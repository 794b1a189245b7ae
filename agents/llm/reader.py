"""LLM Reader policy: the Plan for any paper, grounded in the paper's own sentences.

The model names mechanisms, claims and values; every quote it returns must occur in the
paper's text (after normalisation): a quote that does not is dropped and counted, a
hyperparameter whose value is not in its quote is dropped, and a mechanism left with no
quote is not reproduced. The result is merged with the deterministic digest: where the
catalog knows a mechanism its entry wins; the model adds what the catalog does not know
(`source="llm"`, `script="<key>.py"`, which the LLM Reproducer writes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from agents.llm.common import QuoteFinder, cut, fence, render
from agents.offline import read as offline_read
from agents.offline.reader import KNOWN
from reprodesk.models import LLM, BadOutput, EndpointFailed, human, system
from reprodesk.plan import MechanismPlan, NotCheckable, Plan, PlanClaim
from reprodesk.schemas import Digest, Hyperparameter, Paper
from tools.evidence import numbers_in

Value = float | int | str
MAX_GRID = 4


class ClaimOut(BaseModel):
    """A claim the run can check."""

    id: str
    statement: str
    quote: str = ""


class ValueOut(BaseModel):
    """A value the paper states."""

    name: str
    value: float
    quote: str


class MechanismOut(BaseModel):
    """One mechanism of the paper."""

    key: str
    title: str
    summary: str = ""
    role: Literal["introduces", "builds_on"] = "introduces"
    quotes: list[str] = Field(default_factory=list)
    claims: list[ClaimOut] = Field(default_factory=list)
    hyperparameters: list[ValueOut] = Field(default_factory=list)
    args: dict[str, Value] = Field(default_factory=dict)
    grid: dict[str, dict[str, Value]] = Field(default_factory=dict)
    gotchas: list[str] = Field(default_factory=list)
    does_not_carry_over: list[str] = Field(default_factory=list)
    finance_angle: str = ""


class ReaderAnswer(BaseModel):
    """The mechanisms a paper introduces or builds on."""

    mechanisms: list[MechanismOut]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "mechanism"


class LLMReader:
    """`ReadPolicy` over a model; the offline digest is its deterministic half."""

    def __init__(self, llm: LLM, *, fallback: bool = False) -> None:
        self.llm = llm
        self.fallback = fallback  # the catalog's plan alone when the endpoint fails

    def __call__(self, paper: Paper, restrict: Sequence[str]) -> tuple[Digest, Plan]:
        found, plan = offline_read(paper, [k for k in restrict if k in KNOWN])
        try:
            answer = self._ask(paper)
        except BadOutput as exc:
            plan.notes.append(f"the LLM Reader gave no usable plan ({exc}); this is the catalog's")
            return found, plan
        except EndpointFailed as exc:
            if not self.fallback:
                raise
            plan.notes.append(f"--fallback offline: the catalog's plan only ({exc})")
            return found, plan
        return found, _merge(plan, answer, QuoteFinder(paper), restrict)

    def _ask(self, paper: Paper) -> ReaderAnswer:
        text = fence(cut(paper.text, self.llm.spec.context_chars), "paper")
        return self.llm.structured(
            ReaderAnswer,
            [
                system(render("reader", "system")),
                human(render("reader", "user", title=fence(paper.title, "paper"), paper=text)),
            ],
            what="plan",
        )


def _merge(plan: Plan, answer: ReaderAnswer, quotes: QuoteFinder, restrict: Sequence[str]) -> Plan:
    """The catalog's entries, then what only the model found (grounded in quotes)."""
    catalog_titles = {m.title.lower() for m in plan.mechanisms if m.source == "catalog"}
    taken = {m.key for m in plan.mechanisms if m.source == "catalog"}
    added: list[MechanismPlan] = []
    for m in answer.mechanisms:
        key = _slug(m.key or m.title)
        if key in KNOWN or key in taken or m.title.lower() in catalog_titles:
            continue  # the catalog's entry is deterministic and wins
        taken.add(key)
        added.append(_mechanism(m, key, quotes))
    keys = {m.key for m in added}
    mechanisms = [m for m in plan.mechanisms if not (m.source == "paper" and m.key in keys)]
    mechanisms += added
    notes = list(plan.notes)
    if quotes.dropped:
        notes.append(
            f"the LLM Reader returned {quotes.dropped} quote(s) that are not in the "
            "paper's text; they were dropped"
        )
    if restrict:
        for mp in mechanisms:
            mp.selected = mp.key in restrict
    mechanisms.sort(key=lambda m: (m.role != "introduces", -m.score))
    return Plan(mechanisms=mechanisms, notes=notes)


def _mechanism(m: MechanismOut, key: str, quotes: QuoteFinder) -> MechanismPlan:
    where = [q for q in (quotes.find(t) for t in m.quotes) if q is not None]
    claims = []
    seen: set[str] = set()
    for c in m.claims:
        cid = _slug(c.id or c.statement)
        if cid in seen:
            continue
        seen.add(cid)
        claims.append(
            PlanClaim(
                id=cid, statement=c.statement, quote=quotes.find(c.quote) if c.quote else None
            )
        )
    values = []
    for h in m.hyperparameters:
        q = quotes.find(h.quote)
        if q is not None and any(_same(n, h.value) for n in numbers_in(q.text)):
            values.append(Hyperparameter(name=_slug(h.name), value=h.value, quote=q))
    grounded = where or [c.quote for c in claims if c.quote]
    args = {_slug(k): v for k, v in m.args.items() if isinstance(v, int | float)}
    grid = {
        _slug(label): {_slug(k): v for k, v in o.items() if _slug(k) in args}
        for label, o in list(m.grid.items())[:MAX_GRID]
    }
    return MechanismPlan(
        key=key,
        title=m.title[:120],
        summary=m.summary[:500],
        role=m.role,
        score=float(len(where) + len([c for c in claims if c.quote])),
        quotes=where,
        source="llm",
        script=f"{key}.py",
        not_reproduced_because=(
            ""
            if grounded and claims
            else "the LLM Reader quoted nothing the paper says about it"
            if not grounded
            else "the LLM Reader found no claim to check"
        ),
        claims=claims,
        hyperparameters=values,
        args=args,
        grid={k: v for k, v in grid.items() if v},
        gotchas=[g[:300] for g in m.gotchas[:5]],
        does_not_carry_over=[d[:300] for d in m.does_not_carry_over[:5]],
        finance_angle=m.finance_angle[:600],
        not_checkable=list[NotCheckable](),
    )


def _same(number: str, value: float) -> bool:
    try:
        return abs(float(number.rstrip("%")) - value) <= 1e-9 * max(1.0, abs(value))
    except ValueError:
        return False
