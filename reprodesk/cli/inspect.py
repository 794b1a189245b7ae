"""Read-only commands: `read` (the Reader alone), `findings search|list|show|export`,
`doctor`."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from reprodesk.cli.render import err, out
from reprodesk.schemas import UserError
from reprodesk.settings import load_settings

findings_app = typer.Typer(help="Query the findings memory.", no_args_is_help=True)

if TYPE_CHECKING:
    from memory.store import Filters, FindingStore
    from reprodesk.schemas import Finding

PaperOpt = Annotated[
    str | None, typer.Option("--paper", help="Only this paper: its exact title or source.")
]
MechanismOpt = Annotated[
    str | None, typer.Option("--mechanism", help="Only this mechanism, e.g. mla.")
]
VerdictOpt = Annotated[
    str | None,
    typer.Option("--verdict", help="reproduced, partial, 'not reproduced' or 'not checkable'."),
]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Measured on or after DATE.")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Measured on or before DATE.")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Only this run id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output.")]

# Columns for the finding tables: what is left after these goes to the claim (and run id),
# which wrap; at 80 columns the claim column is about 40 wide.
_NUMBERS_WIDTH = 16
_VERDICT_WIDTH = 10


_NOTHING = "no findings yet: publish a run first (`reprodesk run ...`)"


def _store() -> FindingStore:
    from memory.store import FindingStore

    settings = load_settings()
    return FindingStore.open(
        None if settings.chroma_url else settings.home_dir / "memory", url=settings.chroma_url
    )


def _filters(
    paper: str | None = None,
    mechanism: str | None = None,
    verdict: str | None = None,
    since: str | None = None,
    until: str | None = None,
    run_id: str | None = None,
) -> Filters:
    from memory.store import Filters

    filters = Filters(
        paper=paper, mechanism=mechanism, verdict=verdict, since=since, until=until, run_id=run_id
    )
    filters.where()  # bad input is a usage error before anything is opened
    return filters


def _value(value: float | None, unit: str) -> str:
    return "—" if value is None else f"{value:g} {unit}".strip()


def _what(f: Finding) -> Text:
    """Mechanism and claim, then the run id in full on its own line (folded, never cut)."""
    text = Text(f.mechanism, style="bold") + Text(f": {f.claim}")
    text.append("\nrun ", style="dim")
    text.append(f.run_id or "—", style="cyan")
    return text


_AGAINST = {  # what the second line of a finding's numbers calls its reference
    "expected by construction": "by construction",
    "measured baseline": "baseline",
    "recipe expectation": "expected",
}


def _numbers(f: Finding) -> Text:
    """Measured, then what it was judged against: the paper's value, or, when the paper
    gives none, the check's own reference, never shown as the paper's."""
    measured = _value(f.measured_value, f.unit)
    if f.expected_value is not None and f.paper_value is None:
        label = _AGAINST.get(f.reference, f.reference)
        return Text(f"{measured}\n{label} {_value(f.expected_value, f.unit)}")
    return Text(f"{measured}\npaper {_value(f.paper_value, f.unit)}")


def _findings_table(first: str, rows: list[tuple[str, Finding]]) -> Table:
    table = Table(first, "finding", "measured", "verdict", show_lines=True)
    table.columns[1].overflow = "fold"
    table.columns[1].ratio = 1
    table.columns[2].max_width = _NUMBERS_WIDTH
    table.columns[3].max_width = _VERDICT_WIDTH
    for lead, f in rows:
        table.add_row(lead, _what(f), _numbers(f), Text(f.verdict))
    return table


def _dump(findings: list[Finding]) -> list[dict[str, object]]:
    return [f.model_dump(mode="json") for f in findings]


@findings_app.command("search")
def findings_search(
    query: Annotated[str, typer.Argument(help="What you want to know, in words.")],
    k: Annotated[int, typer.Option("-k", help="How many findings to return.")] = 5,
    paper: PaperOpt = None,
    mechanism: MechanismOpt = None,
    verdict: VerdictOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search published findings by meaning (offline embeddings), closest first."""
    if k < 1:
        raise UserError(f"-k {k}: must be at least 1")
    _filters(paper, mechanism, verdict, since, until)
    with _store() as store:
        hits = store.search(
            query, k=k, paper=paper, mechanism=mechanism, verdict=verdict, since=since, until=until
        )
        empty = not hits and store.count() == 0
    if as_json:
        print(json.dumps([{"score": h.score, **h.finding.model_dump(mode="json")} for h in hits]))
        return
    if not hits:
        out.print(_NOTHING if empty else "no findings match these filters")
        return
    out.print(_findings_table("score", [(f"{h.score:.2f}", h.finding) for h in hits]))


@findings_app.command("list")
def findings_list(
    paper: PaperOpt = None,
    mechanism: MechanismOpt = None,
    verdict: VerdictOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    run_id: RunOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Published findings, newest first, with exact filters."""
    if limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    filters = _filters(paper, mechanism, verdict, since, until, run_id)
    with _store() as store:
        found = store.findings(filters, limit=limit)
        empty = not found and store.count() == 0
    if as_json:
        print(json.dumps(_dump(found)))
        return
    if not found:
        out.print(_NOTHING if empty else "no findings match these filters")
        return
    out.print(_findings_table("date", [(f.date, f) for f in found]))


@findings_app.command("show")
def findings_show(
    ident: Annotated[str, typer.Argument(help="A finding id (RUN:CLAIM) or a run id.")],
    as_json: JsonOpt = False,
) -> None:
    """Every field of one finding, or of all the findings of one run."""
    with _store() as store:
        one = store.get(ident)
        found = [one] if one is not None else store.findings(_filters(run_id=ident))
    if not found:
        raise UserError(f"no finding or run {ident!r} in the findings store at {store.where}")
    if as_json:
        print(json.dumps(_dump(found) if one is None else found[0].model_dump(mode="json")))
        return
    for i, f in enumerate(found):
        if i:
            out.print()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for name in ("id", "run_id", "paper", "source", "mechanism", "claim", "metric"):
            grid.add_row(name, Text(str(getattr(f, name))))
        grid.add_row("measured", Text(_value(f.measured_value, f.unit)))
        grid.add_row("paper value", Text(_value(f.paper_value, f.unit)))
        if f.expected_value is not None:
            grid.add_row(
                "judged against", Text(f"{_value(f.expected_value, f.unit)} ({f.reference})")
            )
        elif f.reference:
            grid.add_row("judged against", Text(f.reference))
        for name in ("verdict", "setup", "evidence", "date"):
            grid.add_row(name, Text(str(getattr(f, name))))
        for gotcha in f.gotchas:
            grid.add_row("gotcha", Text(gotcha))
        out.print(grid)


_CSV_FIELDS = [
    "id",
    "run_id",
    "date",
    "paper",
    "source",
    "mechanism",
    "claim",
    "metric",
    "paper_value",
    "measured_value",
    "unit",
    "verdict",
    "reference",
    "expected_value",
    "setup",
    "evidence",
    "gotchas",
]


@findings_app.command("export")
def findings_export(
    paper: PaperOpt = None,
    mechanism: MechanismOpt = None,
    verdict: VerdictOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    run_id: RunOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON, one array (the default).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV, one row a finding.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Every matching finding, newest first, as JSON or CSV (gotchas joined by ' | ')."""
    if as_json and as_csv:
        raise UserError("--json and --csv: choose one format")
    filters = _filters(paper, mechanism, verdict, since, until, run_id)
    with _store() as store:
        found = store.findings(filters)
    buffer = io.StringIO()
    if as_csv:
        writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for f in found:
            row = f.model_dump(mode="json")
            row["gotchas"] = " | ".join(f.gotchas)
            writer.writerow({key: "" if row[key] is None else row[key] for key in _CSV_FIELDS})
    else:
        buffer.write(json.dumps(_dump(found), indent=2) + "\n")
    if output is None:
        sys.stdout.write(buffer.getvalue())
        return
    partial = output.with_name(output.name + ".partial")
    try:
        partial.write_text(buffer.getvalue(), encoding="utf-8")
        partial.replace(output)  # a reader never sees half a file
    except OSError as exc:
        raise UserError(f"--output {output}: {exc.strerror or exc}") from exc
    err.print(Text(f"{len(found)} findings written to {output}"))


def read(
    source: Annotated[
        str, typer.Argument(help="Paper: arXiv id or URL, PDF/HTML URL, or local file.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Fetch URLs again.")] = False,
) -> None:
    """Run the Reader alone: mechanisms, hyperparameters and claims, with pages.

    SOURCE may also be an arXiv id or URL (2405.04434, arxiv:2405.04434v2,
    https://arxiv.org/abs/2405.04434): metadata from the arXiv API, text from the
    LaTeX source when there is one. LaTeX has no pages: its numbers are sections (s.N).
    """
    from tools.digest import digest
    from tools.papers import load_paper

    settings = load_settings()
    from tools.papers.fetch import Fetcher

    paper = load_paper(
        source,
        cache_dir=settings.home_dir / "cache",
        refresh=refresh,
        fetcher=Fetcher(deadline_s=settings.fetch_deadline_s),
    )
    found = digest(paper)
    if as_json:
        about = paper.model_dump(
            mode="json",
            include={"source", "kind", "title", "authors", "date", "arxiv_id", "page_unit"},
        )
        about["pages"] = len(paper.pages)
        about["sections"] = [{"heading": s.heading, "page": s.page} for s in paper.sections]
        about["notes"] = paper.notes
        print(json.dumps({**found.model_dump(mode="json"), "paper": about}, indent=2))
        return
    at, where = ("s.", "section") if paper.page_unit == "section" else ("p.", "page")
    # Paper text is untrusted: Text() keeps "[...]" in it from being read as rich markup.
    out.print(Text(found.title, style="bold"))
    authors = ", ".join(paper.authors[:6]) + (" et al." if len(paper.authors) > 6 else "")
    facts = [authors, paper.date, f"arXiv:{paper.arxiv_id}" if paper.arxiv_id else ""]
    facts.append(f"{paper.kind}, {len(paper.pages)} {where}s")
    out.print(Text(" · ".join(f for f in facts if f)))
    for note in paper.notes:
        err.print(Text(f"note: {note}"))
    t = Table("mechanism", "score", "evidence")
    for m in found.mechanisms:
        quotes = "; ".join(f"{at}{q.page}: {q.text[:70]}" for q in m.quotes[:2])
        t.add_row(Text(m.title), f"{m.score:.1f}", Text(quotes))
    out.print(t)
    t = Table("hyperparameter", "value", where, "quote")
    for h in found.hyperparameters:
        t.add_row(h.name, f"{h.value:g}", str(h.quote.page), Text(h.quote.text[:80]))
    out.print(t)
    t = Table(where, "claim")
    for c in found.claims:
        t.add_row(str(c.page), Text(c.text))
    out.print(t)


def doctor() -> None:
    """Check what this machine can do: torch, sandbox backends, Docker, GPU, LLM, store."""
    settings = load_settings()
    table = Table("check", "ok", "detail")

    def row(name: str, ok: bool, detail: str) -> None:
        table.add_row(name, "[green]yes[/green]" if ok else "[red]no[/red]", detail)

    try:
        import torch

        row("torch", True, torch.__version__)
        cuda = torch.cuda.is_available()
        row("GPU", cuda, torch.cuda.get_device_name(0) if cuda else "no CUDA device; CPU runs")
    except Exception as exc:
        row("torch", False, str(exc))
    from sandbox import backend_report

    for name, ok, why in backend_report():
        row(f"sandbox: {name}", ok, why)
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        row("docker engine", True, str(client.version().get("Version", "")))
    except Exception as exc:
        row("docker engine", False, f"not reachable ({type(exc).__name__})")
    if settings.llm_base_url:
        from agents.llm.doctor import check_endpoint

        ok, detail = check_endpoint(settings)  # one tiny request; which output method works
        row("LLM endpoint", ok, f"{settings.llm_base_url}: {detail}")
    else:
        row("LLM endpoint", False, "not configured: offline mode (recipe catalog)")
    row("home", True, str(settings.home_dir))
    row("store", True, settings.chroma_url or str(settings.home_dir / "memory"))
    out.print(table)
