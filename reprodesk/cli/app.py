"""reprodesk: turn a paper into a small, measured reproduction and a write-up you can rerun.

The CLI is rendering over the `Runs` service (graphs/runs.py), built by the
composition root (reprodesk/compose.py). It is the only place that prints.

Exit codes: 0 done (published, or the command succeeded); 1 internal error;
2 bad input (a path, URL, run id, option, plan file) or a run another process
drives; 3 paused at a gate, waiting for `reprodesk resume`; 4 the run ended without
publishing (unsupported paper, failed reproduction, or rejected at a gate).
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table
from rich.text import Text

from reprodesk.cli import desk, inspect, writeup
from reprodesk.cli.asking import ask, before_code, read_edits
from reprodesk.cli.render import err, out, resume_hint, say, show_code, show_question
from reprodesk.cli.sandbox import sandbox_app
from reprodesk.compose import App, build_app
from reprodesk.log import configure
from reprodesk.schemas import SANDBOX_NAMES, UserError
from reprodesk.settings import Settings, load_settings

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_PAUSED, EXIT_NOT_PUBLISHED = 0, 1, 2, 3, 4

try:  # typer 0.2x parses with a click of its own; its usage errors are not click's
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # pragma: no cover - older typer: click's own
    _TyperUsageError = click.exceptions.UsageError  # type: ignore[misc,assignment]
_USAGE_ERRORS: tuple[type[Exception], ...] = (click.exceptions.UsageError, _TyperUsageError)

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(inspect.findings_app, name="findings")
app.add_typer(sandbox_app, name="sandbox")
app.command()(inspect.read)
app.command()(inspect.doctor)
app.command()(writeup.verify)
app.command()(writeup.export)
app.command()(writeup.show)
app.command()(desk.desk)
app.command()(desk.watch)


@dataclass
class _Globals:
    verbose: bool = False
    run_id: str | None = None  # the run being driven, for the Ctrl-C message


_globals = _Globals()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    _globals.verbose = verbose
    configure(verbose)


def _settings(**overrides: Any) -> Settings:
    settings = load_settings(**overrides)
    if settings.llm not in ("auto", "offline"):
        from reprodesk.models import PRESETS

        if settings.llm not in PRESETS:
            raise UserError(
                f"--llm '{settings.llm}': expected offline, auto or a preset ({', '.join(PRESETS)})"
            )
    return settings


# --------------------------------------------------------------------------- driving a run


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _render(app_: App, events: Any) -> int:
    """Render a drive; at a gate ask (in a terminal) or print the resume command (exit 3)."""
    while True:
        view = None
        with out.status("starting", spinner="dots") as status:
            for ev in events:
                if ev.kind == "step":
                    out.print(
                        Text("✓ ", style="green") + Text(f"{', '.join(ev.nodes)}: {ev.summary}")
                    )
                    if ev.next:
                        status.update(f"{', '.join(ev.next)} ...")
                else:
                    view = ev.view
        assert view is not None
        _globals.run_id = view.run_id
        if view.gate is not None:
            assert view.question is not None and view.review is not None
            show_question(view.gate, view.question)
            if view.gate == "code":
                show_code(Path(view.review), view.question.get("jobs", []), before_code(view))
            say(f"for review: {view.review}")
            if _interactive():
                decision = ask(app_, view.run_id, view.gate, Path(view.review))
                events = app_.runs.resume(view.run_id, **decision)
                continue
            say(f"paused at the {view.gate} gate. To continue:")
            resume_hint(view.run_id, view.gate)
            return EXIT_PAUSED
        return _report(app_, view)


def _report(app_: App, view: Any) -> int:
    outcome = view.outcome
    for title in view.not_reproduced:
        err.print(Text(f"not reproduced: {title} (see the write-up's first lines)"))
    if outcome is None:
        say(f"run {view.run_id} ended without an outcome")
        return EXIT_NOT_PUBLISHED
    if outcome.status == "published" and outcome.path:
        state = app_.runs.state(view.run_id)
        for note in state.critique.notes if state.critique else []:
            say(f"critic: {note}")
        # Last line: where the write-up is (scripts and `make demo` read it).
        out.print(
            Text("published ", style="bold green") + Text(f"{Path(outcome.path) / 'writeup.md'}")
        )
        return EXIT_OK
    err.print(Text(f"run {view.run_id} {outcome.status}: {outcome.message}"))
    return EXIT_NOT_PUBLISHED


# --------------------------------------------------------------------------- commands


@app.command()
def run(
    source: Annotated[
        str,
        typer.Argument(
            help="Paper: arXiv id or URL, PDF/HTML URL, or local .pdf .md .txt .tex .tar.gz."
        ),
    ],
    mechanism: Annotated[
        list[str] | None,
        typer.Option(
            "--mechanism",
            "-m",
            help="Reproduce only this mechanism (repeatable), e.g. -m mla -m mtp. Default: "
            "every one the plan keeps, the paper's own contributions first.",
            metavar="NAME",
        ),
    ] = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve every gate without asking.")
    ] = False,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Name the run (default: a new id).")
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            "--llm",
            help="offline (recipe catalog), auto (an LLM when REPRODESK_LLM_BASE_URL is set) "
            "or a preset: openai, deepseek, mimo, ollama, vllm, llamacpp, compatible.",
            metavar="MODE",
        ),
    ] = None,
    fallback: Annotated[
        str | None,
        typer.Option(
            "--fallback",
            help="offline: when the endpoint fails, go on with the catalog where it knows "
            "the mechanism.",
            metavar="MODE",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", help="Stop the run once it has spent this many tokens."),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option("--max-cost", help="Stop the run once it has spent this many USD."),
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
    lang: Annotated[
        str,
        typer.Option(
            "--lang", help="en, or en,zh to publish writeup.zh.md too (the same numbers)."
        ),
    ] = "en",
) -> None:
    """Reproduce a paper: read, plan, run code in the sandbox, measure, write, review, publish.

    Gates (default: code and publish; add plan with REPRODESK_GATES='["plan","code",
    "publish"]') ask in a terminal, default no; with no terminal the run pauses and
    prints the `reprodesk resume` command (exit 3). A paper with several mechanisms
    gets one run and one write-up with a section per mechanism.
    """
    from tools.papers import load_paper
    from tools.papers.fetch import Fetcher

    if fallback is not None and fallback not in ("offline", "none"):
        raise UserError(f"--fallback '{fallback}': expected offline or none")
    if sandbox is not None and sandbox not in SANDBOX_NAMES:
        raise UserError(f"--sandbox '{sandbox}': expected one of {', '.join(SANDBOX_NAMES)}")
    langs = [x.strip() for x in lang.split(",") if x.strip()]
    if not langs or any(x not in ("en", "zh") for x in langs):
        raise UserError(f"--lang {lang}: give en, zh or en,zh")
    settings = _settings(
        llm=llm,
        sandbox=sandbox,
        llm_fallback=fallback,
        max_tokens=max_tokens,
        max_cost=max_cost,
    )
    known = _known_mechanisms()
    for name in mechanism or []:
        if name not in known:
            raise UserError(f"--mechanism {name}: unknown (known: {', '.join(known)})")
    # Load before anything is created: bad input leaves nothing behind in the home.
    paper = load_paper(
        source,
        cache_dir=settings.home_dir / "cache",
        refresh=refresh,
        fetcher=Fetcher(deadline_s=settings.fetch_deadline_s),
    )
    app_ = build_app(settings)
    run_id = app_.runs.new_run_id(paper, run_id)
    _globals.run_id = run_id
    say(f"run {run_id} on {paper.kind} '{paper.title}'")
    events = app_.runs.start(
        paper,
        policy=app_.policy(auto_approve=auto_approve, langs=langs),
        run_id=run_id,
        restrict=mechanism or [],
    )
    raise typer.Exit(_render(app_, events))


def _known_mechanisms() -> tuple[str, ...]:
    from agents.offline.reader import KNOWN

    return KNOWN


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue (see `reprodesk runs`).")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve the waiting gate.")] = False,
    reject: Annotated[
        str | None,
        typer.Option("--reject", help="Reject the waiting gate, with a reason.", metavar="REASON"),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="At the plan gate: approve this edited plan (start from the plan.json the "
            "gate wrote under review/).",
            metavar="FILE",
        ),
    ] = None,
    edit: Annotated[
        list[Path] | None,
        typer.Option(
            "--edit",
            help="At the code gate: run this edited file instead (matched by name), or the "
            "files of a folder laid out like the review folder. Repeatable.",
            metavar="PATH",
        ),
    ] = None,
    revise: Annotated[
        str | None,
        typer.Option(
            "--revise",
            help="At the code gate: send the code back to the Reproducer with this request.",
            metavar="REQUEST",
        ),
    ] = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Approve this and every later gate.")
    ] = False,
) -> None:
    """Continue a paused or interrupted run from its last checkpoint, in any process.

    A run started with --auto-approve keeps approving when resumed after a crash.
    """
    if approve and reject is not None:
        raise UserError("--approve and --reject: give one, not both")
    if plan is not None and reject is not None:
        raise UserError("--plan and --reject: give one, not both")
    if revise is not None and (approve or reject is not None or edit):
        raise UserError("--revise: give it alone (it is the decision)")
    plan_data = None
    if plan is not None:
        try:
            plan_data = json.loads(plan.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"--plan {plan}: cannot read it ({exc.strerror or exc})") from exc
        except ValueError as exc:
            raise UserError(f"--plan {plan}: not JSON ({exc})") from exc
    app_ = build_app(_settings())
    _globals.run_id = run_id
    view = app_.runs.status(run_id)
    decision: dict[str, Any] = {}
    if view.gate is not None:
        if revise is not None:
            decision = {"revise": True, "reason": revise}
        elif edit:
            decision = {"approve": True, "edit": read_edits(edit, view)}
        elif reject is not None:
            decision = {"approve": False, "reason": reject}
        elif approve or auto_approve or plan_data is not None:
            decision = {"approve": True}
        elif _interactive():
            show_question(view.gate, view.question or {})
            decision = ask(app_, run_id, view.gate, Path(view.review or "."))
        else:
            say(f"run {run_id} waits at the {view.gate} gate:")
            resume_hint(run_id, view.gate)
            raise typer.Exit(EXIT_PAUSED)
    if plan_data is not None:
        decision.update(plan=plan_data, plan_label=f"--plan {plan}")
    events = app_.runs.resume(run_id, auto_approve=auto_approve, **decision)
    raise typer.Exit(_render(app_, events))


@app.command()
def runs(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run.")] = False,
) -> None:
    """List runs in this home, newest first, with their status."""
    app_ = build_app(_settings())
    if as_json:
        for view in app_.runs.views():
            print(view.model_dump_json(exclude={"question"}))
        return
    views = app_.runs.views()
    spent = any(_tokens(view.usage) for view in views)  # no column of blanks for offline runs
    table = Table("run id", "status", "mechanisms", *(["tokens"] if spent else []), "source")
    for view in views:
        status = view.status
        if view.not_reproduced:
            status += f" ({len(view.not_reproduced)} contribution(s) not reproduced)"
        tokens = [_tokens(view.usage)] if spent else []
        table.add_row(view.run_id, status, ", ".join(view.mechanisms), *tokens, Text(view.source))
    out.print(table)


def _tokens(usage: dict[str, Any], node: str | None = None) -> str:
    """Model tokens spent (in + out) and cost, from the run's recorded usage; '' offline."""
    u = (usage.get("nodes") or {}).get(node, {}) if node else usage
    spent = int(u.get("input_tokens", 0)) + int(u.get("output_tokens", 0))
    if not spent:
        return ""
    cost = float(u.get("cost", 0.0) or 0.0)
    return f"{spent}" + (f" (${cost:.4f})" if cost else "")


@app.command()
def replay(
    run_id: Annotated[str, typer.Argument(help="The run to replay.")],
    step: Annotated[
        int | None,
        typer.Option("--step", help="What the run held after this step (all of it with --json)."),
    ] = None,
    fork: Annotated[
        int | None,
        typer.Option("--fork", help="Continue from this step as a new run.", metavar="STEP"),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Re-execute a published run from its record (ledger, gate answers) with "
            "nothing live, and compare the write-up byte for byte.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per step.")] = False,
) -> None:
    """Show a run's timeline from its checkpoints: each step, what ran, what it produced."""
    app_ = build_app(_settings())
    if offline:
        from graphs.offline_replay import replay_offline

        result = replay_offline(app_.runs, run_id)
        say(f"replayed {run_id} offline into {result.folder}: {result.message}")
        raise typer.Exit(EXIT_OK if result.identical else EXIT_INTERNAL)
    if fork is not None:
        new_id = app_.runs.fork(run_id, fork)
        say(f"forked {run_id} at step {fork} as {new_id}")
        _globals.run_id = new_id
        raise typer.Exit(_render(app_, app_.runs.resume(new_id)))
    if step is not None:
        values = app_.runs.state_at(run_id, step)
        if as_json:
            values.pop("paper", None)  # the paper's text is long and already on disk
            out.print_json(json.dumps(values, default=lambda v: v.model_dump(mode="json")))
            return
        from graphs.replay import summary_at

        table = Table("at step " + str(step), "", show_header=True)
        for what, value in summary_at(values):
            table.add_row(what, Text(value))
        out.print(table)
        say(f"everything at this step: reprodesk replay {run_id} --step {step} --json")
        return
    steps = app_.runs.timeline(run_id)
    if as_json:
        for s in steps:
            print(s.model_dump_json())
        return
    usage = app_.runs.status(run_id).usage
    spent = any(_tokens(usage, n) for s in steps for n in s.ran)
    table = Table("step", "ran", "s", "jobs", *(["tokens"] if spent else []), "result")
    for s in steps:
        ran = ", ".join(s.ran) or "(input)"
        seconds = "" if s.seconds is None else f"{s.seconds:.1f}"
        jobs = (
            f"{s.jobs}" + (f" (+{s.reused} reused)" if s.reused else "")
            if s.jobs or s.reused
            else ""
        )
        tokens = [", ".join(t for t in (_tokens(usage, n) for n in s.ran) if t)] if spent else []
        table.add_row(str(s.step), ran, seconds, jobs, *tokens, Text(s.summary))
    out.print(table)


@app.command()
def gc() -> None:
    """Remove job folders that published or dead runs left under cache/jobs/."""
    app_ = build_app(_settings())
    from sandbox.retention import orphan_job_dirs, remove_job_dirs

    removed = 0
    live: set[str] = set()
    for view in app_.runs.views():
        dirs = app_.deps.ledger.workdirs(view.run_id)
        if view.outcome is not None:
            removed += remove_job_dirs(app_.deps.jobs_dir(), dirs)
        else:
            live.update(dirs)  # a paused run still needs its jobs' artifacts
    orphans = orphan_job_dirs(app_.deps.jobs_dir(), live)
    removed += remove_job_dirs(app_.deps.jobs_dir(), [str(p) for p in orphans])
    say(f"removed {removed} job folder(s) under {app_.deps.jobs_dir()}")


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    try:
        code = app(args=argv, standalone_mode=False, prog_name="reprodesk")
        if code == 130:  # typer turns Ctrl-C into a silent exit code 130
            raise KeyboardInterrupt
    except UserError as exc:
        sys.stderr.write(f"reprodesk: {' '.join(str(exc).split())}\n")
        code = EXIT_USAGE
    except _USAGE_ERRORS as exc:
        exc.show()  # type: ignore[attr-defined]
        code = EXIT_USAGE
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        run_id = _globals.run_id
        # rich's live status may still hold sys.stderr: write to the real one.
        stderr = sys.__stderr__ or sys.stderr
        if run_id:
            stderr.write(
                f"interrupted: run {run_id} is checkpointed; continue it with "
                f"`reprodesk resume {run_id}`\n"
            )
        else:
            stderr.write("interrupted\n")
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
