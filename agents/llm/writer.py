"""LLM Writer policy: prose around numbers that it references by evidence id.

The structure, tables and every number come from the offline Writer (the Plan and the
typed results). The model adds an "In brief" paragraph in which a number can only be a
reference `{{ev:ID}}` to an evidence item; the reference is replaced with the value
from the results, and a copy of the evidence item is added, so the verifier traces it.
A numeral the model typed itself is rejected and the paragraph re-asked (bounded);
after that the write-up goes on without it, saying so.
"""

from __future__ import annotations

from pydantic import BaseModel

from agents.llm.common import check_prose, evidence_list, fence, fill_references, render
from agents.offline import write as offline_write
from reprodesk.models import LLM, BadOutput, EndpointFailed, human, system
from reprodesk.schemas import Draft
from reprodesk.state import RunState

HEADING = "## In brief"


class BriefAnswer(BaseModel):
    """A short paragraph whose numbers are evidence references."""

    paragraph: str


class LLMWriter:
    """`WritePolicy`: the offline draft plus a model's paragraph."""

    def __init__(self, llm: LLM, *, fallback: bool = False) -> None:
        self.llm, self.fallback = llm, fallback

    def __call__(self, state: RunState) -> Draft:
        draft = offline_write(state)
        tldr = draft.markdown.split("## TL;DR", 1)[-1].split("\n## ", 1)[0].strip()

        def check(a: BriefAnswer) -> BriefAnswer:
            if not a.paragraph.strip():
                raise ValueError("the paragraph is empty")
            if len(a.paragraph) > 1500:
                raise ValueError("the paragraph is longer than 120 words")
            check_prose(a.paragraph, draft.evidence)
            return a

        try:
            answer = self.llm.structured(
                BriefAnswer,
                [
                    system(render("writer", "system")),
                    human(
                        render(
                            "writer",
                            "user",
                            title=fence(state.paper.title, "paper"),
                            mechanisms=", ".join(w.key for w in state.runs_ok()),
                            evidence=evidence_list(draft.evidence),
                            tldr=tldr,
                        )
                    ),
                ],
                what="paragraph",
                check=check,
            )
        except BadOutput:
            return draft  # the fixed structure stands on its own
        except EndpointFailed:
            if self.fallback:
                return draft
            raise
        prose, printed = fill_references(" ".join(answer.paragraph.split()), draft.evidence)
        return draft.model_copy(
            update={
                "markdown": insert_section(draft.markdown, HEADING, prose),
                "evidence": [*draft.evidence, *printed],
            }
        )


def insert_section(markdown: str, heading: str, body: str) -> str:
    """`heading` and `body` after the TL;DR section (or at the end)."""
    block = f"{heading}\n\n{body}\n\n"
    at = markdown.find("## TL;DR")
    nxt = markdown.find("\n## ", at + 1) if at != -1 else -1
    if nxt == -1:
        return markdown.rstrip() + "\n\n" + block
    return markdown[: nxt + 1] + block + markdown[nxt + 1 :]
