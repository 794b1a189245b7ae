"""`reprodesk desk` (the local web page) and `reprodesk watch` (new papers into the inbox).

Both build one App and hand it to reprodesk/desk: the page and the watcher drive runs
through the same `Runs` service as every other command.
"""

from __future__ import annotations

from typing import Annotated

import typer

from reprodesk.cli.render import say
from reprodesk.schemas import UserError


def _app() -> object:
    from reprodesk.cli.app import _settings
    from reprodesk.compose import build_app

    return build_app(_settings())


def desk(
    port: Annotated[
        int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free one).")
    ] = 8765,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to bind. Keep 127.0.0.1: anyone who can reach the page and has "
            "the token can run code through it.",
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve the desk, a local web page: the inbox of paused gates (approve, send back,
    edit), runs and their timelines, write-ups with figures, findings. Prints the URL to
    open; its token keeps other local users out. Ctrl-C stops it (a decision being driven
    finishes first)."""
    from reprodesk.desk.server import DeskServer

    if port < 0 or port > 65535:
        raise UserError(f"--port {port}: give 0-65535")
    try:
        server = DeskServer(_app(), host=host, port=port)
    except OSError as exc:
        raise UserError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from exc
    if host != "127.0.0.1":
        say(f"warning: serving on {host}, not only this machine: guard the URL below")
    say(f"desk at {server.url}")
    say("open it in a browser; the token in it is the key to this desk")
    server.serve()


def watch(
    query: Annotated[
        str | None,
        typer.Option("--query", help="arXiv search query (default: DeepSeek authors/keywords)."),
    ] = None,
    github: Annotated[
        list[str] | None,
        typer.Option(
            "--github",
            help="Also watch releases of this repository (owner/name; repeatable).",
            metavar="REPO",
        ),
    ] = None,
    no_arxiv: Annotated[bool, typer.Option("--no-arxiv", help="Watch GitHub only.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Poll once and exit (for cron).")] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between polls.", metavar="S")
    ] = 3600.0,
    max_polls: Annotated[
        int | None, typer.Option("--max-polls", help="Stop after this many polls.")
    ] = None,
    max_new: Annotated[
        int, typer.Option("--max-new", help="Runs started per poll at most (the rest wait).")
    ] = 5,
    max_results: Annotated[
        int, typer.Option("--max-results", help="Newest arXiv entries read per poll.")
    ] = 20,
    arxiv_url: Annotated[
        str | None,
        typer.Option(
            "--arxiv-url",
            help="arXiv base URL (default the real one): BASE/api/query, BASE/e-print/, BASE/pdf/.",
            metavar="URL",
        ),
    ] = None,
    github_url: Annotated[
        str, typer.Option("--github-url", help="GitHub API base URL.", metavar="URL")
    ] = "https://api.github.com",
) -> None:
    """Poll for new papers (arXiv listing, GitHub releases) and start a run for each new
    one that waits at the plan gate, so the desk's inbox holds the decision. Seen papers
    are remembered in the home; polling backs off while the sources fail."""
    from reprodesk.desk.watch import DEFAULT_QUERY, ArxivListing, GithubReleases, Watcher
    from tools.papers.arxiv import ArxivClient

    if interval <= 0 or max_new < 1 or max_results < 1:
        raise UserError("--interval, --max-new and --max-results must be positive")
    client = ArxivClient()
    if arxiv_url:
        base = arxiv_url.rstrip("/")
        client = ArxivClient(
            api_url=f"{base}/api/query", eprint_url=f"{base}/e-print/", pdf_url=f"{base}/pdf/"
        )
    sources: list[object] = []
    if not no_arxiv:
        sources.append(
            ArxivListing(query=query or DEFAULT_QUERY, client=client, max_results=max_results)
        )
    for repo in github or []:
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise UserError(f"--github {repo}: give owner/name")
        sources.append(GithubReleases(repo, api_url=github_url))
    if not sources:
        raise UserError("--no-arxiv and no --github: nothing to watch")
    watcher = Watcher(_app(), sources, arxiv=client, max_new=max_new)  # type: ignore[arg-type]

    def report(r: object) -> None:
        from reprodesk.desk.watch import PollReport

        assert isinstance(r, PollReport)
        for paper, run_id in r.queued:
            say(f"queued {paper.key} as run {run_id}: {paper.title} ({r.status[run_id]})")
        for error in r.errors:
            say(f"skipped {error}")
        say(
            f"poll: {len(r.queued)} new queued, {r.known} already seen"
            + (f", {r.deferred} for the next poll" if r.deferred else "")
        )

    watcher.run(interval_s=interval, max_polls=1 if once else max_polls, report=report)
