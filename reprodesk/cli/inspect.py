"""Read-only commands: `read` (the Reader alone), `findings search`, `doctor`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from reprodesk.cli.render import err, out
from reprodesk.schemas import UserError
from reprodesk.settings import load_settings

findings_app = typer.Typer(help="Query the findings memory.", no_args_is_help=True)


@findings_app.command("search")
def findings_search(
    query: Annotated[str, typer.Argument(help="What you want to know, in words.")],
    k: Annotated[int, typer.Option("-k", help="How many findings to return.")] = 5,
    mechanism: Annotated[
        str | None, typer.Option("--mechanism", help="Only this mechanism, e.g. mla.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Search published findings by meaning (offline embeddings)."""
    if k < 1:
        raise UserError(f"-k {k}: must be at least 1")
    from memory import FindingStore

    settings = load_settings()
    store = FindingStore.open(
        None if settings.chroma_url else settings.home_dir / "memory", url=settings.chroma_url
    )
    hits = store.search(query, k=k, mechanism=mechanism)
    if as_json:
        print(json.dumps([{"score": h.score, **h.finding.model_dump(mode="json")} for h in hits]))
        return
    if not hits:
        out.print("no findings yet: publish a run first (`reprodesk run ...`)")
        return
    table = Table("score", "mechanism", "claim", "measured", "paper", "verdict", "run")
    for h in hits:
        f = h.finding
        table.add_row(
            f"{h.score:.2f}",
            f.mechanism,
            f.claim,
            f"{f.measured_value} {f.unit}".strip() if f.measured_value is not None else "—",
            f"{f.paper_value} {f.unit}".strip() if f.paper_value is not None else "—",
            f.verdict,
            f.run_id,
        )
    out.print(table)


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
    paper = load_paper(source, cache_dir=settings.home_dir / "cache", refresh=refresh)
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
        row(
            "LLM endpoint",
            True,
            f"{settings.llm_base_url} (model {settings.llm_model}); "
            "this version runs offline agents only",
        )
    else:
        row("LLM endpoint", False, "not configured: offline mode (recipe catalog)")
    row("home", True, str(settings.home_dir))
    row("store", True, settings.chroma_url or str(settings.home_dir / "memory"))
    out.print(table)
