"""The findings one mechanism's section hands the memory: each says what its verdict
compared against, so a search never shows a check of the code as a paper value."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reprodesk.results import ClaimResult
from reprodesk.schemas import Finding, Quote, Reference

if TYPE_CHECKING:
    from agents.offline.sections import MechanismSection


def claim_finding(
    section: MechanismSection,
    claim: ClaimResult,
    path: str,
    reference: Reference,
    paper_value: float | None,
) -> Finding:
    """A measured claim. ``paper_value`` is the paper's (stated or derived) or None; the
    value the verdict was judged against is kept as ``expected_value`` when it differs."""
    ctx = section.ctx
    against = claim.paper_value
    return Finding(
        id=f"{ctx.run_id}:{claim.id}",
        paper=ctx.paper_title,
        source=ctx.source,
        mechanism=section.mech.key,
        claim=claim.claim,
        metric=claim.metric or claim.id,
        paper_value=paper_value,
        measured_value=claim.measured_value,
        unit=claim.unit,
        verdict=claim.verdict,
        reference=reference,
        expected_value=None if paper_value == against else against,
        setup=section.setup,
        evidence=f"run {ctx.run_id}, job {section.main.key}, metric {path}",
        gotchas=list(section.mech.gotchas[:2]),
        run_id=ctx.run_id,
    )


def unchecked_finding(section: MechanismSection, key: str, quote: Quote, why: str) -> Finding:
    """A claim of the paper that a small run cannot check, with its page and the reason."""
    ctx = section.ctx
    return Finding(
        id=f"{ctx.run_id}:{key}",
        paper=ctx.paper_title,
        source=ctx.source,
        mechanism=section.mech.key,
        claim=quote.text,
        metric="none",
        verdict="not checkable",
        reference="none",
        setup=section.setup,
        evidence=f"paper {ctx.at}{quote.page}; reason: {why}",
        gotchas=[why],
        run_id=ctx.run_id,
    )
