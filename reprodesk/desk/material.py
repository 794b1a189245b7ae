"""What a page shows, read from `Runs`: gate material, run rows, write-ups.

Thin adapters over the service and the tools the CLI uses (the recipe a job is compared
with, the HTML rendering of a write-up); nothing here decides anything about a run.
Where the service lacks a query (the previous attempt's code, token counts) this says
so in one place.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, PythonLexer, TextLexer

from reprodesk.state import MechanismRun, RunState

_FORMAT = HtmlFormatter(nowrap=False, cssclass="hl", linenos=False)


def highlighted(text: str, name: str) -> Markup:
    """Pygments HTML (it escapes the text): safe to put in a page."""
    lexer = PythonLexer() if name.endswith(".py") else TextLexer()
    return Markup(highlight(text, lexer, _FORMAT))


def highlight_css() -> str:
    return str(_FORMAT.get_style_defs(".hl"))


@dataclass
class CodeFile:
    name: str
    text: str
    html: Markup
    diff: Markup | None
    identical: bool


@dataclass
class CodeJob:
    mechanism: str
    question: dict[str, Any]
    compared_with: str
    files: list[CodeFile] = field(default_factory=list)


def _previous_attempt(runs: Any, run_id: str, key: str, attempt: int) -> dict[str, str]:
    """The files of attempt `attempt - 1` of `key`, from the run's checkpoints.

    The service keeps only the current reproduction in state; earlier ones live in the
    history, so this reads it back, newest step first.
    """
    for step in reversed(runs.timeline(run_id)):
        work = (runs.state_at(run_id, step.step).get("work") or {}).get(key)
        if work is None:
            continue
        repro = MechanismRun.model_validate(work).reproduction
        if repro is not None and repro.attempt == attempt - 1:
            return dict(repro.job.files)
    return {}


def code_jobs(runs: Any, view: Any) -> list[CodeJob]:
    """Each waiting job's files, highlighted, with a diff against what it is compared with."""
    from reprodesk.cli.asking import before_code  # the CLI's own choice of "before"

    state: RunState = runs.state(view.run_id)
    recipes = before_code(view)
    jobs: list[CodeJob] = []
    for q in (view.question or {}).get("jobs", []):
        key = q["mechanism"]
        w = state.work.get(key)
        if w is None or w.reproduction is None:
            continue
        repro = w.reproduction
        before = recipes.get(key) or (
            _previous_attempt(runs, view.run_id, key, repro.attempt) if repro.attempt > 1 else {}
        )
        job = CodeJob(key, q, str(q.get("compared_with", "")))
        for name, text in sorted(repro.job.files.items(), key=lambda kv: kv[0] != repro.script):
            prev = before.get(name)
            diff: Markup | None = None
            if prev is not None and prev != text:
                lines = difflib.unified_diff(
                    prev.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"{name} ({job.compared_with})",
                    f"{name} (now)",
                )
                diff = Markup(highlight("".join(lines), DiffLexer(), _FORMAT))
            job.files.append(
                CodeFile(
                    name, text, highlighted(text, name), diff, prev is not None and prev == text
                )
            )
        jobs.append(job)
    return jobs


@dataclass
class RunRow:
    view: Any
    verdicts: dict[str, int]
    seconds: float | None
    tokens: str


def run_row(runs: Any, view: Any) -> RunRow:
    """One line of the runs page: verdict counts, wall time of the steps that ran."""
    state: RunState = runs.state(view.run_id)
    findings = state.draft.findings if state.draft else []
    verdicts: dict[str, int] = dict(Counter(str(f.verdict) for f in findings))
    steps = runs.timeline(view.run_id)
    seconds = sum(s.seconds or 0.0 for s in steps if s.ran and not s.decision) or None
    return RunRow(view, verdicts, seconds, usage_line(view.usage))


def usage_line(usage: dict[str, Any]) -> str:
    """RunView.usage in a few words: tokens in and out, requests, cost."""
    if not usage or not usage.get("requests"):
        return "none (offline)"
    tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
    line = f"{tokens:,} ({usage.get('input_tokens', 0):,} in, {usage.get('output_tokens', 0):,} out"
    line += f", {usage['requests']} requests"
    cost = float(usage.get("cost") or 0.0)
    return line + (f", ${cost:.4f})" if cost else ")")


def writeup_html(folder: Path, markdown: str, evidence: list[Any], title: str) -> Markup:
    """The write-up's body as the HTML export renders it: figures embedded, every number
    linked to its evidence row (tools/export.py escapes the text; markdown HTML is off)."""
    from tools.export import render_html

    page = render_html(markdown, evidence, folder, title)
    body = page.split("<body>", 1)[-1].rsplit("</body>", 1)[0]
    # The evidence anchors are plain ids; nothing else in the body is executable.
    return Markup(re.sub(r"<script\b", "&lt;script", body, flags=re.IGNORECASE))


def draft_figures(home: Path, run_id: str, draft: Any) -> Path:
    """A preview folder with the draft's figures drawn, as publish will draw them."""
    from tools.figures import render

    folder = home / "cache" / "desk" / run_id
    for figure in draft.figures:
        target = folder / "figures" / figure.name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            render(figure, target)
    return folder
