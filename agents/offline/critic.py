"""Offline Finance-Critic policy: read the draft as a bank's model-risk reviewer would.

Rule checks that block publication until fixed —
every number traceable to evidence, every claim with a verdict, a finance angle
present, a scale-down record present, no secrets or personal data — and
bank-lens notes that do not block but travel with the write-up (which numbers
may enter a business case, which may not).
"""

from __future__ import annotations

import re

from reprodesk.schemas import Critique, Draft
from tools.evidence import untraceable

_SECRETS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an API key", re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")),
    ("an AWS access key", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9._-]{20,}")),
    ("an e-mail address", re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")),
    ("an IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b")),
    ("a home directory path", re.compile(r"(?:/home/|/Users/|/root/)[\w.-]+")),
)
_REQUIRED_SECTIONS = ("## TL;DR", "## Finance angle")
_PER_MECHANISM = ("### Setup and scale-down record", "### Claims")
_VERDICT = re.compile(r"\*\*(reproduced|partial|not reproduced|not checkable)\*\*")


def review(draft: Draft, round_: int) -> Critique:
    """Blocking issues (approved only with none) and notes that travel with the write-up."""
    issues: list[str] = []
    text = draft.markdown + "\n" + "\n".join(e.model_dump_json() for e in draft.evidence)
    for section in _REQUIRED_SECTIONS:
        if section not in draft.markdown:
            issues.append(f"missing section '{section.lstrip('# ')}'")
    if "## Finance angle" in draft.markdown:
        after = draft.markdown.split("## Finance angle", 1)[1].split("\n## ", 1)[0]
        if len(after.strip()) < 40:
            issues.append("the finance angle is empty")
    loose = untraceable(draft.markdown, draft.evidence)
    if loose:
        issues.append(f"numbers without evidence: {', '.join(loose[:10])}")
    mechanisms = draft.markdown.split("\n## ")
    reproduced = [m for m in mechanisms if "\n### Claims" in m]
    if not reproduced:
        issues.append("no mechanism section with a claims table")
    for part in reproduced:
        name = part.split("\n", 1)[0]
        for section in _PER_MECHANISM:
            if section not in part:
                issues.append(f"{name}: missing section '{section.lstrip('# ')}'")
        claims = part.split("\n### Claims", 1)[-1].split("\n### ", 1)[0]
        rows = [r for r in claims.splitlines() if r.startswith("|") and not r.startswith("|---")]
        for row in rows[1:]:  # the first row is the header
            if not _VERDICT.search(row) and "no claim of the paper checked" not in row:
                issues.append(f"claim without a verdict: {row[:80]}")
        if not rows[1:]:
            issues.append(f"{name}: the claims table is empty")
    for what, pattern in _SECRETS:
        if pattern.search(text):
            issues.append(f"the draft contains {what}; remove it before publishing")

    notes: list[str] = []
    verdicts = [f.verdict for f in draft.findings]
    if "not checkable" in verdicts:
        notes.append(
            "Some of the paper's headline numbers were not checkable at this scale: do not "
            "carry them into a business case without a measurement on the bank's own stack."
        )
    if any(f.verdict == "not reproduced" for f in draft.findings):
        notes.append("At least one claim did not reproduce: flag it before anyone relies on it.")
    notes.append(
        "Latency figures come from a CPU at toy scale: they rank variants, they are not "
        "capacity figures."
    )
    return Critique(approved=not issues, issues=issues, notes=notes, round=round_)
