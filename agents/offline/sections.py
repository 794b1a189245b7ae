"""One mechanism's part of a write-up: mechanism, scale-down, claims, measurements, figures.

Everything comes from the Plan entry and the typed results in state; every number goes
through the shared `EvidenceBook` (job + metric path, page + quote, config, formula).
A paper value is cited only from the sentence the Plan says states that very claim;
otherwise the cell says "not stated" and shows what the run compared against instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.offline.analysis import Findings, analyse
from agents.offline.cells import (
    cell,
    evaluate,
    excerpt,
    formula_names,
    is_number,
    metric_at,
    stated_in,
    written_as,
)
from agents.offline.profile_notes import where_time_goes
from agents.offline.records import claim_finding, unchecked_finding

__all__ = ["Context", "MechanismSection", "cell", "is_number", "metric_at", "stated_in"]
from reprodesk.plan import MechanismPlan, PlanClaim
from reprodesk.results import ClaimResult, RecipeResult
from reprodesk.schemas import Figure, Finding, Hyperparameter, Quote, Reference
from reprodesk.state import JobRecord, MechanismRun
from tools.evidence import EvidenceBook


@dataclass
class Context:
    """What every section of one write-up shares."""

    run_id: str
    paper_title: str
    source: str
    at: str  # "p." for pages, "s." for LaTeX sections
    book: EvidenceBook
    findings: list[Finding] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Rows:
    paper: list[str] = field(default_factory=list)
    implementation: list[str] = field(default_factory=list)
    paper_claims: list[ClaimResult] = field(default_factory=list)
    checks: list[ClaimResult] = field(default_factory=list)


class MechanismSection:
    """The section of one reproduced mechanism."""

    def __init__(self, ctx: Context, mech: MechanismPlan, work: MechanismRun) -> None:
        assert work.main is not None and work.main.parsed is not None and work.reproduction
        self.ctx, self.mech, self.work = ctx, mech, work
        self.main: JobRecord = work.main
        self.result: RecipeResult = work.main.parsed
        self.metrics: dict[str, Any] = work.main.result.metrics or {}
        self.claims_by_id: dict[str, PlanClaim] = {c.id: c for c in mech.claims}
        self.rows = Rows()
        self.analysis = Findings()
        # claim id -> what its paper cell cited (kind, the paper's value), for its finding
        self.cited: dict[str, tuple[Reference, float | None]] = {}

    # ------------------------------------------------------------------ helpers

    def measured(self, id: str, path: str, unit: str = "", record: JobRecord | None = None) -> str:
        record = record or self.main
        value = float(metric_at(record.result.metrics or {}, path))
        return self.ctx.book.measured(
            id, value, unit, job=record.key, metric=path, percent=unit == "ratio"
        )

    def planned(self, id: str, text: str) -> str:
        """Plan prose (gotchas, labels, finance angle): its numbers cite the Plan's source."""
        return self.ctx.book.text_numbers(
            f"{self.mech.source}.{self.mech.key}.{id}", text, job="", catalog=True
        )

    @property
    def setup(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.work.reproduction.args.items())  # type: ignore[union-attr]
        return f"{self.main.result.backend} sandbox, {self.result.env.device}; {args}"

    # ------------------------------------------------------------------ claims

    def build_rows(self) -> Rows:
        self.analysis = analyse(self)
        spread_runs = [self.main, *[p for p in self.work.profile if p.parsed is not None]]
        for i, claim in enumerate(self.result.claims):
            plan_claim = self.claims_by_id.get(claim.id)
            kind = plan_claim.kind if plan_claim else "paper"
            path = f"claims.{i}.measured_value"
            measured = self.measured(f"{claim.id}.measured", path, claim.unit)
            verdict = f"**{claim.verdict}**"
            label: Reference = "paper"
            cited: float | None = None  # the paper's value, when the row shows one
            if claim.reference == "baseline":  # a value this run measured, not cited
                base = self.measured(f"{claim.id}.baseline", f"claims.{i}.paper_value", claim.unit)
                reference = (
                    f"{base} | measured baseline: job `{self.main.key}`, `claims.{i}.paper_value`"
                )
                label = "measured baseline"
                if kind != "implementation":
                    verdict += " (against the run's own baseline; the paper states no value)"
            elif kind == "implementation":
                reference = f"{self._expected(claim, 'by construction')} | expected by construction"
                label = "expected by construction"
            else:
                reference, compared = self._paper_cell(claim, plan_claim)
                verdict += compared
                label, cited = self.cited.pop(claim.id, ("recipe expectation", None))
            spread = self._spread(claim.id, claim.unit, spread_runs)
            text = cell(
                self.ctx.book.text_numbers(f"{claim.id}.text", claim.claim, job=self.main.key)
            )
            row = f"| {text} | {reference} | {measured} | {spread} | {verdict} |"
            if kind == "implementation":
                self.rows.implementation.append(row)
                self.rows.checks.append(claim)
            else:
                self.rows.paper.append(row)
                self.rows.paper_claims.append(claim)
            self.ctx.findings.append(claim_finding(self, claim, path, label, cited))
        self.rows.paper += self._not_checkable_rows()
        return self.rows

    def _expected(self, claim: ClaimResult, why: str) -> str:
        return self.ctx.book.derived(
            f"{claim.id}.expected",
            claim.paper_value,
            claim.unit,
            formula=f"claim {claim.id} at the run's configuration ({why})",
            percent=claim.unit == "ratio",
        )

    def _paper_cell(self, claim: ClaimResult, plan_claim: PlanClaim | None) -> tuple[str, str]:
        """(value | kind cells, what the verdict was compared against when not the paper's).

        A paper value is cited only from the sentence the Plan says states this claim, and
        only when that sentence prints the value; otherwise "not stated".
        """
        quote = plan_claim.quote if plan_claim else None
        match = stated_in(quote, claim.paper_value) if quote else None
        if quote is not None and match is not None:
            as_written, value = match
            self.cited[claim.id] = ("paper", value)
            shown = self.ctx.book.paper(f"{claim.id}.paper", value, claim.unit, quote, as_written)
            shown_quote = cell(excerpt(quote.text, as_written))
            self.ctx.book.paper_quote(
                f"{claim.id}.paper.excerpt", Quote(text=shown_quote, page=quote.page)
            )
            return f"{shown} | paper, {self.ctx.at}{quote.page}: “{shown_quote}”", ""
        derived = self._derived_cell(claim)
        if derived is not None:
            return derived
        expected = self._expected(claim, "at our scale")
        why = (
            "the sentence that states it prints no value for it"
            if quote is not None
            else "the paper states no value for it"
        )
        missing = self._missing_inputs(claim)
        if missing:
            why += "; it cannot be computed either: the paper does not state " + ", ".join(
                f"`{name}`" for name in missing
            )
        return (
            "not stated | —",
            f" (against {expected}, the recipe's expectation at our scale; {why})",
        )

    def _stated_values(self) -> dict[str, Hyperparameter]:
        return {h.name: h for h in self.mech.hyperparameters}

    def _missing_inputs(self, claim: ClaimResult) -> list[str]:
        formula = (claim.model_extra or {}).get("formula")
        if not isinstance(formula, str):
            return []
        stated = self._stated_values()
        return [n for n in formula_names(formula) if n not in stated]

    def _derived_cell(self, claim: ClaimResult) -> tuple[str, str] | None:
        """An arithmetic claim computed from the paper's own stated values, with its formula.

        The recipe names the formula (`formula` in its claim, over its argument names);
        the values are the hyperparameters the Reader found, each with its sentence.
        """
        formula = (claim.model_extra or {}).get("formula")
        if not isinstance(formula, str):
            return None
        stated = self._stated_values()
        try:
            names = formula_names(formula)
            if any(n not in stated for n in names):
                return None
            value = evaluate(formula, {n: stated[n].value for n in names})
        except (ValueError, SyntaxError, ZeroDivisionError):
            return None
        book, at = self.ctx.book, self.ctx.at
        inputs = ", ".join(
            f"{n} = "
            + book.paper(
                f"{claim.id}.input.{n}",
                stated[n].value,
                "",
                stated[n].quote,
                written_as(stated[n].quote, stated[n].value),
            )
            + f" ({at}{stated[n].quote.page})"
            for n in names
        )
        shown = book.derived(
            f"{claim.id}.derived",
            value,
            claim.unit,
            formula=f"{formula} with the paper's stated values",
            percent=claim.unit == "ratio",
        )
        self.cited[claim.id] = ("derived from the paper", value)
        note = ""
        if abs(value - claim.paper_value) > 1e-9 * max(1.0, abs(value)):
            ours = self._expected(claim, "at our scale")
            note = (
                f" (our scale's expectation is {ours}: the run does not keep the paper's "
                "ratios for this claim)"
            )
        return (
            f"{shown} | derived from the paper's stated values: `{formula}` with {inputs}",
            note,
        )

    def _spread(self, cid: str, unit: str, runs: list[JobRecord]) -> str:
        """Min–max of a claim's measured value over the main and profiler runs."""
        values: list[tuple[float, JobRecord, int]] = []
        for record in runs:
            found = record.parsed.claim(cid) if record.parsed else None
            if found is not None:
                values.append((found[1].measured_value, record, found[0]))
        if len(values) < 2:
            return "—"
        low = min(values, key=lambda v: v[0])
        high = max(values, key=lambda v: v[0])
        lo = self.measured(f"{cid}.min", f"claims.{low[2]}.measured_value", unit, low[1])
        hi = self.measured(f"{cid}.max", f"claims.{high[2]}.measured_value", unit, high[1])
        n = self.ctx.book.derived(f"{cid}.runs", len(values), "", formula="runs compared")
        return f"{lo} – {hi} ({n} runs)" if lo != hi else f"{lo} in all {n} runs"

    def _not_checkable_rows(self) -> list[str]:
        rows: list[str] = []
        for j, item in enumerate(self.mech.not_checkable):
            quote = item.quote
            key = f"{self.mech.key}.not_checkable.{j}"
            text = cell(self.ctx.book.paper_quote(key, quote))
            why = cell(self.planned(f"not_checkable.{j}.why", item.why))
            rows.append(
                f"| {text} ({self.ctx.at}{quote.page}) | as stated | paper, "
                f"{self.ctx.at}{quote.page} | — | — | **not checkable**: {why} |"
            )
            self.ctx.findings.append(unchecked_finding(self, key, quote, item.why))
        return rows

    # ------------------------------------------------------------------ text

    def tldr_lines(self) -> list[str]:
        lines: list[str] = []
        for claim in self.rows.paper_claims:
            index, _ = self.result.claim(claim.id) or (0, claim)
            shown = self.measured(f"tldr.{claim.id}", f"claims.{index}.measured_value", claim.unit)
            text = self.ctx.book.text_numbers(
                f"tldr.{claim.id}.text", claim.claim, job=self.main.key
            )
            lines.append(f"  - {text}: measured {shown} — **{claim.verdict}**")
        return lines

    def body(self) -> list[str]:
        m = self.mech
        role = (
            "introduced by this paper"
            if m.role == "introduces"
            else "a mechanism this paper builds on; its results are not this paper's"
        )
        lines = [f"## {m.title}", "", f"*{role}.*", ""]
        if m.prior_runs:  # what the findings memory already holds; cited, never reused
            runs = ", ".join(f"`{run}`" for run in m.prior_runs)
            lines += [
                f"*Measured before in runs {runs} (findings memory: `reprodesk findings list "
                f"--mechanism {m.key}`); no number of theirs is used here.*",
                "",
            ]
        lines += ["### The mechanism", ""]
        if m.summary:
            lines += [self.planned("summary", m.summary), ""]
        for q in m.quotes[:2]:
            quoted = self.ctx.book.paper_quote(f"{m.key}.mechanism.quote", q)
            lines += [f"> {quoted} ({self.ctx.at}{q.page})", ""]
        lines += self._setup()
        lines += [
            "### Claims: paper vs measured",
            "",
            "| Claim | Paper | Reference kind | Measured (ours) | Across runs | Verdict |",
            "|---|---|---|---|---|---|",
            *(self.rows.paper or ["| (no claim of the paper checked) | — | — | — | — | — |"]),
            "",
        ]
        if self.rows.implementation:
            lines += [
                "### Checks of the implementation",
                "",
                "These hold by construction when the code is right: they validate the code, "
                "they are not reproduced claims of the paper.",
                "",
                "| Check | Expected | Reference kind | Measured (ours) | Across runs | Verdict |",
                "|---|---|---|---|---|---|",
                *self.rows.implementation,
                "",
            ]
        lines += self._measurements()
        if self.analysis.shows:
            lines += ["### What the measurements show", ""]
            lines += [f"- {text}" for text in self.analysis.shows]
            lines.append("")
        lines += where_time_goes(self)
        lines += self._figures()
        if m.gotchas or self.analysis.gotchas:
            lines += ["### Gotchas", ""]
            lines += [f"- {g}" for g in self.analysis.gotchas]
            lines += [f"- {self.planned('gotcha', g)}" for g in m.gotchas]
            lines.append("")
        return lines

    def _setup(self) -> list[str]:
        repro = self.work.reproduction
        assert repro is not None
        env = self.result.env
        note = self.ctx.book.text_numbers(
            f"{self.mech.key}.note", repro.note[:1].upper() + repro.note[1:], job=self.main.key
        )
        attempts = self.ctx.book.derived(
            f"{self.mech.key}.attempts", self.work.attempts, "", formula="main-job launches"
        )
        lines = [
            "### Setup and scale-down record",
            "",
            f"Ran in the `{self.main.result.backend}` sandbox, torch `{env.torch}`, device "
            f"`{env.device}`, in {attempts} attempt(s). {note}.",
            "",
        ]
        for j, failed in enumerate(self.work.history, start=1):
            why = cell(failed.result.message or failed.result.status)[:300]
            why = self.ctx.book.text_numbers(f"{self.mech.key}.repair.{j}", why, job=failed.key)
            lines.append(
                f"- Repair needed: attempt `{failed.label}` ended {failed.result.status}: {why}"
            )
        if self.work.history:
            lines.append("")
        lines += [
            "| Hyperparameter | Paper | Ours | Source |",
            "|---|---|---|---|",
        ]
        by_name = {h.name: h for h in self.mech.hyperparameters}
        for row in self.mech.scale_down:
            hp = by_name.get(row.name)
            if row.paper is None:
                paper_cell = "not stated"
            elif hp is not None and row.source.startswith("paper") and hp.value == row.paper:
                # As the paper writes it ("0.0001", not 1.0e-04): the quote must print it.
                shown = written_as(hp.quote, row.paper)
                paper_cell = self.ctx.book.paper(f"hp.{row.name}", row.paper, "", hp.quote, shown)
            else:
                paper_cell = self.ctx.book.config(f"hp.{row.name}", row.paper, where=row.source)
            ours_value = repro.args.get(row.name, row.ours)
            ours = (
                self.ctx.book.config(f"ours.{row.name}", float(ours_value), where="job arguments")
                if is_number(ours_value)
                else str(ours_value)
            )
            label = cell(self.planned(f"row.{row.name}", row.description))
            source = cell(self.planned(f"row.{row.name}.source", row.source))
            lines.append(f"| {label} | {paper_cell} | {ours} | {source} |")
        lines += ["", "What carries over from this scale:", ""]
        lines += [f"- {self.planned('carries', c)}" for c in self.mech.carries_over]
        lines += ["", "What does not:", ""]
        lines += [f"- {self.planned('not_carries', c)}" for c in self.mech.does_not_carry_over]
        lines.append("")
        return lines

    def _measurements(self) -> list[str]:
        variants = self.result.variants
        if not variants:
            return []
        columns = [(c.metric, c.label) for c in self.mech.table] or [
            (k, k.replace("_", " "))
            for k in dict.fromkeys(
                k for v in variants.values() for k, x in v.items() if is_number(x)
            )
        ]
        lines = [
            "### Measurements",
            "",
            "| Variant | "
            + " | ".join(self.planned("column", label) for _, label in columns)
            + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name, values in variants.items():
            cells = [
                self.measured(f"{self.mech.key}.{name}.{key}", f"variants.{name}.{key}")
                if is_number(values.get(key))
                else "—"
                for key, _ in columns
            ]
            # A variant's name is the job's output ("aux_loss_1e-02"): its numbers cite the job.
            label = self.ctx.book.text_numbers(f"{self.mech.key}.variant", name, job=self.main.key)
            lines.append(f"| {cell(label)} | " + " | ".join(cells) + " |")
        lines.append("")
        return lines

    def _figures(self) -> list[str]:
        shown: list[str] = []
        key = self.mech.key
        for spec in self.mech.figures:
            points: dict[tuple[str, float], list[tuple[float, str]]] = {}
            for record in self.work.profile:
                for i, row in enumerate(record.parsed.grid if record.parsed else []):
                    if spec.x not in row or spec.y not in row:
                        continue
                    where = (str(row.get("variant", "")), float(row[spec.x]))
                    points.setdefault(where, []).append(
                        (float(row[spec.y]), f"{record.key}:grid.{i}.{spec.y}")
                    )
            series: dict[str, list[tuple[float, float]]] = {}
            for (variant, x), samples in sorted(points.items()):
                avg = sum(v for v, _ in samples) / len(samples)
                sources = " + ".join(s for _, s in samples)
                self.ctx.book.derived(
                    f"{key}.grid.{variant}.{x:g}", avg, "", formula=f"mean of {sources}"
                )
                series.setdefault(variant, []).append((x, avg))
            if series:
                name = (
                    f"{key}-grid-{spec.y}.png" if len(self.mech.figures) > 1 else f"{key}-grid.png"
                )
                self.ctx.figures.append(
                    Figure(
                        name=name,
                        title=spec.title,
                        xlabel=spec.xlabel,
                        ylabel=spec.ylabel,
                        series=series,
                    )
                )
                shown.append(name)
        for cname, curve in self.result.curves.items():
            if curve.series:
                name = f"{key}-{cname}.png"
                self.ctx.figures.append(
                    Figure(
                        name=name,
                        title=curve.title or cname,
                        xlabel=curve.xlabel,
                        ylabel=curve.ylabel,
                        series={str(k): list(v) for k, v in curve.series.items()},
                    )
                )
                shown.append(name)
        if not shown:
            return []
        lines = ["### Figures", ""]
        for name in shown:
            lines += [f"![{name}](figures/{name})", ""]
        lines += [
            "Plotted values come from the jobs' `metrics.json` under `results/`; profiler "
            "means are listed in `evidence.json`.",
            "",
        ]
        return lines
