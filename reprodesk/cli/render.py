"""Rendering for the terminal: events, gate questions, tables. No run logic lives here.

Paper text, code and model output are untrusted: they are printed as `Text` or with
markup off, never as rich markup.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.prompt import Prompt
from rich.table import Table
from rich.text import Text

# soft_wrap: a long path or message stays on one line (tests and scripts read lines).
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def plan_table(question: dict[str, Any]) -> None:
    table = Table("mechanism", "role", "score", "run?", "claims / why not")
    for m in question.get("mechanisms", []):
        claims = m.get("claims")
        detail = "\n".join(claims) if claims else str(m.get("not reproduced", ""))
        if m.get("quote"):
            detail = f"{m['quote']}\n{detail}"
        table.add_row(
            Text(f"{m['title']} ({m['key']})"),
            m["role"].replace("_", " "),
            f"{m['score']:g}",
            "yes" if m["selected"] else "no",
            Text(detail),
        )
    out.print(table)
    for m in question.get("mechanisms", []):
        if m.get("scale-down"):
            rows = "; ".join(f"{k}: {v}" for k, v in m["scale-down"].items())
            say(f"scale-down {m['key']}: {rows}")
    say(f"estimated sandbox time: {question.get('estimated_s', 0):g} s")
    for note in question.get("notes", []):
        say(f"note: {note}")


def show_question(gate: str, question: dict[str, Any]) -> None:
    out.rule(f"{gate} gate")
    if gate == "plan":
        plan_table(question)
        return
    for k, v in question.items():
        if k in ("gate", "run_id"):
            continue
        shown = json.dumps(v, indent=2) if isinstance(v, dict | list) else str(v)
        out.print(Text(f"{k}: ", style="bold") + Text(shown))


def show_code(review: Path, jobs: list[dict[str, Any]], before: dict[str, dict[str, str]]) -> None:
    """Each waiting job's entry file, highlighted, or its diff against what ran before."""
    import difflib

    from rich.syntax import Syntax

    for job in jobs:
        key, script = job["mechanism"], job["script"]
        path = review / key / script
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        previous = before.get(key, {}).get(script)
        if previous is not None and previous != text:
            diff = "".join(
                difflib.unified_diff(
                    previous.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"{script} (before)",
                    f"{script} (now)",
                )
            )
            out.rule(f"{key}: {script}, diff against {job.get('compared_with', 'before')}")
            out.print(Syntax(diff, "diff", word_wrap=True))
        elif previous is not None:
            say(f"{key}: {script} is identical to {job.get('compared_with', 'before')}")
        else:
            out.rule(f"{key}: {script}")
            out.print(Syntax(text, "python", line_numbers=True, word_wrap=True))
        say(f"  command: {job['command']}")
        limits = job.get("limits", {})
        say(
            f"  limits: {limits.get('wall_s')} s, {limits.get('memory_mb')} MB memory, "
            f"{limits.get('disk_mb', '?')} MB disk; estimated {job.get('estimated_s', '?')} s "
            "with its profile jobs"
        )


def ask_choice(gate: str, choices: list[str]) -> str:
    """The default is the first 'no'-like choice: Enter never approves running code."""
    default = "reject"
    return Prompt.ask(
        f"{gate} gate: {' / '.join(choices)}", choices=choices, default=default, console=out
    )


def ask_reason() -> str:
    return Prompt.ask("Why (sent back with the run)", default="", console=out)


def edit_file(path: Path) -> None:
    """Open `path` in $EDITOR (or vi) and wait."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    subprocess.run([*shlex.split(editor), str(path)], check=False)


def resume_hint(run_id: str, gate: str | None) -> None:
    if gate == "plan":
        say(f"  reprodesk resume {run_id} --approve        # or --plan FILE (edit plan.json)")
    else:
        say(f"  reprodesk resume {run_id} --approve")
    say(f"  reprodesk resume {run_id} --reject 'REASON'")
