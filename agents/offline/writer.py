"""Offline Writer policy: one write-up for the run, a section per reproduced mechanism.

A fixed structure filled from the Plan and the typed results in state — never from
the catalog. Its first lines say what the paper contributes that was *not* reproduced
(and why), so a mechanism the paper only builds on is never read as its result; the
TL;DR counts the paper's claims, apart from checks of the implementation. Every number
enters the text through an `EvidenceBook`, which becomes `evidence.json`.

On a later round the Writer adds the Finance-Critic's open points, so that a human at
the publish gate sees them in the document itself.
"""

from __future__ import annotations

from pathlib import PurePath

from agents.offline.analysis import capacity
from agents.offline.sections import Context, MechanismSection
from reprodesk.plan import MechanismPlan
from reprodesk.schemas import Draft, Quote
from reprodesk.state import RunState
from tools.evidence import EvidenceBook


def display_source(source: str) -> str:
    """URLs as they are; local files by name only (a path can name a person's home)."""
    if "://" in source and not source.startswith("file://"):
        return source
    return PurePath(source.removeprefix("file://")).name


def _not_reproduced(state: RunState) -> list[tuple[MechanismPlan, str]]:
    """Every mechanism of the plan the run did not reproduce, and why (in plan order)."""
    assert state.plan is not None
    out: list[tuple[MechanismPlan, str]] = []
    for m in state.plan.mechanisms:
        work = state.work.get(m.key)
        if work is not None and work.status == "ok":
            continue
        if work is not None and work.gave_up:
            out.append((m, work.gave_up))
        elif not m.reproducible and (m.selected or m.role == "introduces"):
            out.append((m, m.not_reproduced_because))
    return out


def write(state: RunState) -> Draft:
    assert state.plan is not None
    book = EvidenceBook()
    at = "s." if state.paper.page_unit == "section" else "p."
    ctx = Context(
        run_id=state.run_id,
        paper_title=state.paper.title,
        source=display_source(state.paper.source),
        at=at,
        book=book,
    )
    sections = [
        MechanismSection(ctx, state.plan.get(w.key), w)
        for w in state.runs_ok()
        if w.main is not None and w.main.parsed is not None
    ]
    for s in sections:
        s.build_rows()
    missing = _not_reproduced(state)
    lines: list[str] = []

    title = book.paper_quote("title", Quote(text=state.paper.title, page=1))
    names = ", ".join(s.mech.title for s in sections) or "nothing"
    lines += [
        f"# {title}: a small-scale reproduction of {names}",
        "",
        f"Paper: *{title}* (`{ctx.source}`). Run `{state.run_id}`.",
        "",
    ]
    contributions = [(m, why) for m, why in missing if m.role == "introduces"]
    for m, why in contributions:
        quote = m.quotes[0] if m.quotes else None
        where = f" ({at}{quote.page})" if quote else ""
        lines += [
            f"> **Not reproduced: {m.title}**, a contribution of this paper{where}: {why}.",
            "",
        ]
    if contributions and sections and all(s.mech.role == "builds_on" for s in sections):
        lines += [
            "> What follows reproduces only mechanisms this paper builds on; their results "
            "are not this paper's.",
            "",
        ]

    # TL;DR across mechanisms: the paper's claims, apart from checks of the code.
    paper_claims = [c for s in sections for c in s.rows.paper_claims]
    checks = [c for s in sections for c in s.rows.checks]
    n = book.derived("tldr.claims", len(paper_claims), "", formula="paper claims measured")
    ok = book.derived(
        "tldr.reproduced",
        sum(c.verdict == "reproduced" for c in paper_claims),
        "",
        formula="paper claims with verdict reproduced",
    )
    m_count = book.derived("tldr.mechanisms", len(sections), "", formula="mechanisms reproduced")
    passed = book.derived(
        "tldr.checks_passed",
        sum(c.verdict == "reproduced" for c in checks),
        "",
        formula="implementation checks that held",
    )
    n_checks = book.derived("tldr.checks", len(checks), "", formula="implementation checks")
    lines += ["## TL;DR", ""]
    lines.append(
        f"Across {m_count} mechanism(s), of {n} claims of the paper measured in real sandboxed "
        f"PyTorch runs, {ok} reproduced; {passed} of {n_checks} checks of the implementation "
        "held. Claims a small run cannot check are marked so below."
    )
    lines.append("")
    for s in sections:
        role = "introduced here" if s.mech.role == "introduces" else "built on"
        lines.append(f"- **{s.mech.title}** ({role}):")
        lines += s.tldr_lines() or ["  - no claim of the paper checked; see its checks"]
    for m, why in missing:
        lines.append(f"- **{m.title}**: not reproduced — {why}")
    lines.append("")

    for s in sections:
        lines += s.body()

    lines += ["## Finance angle", ""]
    for s in sections:
        if s.mech.finance_angle:
            lines += [f"**{s.mech.title}.** {s.planned('finance', s.mech.finance_angle)}", ""]
        lines += [f"*From this run:* {text}" for text in capacity(s)]
        if s.analysis.noisy:
            lines.append(
                f"*From this run:* the {s.mech.title} latencies are noise at this scale (see "
                "What the measurements show): no latency or cost-per-query figure of this run "
                "belongs in a business case."
            )
        lines.append("")
    if not any(s.mech.finance_angle for s in sections):
        lines += ["No finance angle was planned for these mechanisms.", ""]
    critique = state.critique
    if critique and not critique.approved:
        lines += ["## Open review points", ""]
        lines += [f"- {issue}" for issue in critique.issues]
        lines.append("")
    lines += ["## Reproduce it", "", "```sh"]
    for s in sections:
        repro = s.work.reproduction
        assert repro is not None
        argv = " ".join(repro.job.argv[1:-2])  # drop "python" and "--out out"
        lines.append(f"python recipes/{argv}   # {s.mech.key}, this run, on a CPU")
        lines.append(f"python recipes/{repro.script} --preset 4070 --device cuda   # 12 GB GPU")
    lines += [
        f"reprodesk replay {state.run_id}   # every step of this run",
        "```",
        "",
        "Every number above is listed in `evidence.json` with the job, metric, page or "
        "formula it comes from.",
        "",
    ]
    return Draft(
        markdown="\n".join(lines),
        evidence=book.items,
        figures=ctx.figures,
        findings=ctx.findings,
        round=state.critic_rounds + 1,
    )
