"""Offline Finance-Critic policy: read the draft as a bank's model-risk reviewer would.

A rubric, each finding with a severity and the text it refers to (`ReviewPoint`):

- evidence: every number traced (the verifier's count), every paper value inside the
  quote it is cited from, every claim row with a verdict;
- scale honesty: a toy run says what does not carry over, and a full-scale figure
  computed from it says it is an estimate;
- model risk, in the spirit of SR 11-7: conceptual soundness (claims compared against
  the recipe's own expectation rather than a paper value, checks of the code counted
  apart), outcomes analysis (claims that did not reproduce), ongoing monitoring (what a
  validator would ask to see re-measured);
- operations: serving cost, latency and memory for an in-house deployment, and whether
  this run's latencies can be used at all (read from the draft, not assumed);
- shareability: no secret, account or card number, contact data or internal host
  (`tools.shareable`);
- finance mapping: the finance angle uses a number of this run or the paper.

Blockers and majors are issues: the verdict is revise, and the draft goes back to the
Writer (bounded by the run's policy). Minors and notes travel with the write-up.
Quoted text in an issue is put in backticks: the Writer prints open points in the
draft, and code spans hold no numbers the verifier counts.
"""

from __future__ import annotations

import re
from typing import Literal

from reprodesk.schemas import Critique, Draft, ReviewPoint
from tools.shareable import leaks
from tools.verify import check_numbers

Severity = Literal["blocker", "major", "minor", "note"]
_REQUIRED_SECTIONS = ("## TL;DR", "## Finance angle")
_PER_MECHANISM = ("### Setup and scale-down record", "### Claims")
_VERDICT = re.compile(r"\*\*(reproduced|partial|not reproduced|not checkable)\*\*")
_OPERATIONS = re.compile(r"\b(?:memory|GPU|latenc\w*|cost|throughput|sessions?|capacity)\b", re.I)
_ESTIMATE = re.compile(r"not a deployment plan|\ban estimate\b", re.I)


def _quote(text: str, width: int = 120) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_zero(text: str) -> bool:
    try:
        return float(text.rstrip("%")) == 0
    except ValueError:
        return False


def _section(markdown: str, heading: str) -> str:
    if heading not in markdown:
        return ""
    return markdown.split(heading, 1)[1].split("\n## ", 1)[0]


def _rows(part: str) -> list[str]:
    claims = part.split("\n### Claims", 1)[-1].split("\n### ", 1)[0]
    rows = [r for r in claims.splitlines() if r.startswith("|") and not r.startswith("|---")]
    return rows[1:]  # the first row is the header


def rubric(draft: Draft) -> list[ReviewPoint]:
    md = draft.markdown
    points: list[ReviewPoint] = []

    def add(rubric: str, severity: Severity, finding: str, text: str = "") -> None:
        points.append(ReviewPoint(rubric=rubric, severity=severity, finding=finding, text=text))

    # ---- evidence
    for section in _REQUIRED_SECTIONS:
        if section not in md:
            add("evidence", "blocker", f"missing section '{section.lstrip('# ')}'")
    problems, _ = check_numbers(md, draft.evidence)
    for p in problems:
        add("evidence", "blocker", f"a number without evidence: `{p.message}`", _quote(p.text))
    for item in draft.evidence:
        if item.kind == "paper" and item.display not in str(item.source.get("quote", "")):
            add(
                "evidence",
                "blocker",
                f"a paper value is cited from a quote that does not print it (`{item.id}`)",
                _quote(str(item.source.get("quote", ""))),
            )
    mechanisms = [m for m in md.split("\n## ") if "\n### Claims" in m]
    if not mechanisms:
        add("evidence", "blocker", "no mechanism section with a claims table")
    for part in mechanisms:
        name = part.split("\n", 1)[0]
        for section in _PER_MECHANISM:
            if section not in part:
                add("evidence", "blocker", f"{name}: missing section '{section.lstrip('# ')}'")
        rows = _rows(part)
        if not rows:
            add("evidence", "blocker", f"{name}: the claims table is empty")
        for row in rows:
            if not _VERDICT.search(row) and "no claim of the paper checked" not in row:
                add("evidence", "blocker", "a claim without a verdict", _quote(row))

    figures = {f.name: f for f in draft.figures}
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md):
        spec = figures.get(target.removeprefix("figures/"))
        if spec is None:
            add("evidence", "blocker", "an embedded figure the run does not draw", target)
        elif not any(points for points in spec.series.values()):
            add("evidence", "blocker", "a figure with no data", target)

    # ---- scale honesty
    for part in mechanisms:
        name = part.split("\n", 1)[0]
        after = part.split("What does not:", 1)[1] if "What does not:" in part else ""
        if not re.search(r"^- \S", after.split("\n### ", 1)[0], re.M):
            add("scale honesty", "major", f"{name}: no list of what does not carry over")
    finance = _section(md, "## Finance angle")
    for line in finance.splitlines():
        if "From this run" in line and "configuration" in line and not _ESTIMATE.search(line):
            add(
                "scale honesty",
                "major",
                "a full-scale figure extrapolated from a toy run without saying so",
                _quote(line),
            )
    if "cpu" in md.lower() and "### Measurements" in md:
        add(
            "scale honesty",
            "note",
            "the measurements come from a CPU at toy scale: absolute times and losses do not "
            "carry over to a GPU or to the paper's size",
        )

    # ---- model risk (SR 11-7: soundness, outcomes, monitoring)
    for part in mechanisms:
        for row in _rows(part):
            if "the recipe's expectation at our scale" in row:
                add(
                    "model risk",
                    "minor",
                    "conceptual soundness: compared against the recipe's own expectation, not a "
                    "value the paper states; a validator would ask where that expectation "
                    "comes from",
                    _quote(row.split("|")[1]),
                )
            cells = [c.strip() for c in row.strip("|").split("|")]
            if (
                len(cells) >= 6
                and cells[2].startswith("measured baseline")
                and cells[1] == cells[3]
                and _is_zero(cells[1])
                and "**reproduced**" in row
            ):
                add(
                    "model risk",
                    "major",
                    "conceptual soundness: reproduced with the measured value and its baseline "
                    "both zero: at this configuration the comparison cannot fail",
                    _quote(cells[0]),
                )
            if "**not reproduced**" in row or "**partial**" in row:
                add(
                    "model risk",
                    "minor",
                    "outcomes analysis: this claim did not fully reproduce; do not rely on it "
                    "before it is understood",
                    _quote(row.split("|")[1]),
                )
    if (
        "Checks of the implementation" in md
        and "checks of the implementation" not in md.split("\n## ", 2)[1].lower()
    ):
        add(
            "model risk",
            "major",
            "the TL;DR does not keep checks of the code apart from the paper's claims",
        )
    if "not checkable" in md:
        add(
            "model risk",
            "note",
            "ongoing monitoring: the headline numbers marked not checkable need a measurement "
            "on the bank's own stack before they enter a business case",
        )

    # ---- operations
    if finance and not _OPERATIONS.search(finance):
        add("operations", "major", "the finance angle names no serving cost, latency or memory")
    noisy = "The timings are noisy" in md or "The ranking is not stable" in md
    if "### Measurements" in md and re.search(r"\bms\b|latenc", md):
        if noisy:
            add(
                "operations",
                "note",
                "this run's latencies are noise (the draft says so): they neither rank the "
                "variants nor size a deployment",
            )
        elif "Neighbours in the ranking are not separated" in md:
            add(
                "operations",
                "note",
                "latencies come from this machine at toy scale: they rank only the variants "
                "whose gaps exceed the spread (the draft names the ties), and they are not "
                "capacity figures",
            )
        else:
            add(
                "operations",
                "note",
                "latencies come from this machine at toy scale: they rank the variants of "
                "this run only, they are not capacity figures",
            )

    # ---- shareability
    for leak in leaks(md):
        add("shareability", "blocker", f"contains {leak.what}; remove it", _quote(leak.text))

    # ---- finance mapping
    if "## Finance angle" in md:
        if len(finance.strip()) < 40:
            add("finance mapping", "blocker", "the finance angle is empty")
        elif not re.search(r"\d", re.sub(r"`[^`]*`", "", finance)):
            add(
                "finance mapping",
                "major",
                "the finance angle uses no number of this run or the paper",
                _quote(finance.strip()),
            )
    return points


def review(draft: Draft, round_: int) -> Critique:
    """Approve when the rubric finds no blocker or major; otherwise revise, with findings."""
    points = rubric(draft)
    issues = [
        f"[{p.severity}] {p.rubric}: {p.finding}" + (f" — `{p.text}`" if p.text else "")
        for p in points
        if p.severity in ("blocker", "major")
    ]
    notes = [
        f"{p.rubric}: {p.finding}" + (f" — `{p.text}`" if p.text else "")
        for p in points
        if p.severity in ("minor", "note")
    ]
    return Critique(approved=not issues, issues=issues, notes=notes, round=round_, points=points)
