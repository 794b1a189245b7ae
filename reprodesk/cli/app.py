"""reprodesk: turn a paper into a small, measured reproduction and a write-up you can rerun.

The CLI builds Settings, then the dependencies (sandbox, ledger, store,
checkpointer), and hands them to the graph. It is the only place that prints.

Exit codes: 0 done (published, or the command succeeded); 1 internal error;
2 bad input (a path, URL, run id or option); 3 paused at a gate, waiting for
`reprodesk resume`; 4 the run ended without publishing (unsupported paper,
failed reproduction, or rejected at a gate).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command
from rich.console import Console
from rich.prompt import Confirm, Prompt
from rich.table import Table

from reprodesk.log import configure
from reprodesk.schemas import Limits, Policy, RunState, UserError
from reprodesk.settings import Settings, load_settings

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_PAUSED, EXIT_NOT_PUBLISHED = 0, 1, 2, 3, 4
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# soft_wrap: a long path or message stays on one line (tests and scripts read lines).
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
findings_app = typer.Typer(help="Query the findings memory.", no_args_is_help=True)
app.add_typer(findings_app, name="findings")
from reprodesk.cli.sandbox import sandbox_app  # noqa: E402

app.add_typer(sandbox_app, name="sandbox")


@dataclass
class _Globals:
    verbose: bool = False


_globals = _Globals()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    _globals.verbose = verbose
    configure(verbose)


# --------------------------------------------------------------------------- wiring


def _settings(**overrides: Any) -> Settings:
    return load_settings(**overrides)


def _check_llm(settings: Settings) -> None:
    """LLM-backed agents are not built yet: be plain about it rather than pretend."""
    if settings.llm == "openai":
        raise UserError(
            "--llm openai: LLM-backed agents are not available in this version; "
            "use --llm offline (the recipe catalog)"
        )
    if settings.llm == "auto" and settings.llm_base_url:
        err.print(
            "note: an LLM endpoint is configured, but this version runs the offline agents "
            "(recipe catalog) only"
        )


class _App:
    """The graph and what it needs, built once per command."""

    def __init__(self, settings: Settings) -> None:
        from agents.deps import Deps
        from graphs.graph import build_graph, open_checkpointer
        from sandbox import make_sandbox
        from sandbox.ledger import Ledger

        self.settings = settings
        self.home = settings.home_dir
        self.home.mkdir(parents=True, exist_ok=True)
        self._store: Any = None
        self.deps = Deps(
            home=self.home,
            sandbox=make_sandbox(settings.sandbox, self.home / "cache" / "jobs"),
            ledger=Ledger(self.home / "ledger.sqlite"),
            open_store=self.store,
            limits=Limits(wall_s=settings.job_timeout_s, memory_mb=settings.job_memory_mb),
            max_repair_attempts=settings.max_repair_attempts,
            max_critic_rounds=settings.max_critic_rounds,
        )
        self.checkpointer = open_checkpointer(self.home / "runs.sqlite")
        self.graph = build_graph(self.deps, self.checkpointer)
        # A warm worker is a process of ours: stop it when the command ends.
        atexit.register(self.close)

    def close(self) -> None:
        close = getattr(self.deps.sandbox, "close", None)
        if callable(close):
            close()

    def store(self) -> Any:
        if self._store is None:
            from memory import FindingStore

            self._store = FindingStore.open(
                None if self.settings.chroma_url else self.home / "memory",
                url=self.settings.chroma_url,
            )
        return self._store

    def run_ids(self) -> list[str]:
        rows = self.checkpointer.conn.execute(
            "SELECT thread_id, MAX(checkpoint_id) FROM checkpoints GROUP BY thread_id "
            "ORDER BY MAX(checkpoint_id) DESC"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def snapshot(self, run_id: str) -> Any:
        config: RunnableConfig = {"configurable": {"thread_id": run_id}}
        snap = self.graph.get_state(config)
        if not snap.values:
            raise UserError(f"unknown run id '{run_id}': no such run in {self.home}")
        return snap


def _interrupts(snap: Any) -> list[Any]:
    return [i for task in snap.tasks for i in task.interrupts]


def _run_status(snap: Any) -> str:
    state = RunState.model_validate(snap.values)
    if state.outcome is not None:
        return state.outcome.status
    pending = _interrupts(snap)
    if pending:
        return f"paused at {pending[0].value.get('gate', '?')} gate"
    if snap.next:
        return f"interrupted before {', '.join(snap.next)} (resume it)"
    return "ended"


# --------------------------------------------------------------------------- driving a run


def _ask(value: dict[str, Any]) -> dict[str, Any]:
    gate = value.get("gate", "?")
    out.rule(f"[bold]{gate} gate[/bold]")
    for k, v in value.items():
        if k not in ("gate", "run_id"):
            shown = json.dumps(v, indent=2) if isinstance(v, dict | list) else str(v)
            out.print(f"[bold]{k}[/bold]: {shown}", markup=True, highlight=False)
    if Confirm.ask(f"Approve the {gate} gate?", default=True, console=out):
        return {"approved": True}
    return {"approved": False, "reason": Prompt.ask("Why", default="", console=out)}


def _drive(app_: _App, payload: Any, run_id: str, *, auto_approve: bool) -> int:
    from graphs.replay import describe
    from graphs.state import Context

    config: RunnableConfig = {"configurable": {"thread_id": run_id}}
    context = Context(auto_approve=auto_approve)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    while True:
        # A spinner names the step in progress (sandboxed jobs take seconds to minutes).
        with out.status("starting", spinner="dots") as status:
            for chunk in app_.graph.stream(
                payload, config, context=context, stream_mode="updates", durability="sync"
            ):
                ran = [node for node in chunk if not node.startswith("__")]
                if ran:
                    snap = app_.graph.get_state(config)
                    out.print(
                        f"[green]✓[/green] {', '.join(ran)}: {describe(ran, snap.values)}",
                        highlight=False,
                    )
                    if snap.next:
                        status.update(f"{', '.join(snap.next)} ...")
        snap = app_.graph.get_state(config)
        pending = _interrupts(snap)
        if pending:
            value = pending[0].value
            gate = value.get("gate", "?")
            review = _write_review(app_, RunState.model_validate(snap.values), gate)
            if review is not None:
                out.print(f"for review: {review}", highlight=False)
            if interactive:
                payload = Command(resume=_ask(value))
                continue
            out.print(f"paused at the {gate} gate. To continue:")
            out.print(f"  reprodesk resume {run_id} --approve", highlight=False)
            out.print(f"  reprodesk resume {run_id} --reject 'REASON'", highlight=False)
            return EXIT_PAUSED
        state = RunState.model_validate(snap.values)
        return _report(app_, state)


def _write_review(app_: _App, state: RunState, gate: str) -> Path | None:
    """Put what a gate asks about on disk, so a human reads the real thing before deciding.

    The code gate shows the exact files the sandbox will run; the publish gate the draft.
    Review copies live under the home's review/ folder, apart from published runs.
    """
    folder = app_.home / "review" / state.run_id / gate
    files: dict[str, str] = {}
    if gate == "code" and state.reproduction is not None:
        files = dict(state.reproduction.job.files)
        files["command.txt"] = " ".join(state.reproduction.job.argv) + "\n"
    elif gate == "publish" and state.draft is not None:
        files = {"writeup.md": state.draft.markdown}
    if not files:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _report(app_: _App, state: RunState) -> int:
    outcome = state.outcome
    if outcome is None:
        out.print(f"run {state.run_id} ended without an outcome")
        return EXIT_NOT_PUBLISHED
    if outcome.status == "published" and outcome.path:
        _write_trace(app_, state.run_id, Path(outcome.path))
        if state.critique and state.critique.notes:
            for note in state.critique.notes:
                out.print(f"critic: {note}", highlight=False)
        # Last line: where the write-up is (scripts and `make demo` read it).
        out.print(f"[bold green]published[/bold green] {Path(outcome.path) / 'writeup.md'}")
        return EXIT_OK
    err.print(f"run {state.run_id} {outcome.status}: {outcome.message}", highlight=False)
    return EXIT_NOT_PUBLISHED


def _write_trace(app_: _App, run_id: str, folder: Path) -> None:
    from graphs.replay import timeline

    lines = [s.model_dump_json() for s in timeline(app_.graph, run_id)]
    tmp = folder / ".trace.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(folder / "trace.jsonl")


# --------------------------------------------------------------------------- commands


@app.command()
def run(
    source: Annotated[
        str,
        typer.Argument(
            help="Paper: arXiv id or URL, PDF/HTML URL, or local .pdf .md .txt .tex .tar.gz."
        ),
    ],
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve every gate without asking.")
    ] = False,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Name the run (default: a new id).")
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option("--llm", help="offline (recipe catalog), auto or openai.", metavar="MODE"),
    ] = None,
    sandbox: Annotated[
        str | None,
        typer.Option(
            "--sandbox",
            help="auto (docker if its image is built, else bwrap-warm), bwrap-warm, bwrap, "
            "docker, or subprocess (unisolated).",
            metavar="NAME",
        ),
    ] = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Fetch URLs again.")] = False,
) -> None:
    """Reproduce a paper: read, plan, run code in the sandbox, measure, write, review, publish.

    Gates (default: code and publish, REPRODESK_GATES) ask in a terminal; with no
    terminal the run pauses and prints the `reprodesk resume` command (exit 3).
    """
    from tools.papers import load_paper

    if llm is not None and llm not in ("offline", "auto", "openai"):
        raise UserError(f"--llm '{llm}': expected offline, auto or openai")
    backends = ("auto", "bwrap-warm", "bwrap", "subprocess", "docker")
    if sandbox is not None and sandbox not in backends:
        raise UserError(f"--sandbox '{sandbox}': expected one of {', '.join(backends)}")
    settings = _settings(llm=llm, sandbox=sandbox)
    _check_llm(settings)
    if run_id is not None and not _RUN_ID.match(run_id):
        raise UserError(
            f"--run-id '{run_id}': use 1-64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    # Load before anything is created: bad input leaves nothing behind in the home.
    paper = load_paper(source, cache_dir=settings.home_dir / "cache", refresh=refresh)
    app_ = _App(settings)
    run_id = run_id or f"{paper.title[:24].strip().lower()}-{uuid.uuid4().hex[:8]}"
    run_id = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.") or uuid.uuid4().hex[:12]
    if run_id in app_.run_ids():
        raise UserError(f"--run-id '{run_id}': a run with this id exists; pick another")
    out.print(f"run [bold]{run_id}[/bold] on {paper.kind} '{paper.title}'", highlight=False)
    policy = Policy(
        gates=list(settings.gates),
        max_repair_attempts=settings.max_repair_attempts,
        max_critic_rounds=settings.max_critic_rounds,
    )
    state = RunState(run_id=run_id, source=paper.source, paper=paper, policy=policy)
    raise typer.Exit(_drive(app_, state, run_id, auto_approve=auto_approve))


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue (see `reprodesk runs`).")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve the waiting gate.")] = False,
    reject: Annotated[
        str | None, typer.Option("--reject", help="Reject the waiting gate, with a reason.")
    ] = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve this and every later gate.")
    ] = False,
) -> None:
    """Continue a paused or interrupted run, from the last checkpoint, in any process."""
    if approve and reject is not None:
        raise UserError("--approve and --reject: give one, not both")
    app_ = _App(_settings())
    snap = app_.snapshot(run_id)
    state = RunState.model_validate(snap.values)
    if state.outcome is not None or not snap.next:
        status = state.outcome.status if state.outcome else "ended"
        raise UserError(f"run '{run_id}' has already ended ({status}); nothing to resume")
    pending = _interrupts(snap)
    payload: Any
    if pending:
        if reject is not None:
            payload = Command(resume={"approved": False, "reason": reject})
        elif approve or auto_approve:
            payload = Command(resume={"approved": True})
        elif sys.stdin.isatty():
            payload = Command(resume=_ask(pending[0].value))
        else:
            gate = pending[0].value.get("gate", "?")
            out.print(f"run {run_id} waits at the {gate} gate: pass --approve or --reject REASON")
            raise typer.Exit(EXIT_PAUSED)
    else:
        payload = None  # crashed mid-node: continue from the last checkpoint
    raise typer.Exit(_drive(app_, payload, run_id, auto_approve=auto_approve))


@app.command()
def runs() -> None:
    """List runs in this home, newest first, with their status."""
    app_ = _App(_settings())
    table = Table("run id", "status", "source")
    for run_id in app_.run_ids():
        snap = app_.snapshot(run_id)
        table.add_row(run_id, _run_status(snap), str(snap.values.get("source", "")))
    out.print(table)


@app.command()
def replay(
    run_id: Annotated[str, typer.Argument(help="The run to replay.")],
    step: Annotated[
        int | None, typer.Option("--step", help="Print the full state at this step.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per step.")] = False,
) -> None:
    """Show a run's timeline from its checkpoints: each step, what ran, what it produced."""
    from graphs.replay import state_at, timeline

    app_ = _App(_settings())
    if step is not None:
        values = state_at(app_.graph, run_id, step)
        values.pop("paper", None)  # the paper's text is long and already on disk
        out.print_json(json.dumps(values, default=lambda v: v.model_dump(mode="json")))
        return
    steps = timeline(app_.graph, run_id)
    if as_json:
        for s in steps:
            print(s.model_dump_json())
        return
    table = Table("step", "ran", "result", "next")
    for s in steps:
        table.add_row(str(s.step), ", ".join(s.ran) or "(input)", s.summary, ", ".join(s.next))
    out.print(table)


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

    settings = _settings()
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


@app.command()
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
    from rich.text import Text

    from tools.digest import digest
    from tools.papers import load_paper

    settings = _settings()
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


@app.command()
def doctor() -> None:
    """Check what this machine can do: torch, sandbox backends, Docker, GPU, LLM, store."""
    settings = _settings()
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


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    try:
        code = app(args=argv, standalone_mode=False, prog_name="reprodesk")
    except UserError as exc:
        sys.stderr.write(f"reprodesk: {' '.join(str(exc).split())}\n")
        code = EXIT_USAGE
    except click.exceptions.UsageError as exc:
        exc.show()
        code = EXIT_USAGE
    except click.exceptions.Abort:
        err.print("aborted")
        code = 130
    except KeyboardInterrupt:
        err.print("interrupted: the run is checkpointed; `reprodesk runs` lists it to resume")
        code = 130
    except Exception as exc:  # a bug of ours, not the user's: say so, keep the trace for -v
        if _globals.verbose:
            traceback.print_exc()
        sys.stderr.write(
            f"reprodesk: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            " (rerun with -v for the traceback; a started run is checkpointed, see "
            "`reprodesk runs`)\n"
        )
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else EXIT_OK)
