"""Writer: the write-up, where every number is measured or cited, never typed in.

Offline policy: a fixed structure filled from the run's artifacts, the same for
every recipe. A recipe's metrics line gives `claims` (paper value, measured
value, tolerance, verdict), `variants` (the measurements table) and optionally
`curves` (figures); the profiler's jobs give `grid` rows and the spread of
each claim across seeds. Numbers enter the text only through an `EvidenceBook`,
which records where each came from (job + metric path, paper page + quote,
config, formula); the same book becomes `evidence.json`. Claims the paper makes
that a small run cannot check are listed as such, with the catalog's reason.

On a later round the Writer adds the Finance-Critic's open points, so that a
human at the publish gate sees them in the document itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import structlog

from agents.deps import Deps
from recipes.catalog import CATALOG, Recipe
from reprodesk.schemas import (
    Claim,
    Draft,
    Figure,
    Finding,
    JobRecord,
    Quote,
    RunState,
    Verdict,
)
from tools.evidence import EvidenceBook, numbers_in

_VERDICTS: dict[str, Verdict] = {
    "reproduced": "reproduced",
    "partial": "partial",
    "not reproduced": "not reproduced",
    "not checkable": "not checkable",
}


def metric_at(metrics: dict[str, Any], path: str) -> Any:
    """Follow a dotted path (list indices as numbers) into a metrics object."""
    node: Any = metrics
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def paper_statement(claims: list[Claim], value: float) -> tuple[Claim, str, float] | None:
    """The paper's own sentence stating `value` (to its rounding), and the number as written.

    Papers round: 0.017578 is stated as "1.76%". A stated number matches when it
    is within half a unit of its last printed digit.
    """
    if value == 0:
        return None
    for claim in claims:
        for number in numbers_in(claim.text):
            digits = number.rstrip("%")
            if len(digits.replace(".", "").lstrip("0")) < 2:
                continue  # "1", "2", "0.5": too common to be sure the paper means this value
            scale = 100.0 if number.endswith("%") else 1.0
            stated = float(digits) / scale
            decimals = len(digits.split(".")[1]) if "." in digits else 0
            if abs(stated - value) <= 0.5 * 10.0**-decimals / scale + 1e-12:
                return claim, number, stated
    return None


def cell(text: str) -> str:
    """Text made safe for a Markdown table cell: a '|' would end the cell."""
    return " ".join(text.replace("|", "\\|").split())


def display_source(source: str) -> str:
    """URLs as they are; local files by name only (a path can name a person's home)."""
    if "://" in source and not source.startswith("file://"):
        return source
    return PurePath(source.removeprefix("file://")).name


class _Writer:
    """One write-up; methods append sections and register every number they print."""

    def __init__(self, state: RunState) -> None:
        assert state.digest and state.reproduction and state.main and state.main.result.metrics
        self.state = state
        self.digest = state.digest
        self.repro = state.reproduction
        self.main: JobRecord = state.main
        self.metrics: dict[str, Any] = state.main.result.metrics
        self.recipe: Recipe = CATALOG[self.repro.mechanism]
        self.book = EvidenceBook()
        self.lines: list[str] = []
        self.findings: list[Finding] = []
        self.figures: list[Figure] = []
        # LaTeX sources have no pages: their quote locations are section numbers.
        self.at = "s." if state.paper.page_unit == "section" else "p."

    def measured(
        self, id: str, path: str, unit: str = "", *, record: JobRecord | None = None
    ) -> str:
        record = record or self.main
        value = float(metric_at(record.result.metrics or {}, path))
        return self.book.measured(
            id, value, unit, job=record.key, metric=path, percent=unit == "ratio"
        )

    def catalog(self, id: str, text: str) -> str:
        """Catalog prose (gotchas, labels, the finance angle): its numbers cite the catalog."""
        return self.book.text_numbers(f"catalog.{self.recipe.key}.{id}", text, job="", catalog=True)

    @property
    def setup(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.repro.args.items())
        return f"{self.main.result.backend} sandbox, CPU; {args}"

    # ------------------------------------------------------------------ sections

    def header(self) -> None:
        title = self.book.paper_quote("title", Quote(text=self.state.paper.title, page=1))
        self.lines += [
            f"# {self.recipe.title}: a small-scale reproduction",
            "",
            f"Paper: *{title}* (`{display_source(self.state.paper.source)}`).",
            "",
            f"Run `{self.state.run_id}`.",
            "",
        ]

    def claims_rows(self) -> list[str]:
        rows: list[str] = []
        spread_runs = [self.main, *[p for p in self.state.profile if p.result.metrics]]
        for i, claim in enumerate(self.metrics.get("claims", [])):
            cid, unit = str(claim["id"]), str(claim.get("unit", ""))
            verdict = _VERDICTS.get(str(claim["verdict"]), "not checkable")
            path = f"claims.{i}.measured_value"
            measured = self.measured(f"{cid}.measured", path, unit)
            paper_value = float(claim["paper_value"])
            if claim.get("reference") == "baseline":  # a value this run measured, not cited
                base = self.measured(f"{cid}.baseline", f"claims.{i}.paper_value", unit)
                paper_cell = f"{base} (measured baseline)"
            else:
                paper_cell = self._paper_cell(cid, paper_value, unit)
            spread = self._spread(cid, i, unit, spread_runs)
            text = cell(
                self.book.text_numbers(f"{cid}.text", str(claim["claim"]), job=self.main.key)
            )
            rows.append(f"| {text} | {paper_cell} | {measured} | {spread} | **{verdict}** |")
            self.findings.append(
                Finding(
                    id=f"{self.state.run_id}:{cid}",
                    paper=self.state.paper.title,
                    source=display_source(self.state.paper.source),
                    mechanism=self.recipe.key,
                    claim=str(claim["claim"]),
                    metric=str(claim.get("metric", cid)),
                    paper_value=paper_value,
                    measured_value=float(metric_at(self.metrics, path)),
                    unit=unit,
                    verdict=verdict,
                    setup=self.setup,
                    evidence=f"run {self.state.run_id}, job {self.main.key}, metric {path}",
                    gotchas=list(self.recipe.gotchas[:2]),
                    run_id=self.state.run_id,
                )
            )
        rows += self._not_checkable_rows()
        return rows

    def _paper_cell(self, cid: str, value: float, unit: str) -> str:
        match = paper_statement(self.digest.claims, value)
        if match is not None:
            stated, as_written, stated_value = match
            quote = Quote(text=stated.text, page=stated.page)
            cell = self.book.paper(f"{cid}.paper", stated_value, unit, quote, as_written)
            return f"{cell} (stated, {self.at}{stated.page})"
        cell = self.book.derived(
            f"{cid}.expected",
            value,
            unit,
            formula=f"the recipe's claim {cid} at the run's configuration",
            percent=unit == "ratio",
        )
        return f"{cell} (expected at our scale)"

    def _spread(self, cid: str, index: int, unit: str, runs: list[JobRecord]) -> str:
        """Min–max of a claim's measured value over the main and profiler runs."""
        values: list[tuple[float, JobRecord]] = []
        for record in runs:
            claims = (record.result.metrics or {}).get("claims", [])
            if index < len(claims) and claims[index].get("id") == cid:
                values.append((float(claims[index]["measured_value"]), record))
        if len(values) < 2:
            return "—"
        low = min(values, key=lambda v: v[0])
        high = max(values, key=lambda v: v[0])
        path = f"claims.{index}.measured_value"
        lo = self.measured(f"{cid}.min", path, unit, record=low[1])
        hi = self.measured(f"{cid}.max", path, unit, record=high[1])
        n = self.book.derived(f"{cid}.runs", len(values), "", formula="runs compared")
        return f"{lo} – {hi} ({n} runs)" if lo != hi else f"{lo} in all {n} runs"

    def _not_checkable_rows(self) -> list[str]:
        rows: list[str] = []
        for j, (pattern, why) in enumerate(self.recipe.not_checkable):
            stated = next(
                (c for c in self.digest.claims if re.search(pattern, c.text, re.IGNORECASE)), None
            )
            if stated is None or any(stated.text in row for row in rows):
                continue  # one sentence can hold two such claims
            quote = Quote(text=stated.text, page=stated.page)
            text = cell(self.book.paper_quote(f"not_checkable.{j}", quote))
            rows.append(
                f"| {text} ({self.at}{quote.page}) | as stated | — | — | **not checkable**: {why} |"
            )
            self.findings.append(
                Finding(
                    id=f"{self.state.run_id}:not_checkable.{j}",
                    paper=self.state.paper.title,
                    source=display_source(self.state.paper.source),
                    mechanism=self.recipe.key,
                    claim=text,
                    metric="none",
                    verdict="not checkable",
                    setup=self.setup,
                    evidence=f"paper {self.at}{quote.page}; reason: {why}",
                    gotchas=[why],
                    run_id=self.state.run_id,
                )
            )
        return rows

    def tldr(self, claim_rows: list[str]) -> None:
        claims = self.metrics.get("claims", [])
        n = len(claims)
        ok = sum(str(c["verdict"]) == "reproduced" for c in claims)
        checked = self.book.derived("tldr.claims", n, "", formula="claims measured")
        reproduced = self.book.derived("tldr.reproduced", ok, "", formula="verdict reproduced")
        skipped = len(claim_rows) > n  # rows beyond the measured claims: the paper's unchecked
        self.lines += ["## TL;DR", ""]
        self.lines.append(
            f"Of {checked} claims measured in a real sandboxed PyTorch run, {reproduced} "
            "reproduced"
            + (
                "; the paper's claims that a small run cannot check are marked so below."
                if skipped
                else "."
            )
        )
        self.lines.append("")
        for i, claim in enumerate(claims):
            cid, unit = str(claim["id"]), str(claim.get("unit", ""))
            measured = self.measured(f"tldr.{cid}", f"claims.{i}.measured_value", unit)
            text = self.book.text_numbers(
                f"tldr.{cid}.text", str(claim["claim"]), job=self.main.key
            )
            self.lines.append(f"- {text}: measured {measured} — **{claim['verdict']}**")
        self.lines.append("")

    def mechanism(self) -> None:
        self.lines += ["## The mechanism", "", self.catalog("summary", self.recipe.summary), ""]
        hit = next((m for m in self.digest.mechanisms if m.name == self.recipe.key), None)
        for q in hit.quotes[:2] if hit else []:
            quoted = self.book.paper_quote("mechanism.quote", q)
            self.lines += [f"> {quoted} ({self.at}{q.page})", ""]

    def setup_section(self) -> None:
        env = (self.metrics.get("env") or {}) if isinstance(self.metrics.get("env"), dict) else {}
        torch_v, device = env.get("torch", "unknown"), env.get("device", "cpu")
        note = self.repro.note[:1].upper() + self.repro.note[1:]
        self.lines += [
            "## Setup and scale-down record",
            "",
            f"Ran in the `{self.main.result.backend}` sandbox, torch `{torch_v}`, device "
            f"`{device}`. {note}.",
            "",
            "| Hyperparameter | Paper | Ours | Source |",
            "|---|---|---|---|",
        ]
        for row in self.repro.scale_down:
            if row.paper is None:
                paper_cell = "not stated"
            else:
                hp = next((h for h in self.digest.hyperparameters if h.name == row.name), None)
                paper_cell = (
                    self.book.paper(f"hp.{row.name}", row.paper, "", hp.quote)
                    if hp and row.source.startswith("paper")
                    else self.book.config(f"hp.{row.name}", row.paper, where=row.source)
                )
            ours = self.book.config(f"ours.{row.name}", row.ours, where="reproduction.args")
            self.lines.append(
                f"| {cell(self.catalog(f'row.{row.name}', row.description))} | {paper_cell} "
                f"| {ours} | {cell(row.source)} |"
            )
        self.lines += ["", "What carries over from this scale:", ""]
        self.lines += [f"- {self.catalog('carries', c)}" for c in self.repro.carries_over]
        self.lines += ["", "What does not:", ""]
        self.lines += [
            f"- {self.catalog('not_carries', c)}" for c in self.repro.does_not_carry_over
        ]
        self.lines.append("")

    def claims_section(self, rows: list[str]) -> None:
        self.lines += [
            "## Claims: paper vs measured",
            "",
            "| Claim | Paper | Measured (ours) | Across runs | Verdict |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]

    def measurements(self) -> None:
        variants = self.metrics.get("variants") or {}
        if not isinstance(variants, dict) or not variants:
            return
        columns = list(self.recipe.table) or [
            (k, k.replace("_", " "))
            for k in dict.fromkeys(
                k for v in variants.values() for k, x in v.items() if _is_number(x)
            )
        ]
        self.lines += [
            "## Measurements",
            "",
            "| Variant | "
            + " | ".join(self.catalog("column", label) for _, label in columns)
            + " |",
            "|---|" + "---|" * len(columns),
        ]
        for name, values in variants.items():
            cells = [
                self.measured(f"{name}.{key}", f"variants.{name}.{key}")
                if _is_number(values.get(key))
                else "—"
                for key, _ in columns
            ]
            self.lines.append(f"| {name} | " + " | ".join(cells) + " |")
        self.lines.append("")

    def figures_section(self) -> None:
        shown: list[str] = []
        spec = self.recipe.grid_figure
        if spec is not None:
            points: dict[tuple[str, float], list[tuple[float, str]]] = {}
            for record in self.state.profile:
                for i, row in enumerate((record.result.metrics or {}).get("grid", [])):
                    where = (str(row["variant"]), float(row[spec.x]))
                    points.setdefault(where, []).append(
                        (float(row[spec.y]), f"{record.key}:grid.{i}.{spec.y}")
                    )
            series: dict[str, list[tuple[float, float]]] = {}
            for (variant, x), samples in sorted(points.items()):
                avg = sum(v for v, _ in samples) / len(samples)
                sources = " + ".join(s for _, s in samples)
                self.book.derived(f"grid.{variant}.{x:g}", avg, "", formula=f"mean of {sources}")
                series.setdefault(variant, []).append((x, avg))
            if series:
                self.figures.append(
                    Figure(
                        name="grid.png",
                        title=spec.title,
                        xlabel=spec.xlabel,
                        ylabel=spec.ylabel,
                        series=series,
                    )
                )
                shown.append("grid.png")
        curves = self.metrics.get("curves") or {}
        for name, curve in curves.items() if isinstance(curves, dict) else []:
            series = {
                str(label): [(float(x), float(y)) for x, y in pts]
                for label, pts in curve.get("series", {}).items()
            }
            if series:
                self.figures.append(
                    Figure(
                        name=f"{name}.png",
                        title=str(curve.get("title", name)),
                        xlabel=str(curve.get("xlabel", "")),
                        ylabel=str(curve.get("ylabel", "")),
                        series=series,
                    )
                )
                shown.append(f"{name}.png")
        if shown:
            self.lines += ["## Figures", ""]
            for name in shown:
                self.lines += [f"![{name}](figures/{name})", ""]
            self.lines += [
                "Plotted values come from the jobs' `metrics.json` under `results/`; "
                "profiler means are listed in `evidence.json`.",
                "",
            ]

    def closing(self) -> None:
        self.lines += ["## Gotchas", ""]
        self.lines += [f"- {self.catalog('gotcha', g)}" for g in self.recipe.gotchas]
        finance = self.catalog("finance", self.recipe.finance_angle)
        self.lines += ["", "## Finance angle", "", finance, ""]
        critique = self.state.critique
        if critique and not critique.approved:
            self.lines += ["## Open review points", ""]
            self.lines += [f"- {issue}" for issue in critique.issues]
            self.lines.append("")
        argv = " ".join(self.repro.job.argv[1:-2])  # drop "python" and "--out out"
        self.lines += [
            "## Reproduce it",
            "",
            "```sh",
            f"python recipes/{argv}   # this run, on a CPU",
            f"python recipes/{self.repro.script} --preset 4070 --device cuda   # a 12 GB GPU",
            f"reprodesk replay {self.state.run_id}   # every step of this run",
            "```",
            "",
            "Every number above is listed in `evidence.json` with the job, metric, page or "
            "formula it comes from.",
            "",
        ]


def write(state: RunState) -> Draft:
    w = _Writer(state)
    w.header()
    rows = w.claims_rows()
    w.tldr(rows)
    w.mechanism()
    w.setup_section()
    w.claims_section(rows)
    w.measurements()
    w.figures_section()
    w.closing()
    return Draft(
        markdown="\n".join(w.lines),
        evidence=w.book.items,
        figures=w.figures,
        findings=w.findings,
        round=state.critic_rounds + 1,
    )


def make_writer(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    del deps

    def writer(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="writer")
        draft = write(state)
        log.info("writer.draft", chars=len(draft.markdown), evidence=len(draft.evidence))
        return {"draft": draft}

    return writer
