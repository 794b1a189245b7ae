"""LLM Finance-Critic policy: findings with a severity and the quoted text, and a finance
mapping grounded in the run's numbers.

The offline rubric's checks stay (they are deterministic); the model adds findings,
each of which must quote the write-up (a finding whose text is not in the draft is
dropped), and a finance mapping that cites numbers only as evidence references (shown as
`ev:ID`, never a typed numeral). A model finding marked blocker or major is an issue,
which sends the draft back to the Writer (bounded by the run's critic rounds).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agents.llm.common import check_prose, evidence_list, fence, fill_references, norm, render
from agents.offline import review as offline_review
from reprodesk.models import LLM, BadOutput, EndpointFailed, human, system
from reprodesk.schemas import Critique, Draft, ReviewPoint


class FindingOut(BaseModel):
    """One finding about the write-up."""

    rubric: str
    severity: Literal["blocker", "major", "minor", "note"]
    finding: str
    text: str


class ReviewAnswer(BaseModel):
    """A bank reviewer's findings and finance mapping."""

    findings: list[FindingOut] = Field(default_factory=list)
    finance_mapping: str = ""


class LLMCritic:
    """`ReviewPolicy`: the offline rubric plus a model's findings."""

    def __init__(self, llm: LLM, *, fallback: bool = False) -> None:
        self.llm, self.fallback = llm, fallback
        self.dropped = 0  # findings whose quoted text was not in the draft

    def __call__(self, draft: Draft, round_: int) -> Critique:
        base = offline_review(draft, round_)

        def check(a: ReviewAnswer) -> ReviewAnswer:
            check_prose(a.finance_mapping, draft.evidence)
            for f in a.findings:
                check_prose(f.finding, draft.evidence)
            return a

        try:
            answer = self.llm.structured(
                ReviewAnswer,
                [
                    system(render("critic", "system")),
                    human(
                        render(
                            "critic",
                            "user",
                            evidence=evidence_list(draft.evidence),
                            writeup=fence(draft.markdown[: self.llm.spec.context_chars], "writeup"),
                        )
                    ),
                ],
                what="review",
                check=check,
            )
        except BadOutput as exc:
            return base.model_copy(update={"notes": [*base.notes, f"LLM review skipped: {exc}"]})
        except EndpointFailed:
            if self.fallback:
                return base
            raise
        text = norm(draft.markdown)
        points = list(base.points)
        issues = list(base.issues)
        for f in answer.findings:
            if len(norm(f.text).split()) < 2 or norm(f.text) not in text:
                self.dropped += 1
                continue
            finding, _ = fill_references(f.finding, draft.evidence, as_code=True)
            points.append(
                ReviewPoint(rubric=f.rubric[:40], severity=f.severity, finding=finding, text=f.text)
            )
            if f.severity in ("blocker", "major"):
                issues.append(f"{f.rubric[:40]}: {finding}")
        notes = list(base.notes)
        if answer.finance_mapping.strip():
            mapping, _ = fill_references(answer.finance_mapping, draft.evidence, as_code=True)
            notes.append(f"finance mapping: {' '.join(mapping.split())}")
        return base.model_copy(
            update={"points": points, "issues": issues, "notes": notes, "approved": not issues}
        )
