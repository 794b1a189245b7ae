"""What every LLM policy shares: its prompt file, fencing untrusted text, quote checks.

Prompts live in `agents/prompts/<agent>.md`, one `## name` section per message; a
`{{field}}` in a section is filled with plain data (never format strings in logic).
Paper text and model output are untrusted: fenced as data in the prompt, checked before
use, and run only in the sandbox after the code gate.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

from reprodesk.schemas import EvidenceItem, Paper, Quote

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
_SECTION = re.compile(r"^## (\w+)\s*$", re.MULTILINE)
_FIELD = re.compile(r"\{\{(\w+)\}\}")
_EV_REF = re.compile(r"\{\{\s*ev:([^}\s]+)\s*\}\}")


@cache
def sections(agent: str) -> dict[str, str]:
    """The `## name` sections of `agents/prompts/<agent>.md`."""
    text = (PROMPTS / f"{agent}.md").read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def render(agent: str, section: str, **fields: str) -> str:
    """A prompt section with its `{{field}}`s filled; unknown `{{...}}` are left alone."""
    return _FIELD.sub(
        lambda m: fields[m.group(1)] if m.group(1) in fields else m.group(0),
        sections(agent)[section],
    )


def fence(text: str, tag: str) -> str:
    """Untrusted text that cannot close its own fence."""
    return re.sub(rf"</?\s*{tag}\s*>", f"[{tag}]", text, flags=re.IGNORECASE)


def cut(text: str, limit: int) -> str:
    """Head and tail of `text` within `limit` characters, with a marker where it was cut."""
    if len(text) <= limit:
        return text
    half = max(1, limit // 2)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def norm(text: str) -> str:
    """For matching quotes: NFKC, one kind of quote mark and dash, lowercase, one space."""
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(str.maketrans("‘’“”–—‐", "''\"\"---"))
    return " ".join(text.lower().split())


class QuoteFinder:
    """Finds a model's quote in the paper (after normalisation) and its page."""

    def __init__(self, paper: Paper) -> None:
        self.pages = [norm(p) for p in paper.pages]
        self.whole = norm(paper.text)
        self.dropped = 0

    def find(self, text: str) -> Quote | None:
        """The quote with its page, or None (counted in `dropped`)."""
        n = norm(text.strip().strip('"').strip())
        if len(n.split()) < 3:  # too short to show that the paper says it
            self.dropped += 1 if text.strip() else 0
            return None
        for i, page in enumerate(self.pages):
            if n in page:
                return Quote(text=text.strip().strip('"').strip(), page=i + 1)
        if n in self.whole:  # across a page break
            at = self.whole.find(n)
            starts = [self.whole.find(p) for p in self.pages]
            page_no = sum(1 for s in starts if 0 <= s <= at) or 1
            return Quote(text=text.strip().strip('"').strip(), page=page_no)
        self.dropped += 1
        return None


def evidence_list(evidence: list[EvidenceItem], limit: int = 60) -> str:
    """Evidence the model may reference, one per line (its value stays out of the prompt's
    instructions but is shown so that the model can say larger/smaller)."""
    lines = []
    for e in evidence[:limit]:
        if e.kind in ("measured", "derived", "paper", "config"):
            what = e.source.get("metric") or e.source.get("formula") or e.source.get("where")
            lines.append(f"- {e.id}: {e.kind} {what or ''} {e.unit}".rstrip())
    return "\n".join(lines)


def references(text: str) -> list[str]:
    return _EV_REF.findall(text)


def fill_references(
    text: str, evidence: list[EvidenceItem], *, as_code: bool = False
) -> tuple[str, list[EvidenceItem]]:
    """Replace `{{ev:ID}}` with the evidence's display (or `ev:ID` in code, which the
    verifier skips); returns the text and one evidence copy per number printed."""
    by_id = {e.id: e for e in evidence}
    printed: list[EvidenceItem] = []

    def sub(m: re.Match[str]) -> str:
        item = by_id[m.group(1)]
        if as_code:
            return f"`ev:{item.id}`"
        printed.append(item.model_copy(update={"id": f"{item.id}@prose{len(printed) + 1}"}))
        return f"{item.display}{' ' + item.unit if item.unit and item.unit != '%' else ''}"

    return _EV_REF.sub(sub, text), printed


def check_prose(text: str, evidence: list[EvidenceItem]) -> str:
    """Prose whose every number is an evidence reference; ValueError naming the first
    numeral or unknown reference (that message goes back to the model)."""
    from tools.evidence import numbers_in

    known = {e.id for e in evidence}
    unknown = [r for r in references(text) if r not in known]
    if unknown:
        raise ValueError(f"{{{{ev:{unknown[0]}}}}} is not one of the evidence ids listed")
    bare = numbers_in(_EV_REF.sub(" ", text))
    if bare:
        raise ValueError(
            f"the numeral {bare[0]} is not an evidence reference: write {{{{ev:ID}}}} for "
            "a measured number and no digits otherwise"
        )
    return text
