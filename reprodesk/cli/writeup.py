"""Commands on a published write-up: `verify`, `export --html`, `show`.

They read the run folder (`$REPRODESK_HOME/runs/<run>/`) and nothing else: no graph,
no sandbox, no model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from reprodesk.cli.render import err, out, say
from reprodesk.schemas import UserError
from reprodesk.settings import load_settings

EXIT_DOES_NOT_VERIFY = 1


def _folder(run_id: str) -> Path:
    folder = load_settings().home_dir / "runs" / run_id
    if not (folder / "writeup.md").is_file():
        raise UserError(
            f"run {run_id}: no published write-up under {folder} (see `reprodesk runs`)"
        )
    return folder


def verify(
    run_id: Annotated[str, typer.Argument(help="A published run (see `reprodesk runs`).")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Re-read a write-up: every number traced to evidence.json, every figure a valid PNG,
    nothing that must not be shared. Exits 1, quoting each problem, when it does not verify.
    """
    from tools.verify import verify_run

    report = verify_run(_folder(run_id))
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "numbers": report.numbers,
                    "figures": report.figures,
                    "problems": [
                        {"kind": p.kind, "message": p.message, "text": p.text}
                        for p in report.problems
                    ],
                },
                indent=2,
            )
        )
    elif report.ok:
        say(
            f"{run_id}: verifies: {report.numbers} numbers traced to evidence, "
            f"{report.figures} figures valid, nothing unshareable"
        )
    else:
        for p in report.problems:
            err.print(Text(str(p)))
        err.print(Text(f"{run_id}: does not verify: {len(report.problems)} problem(s)"))
    if not report.ok:
        raise typer.Exit(EXIT_DOES_NOT_VERIFY)


def export(
    run_id: Annotated[str, typer.Argument(help="A published run (see `reprodesk runs`).")],
    as_html: Annotated[
        bool, typer.Option("--html", help="One self-contained HTML file (figures embedded).")
    ] = False,
    lang: Annotated[
        str,
        typer.Option("--lang", help="Comma list of en, zh: zh also writes writeup.zh.md."),
    ] = "en",
    as_csv: Annotated[
        bool,
        typer.Option("--csv", help="Every job's variants and grid rows, with the environment."),
    ] = False,
) -> None:
    """Export a write-up to share: `--lang en,zh` writes writeup.zh.md (same numbers),
    `--html` one self-contained writeup[.zh].html per language, `--csv` profile.csv and
    profile.json (the measurements with their environment), into the run folder."""
    langs = [x.strip() for x in lang.split(",") if x.strip()]
    unknown = [x for x in langs if x not in ("en", "zh")]
    if unknown or not langs:
        raise UserError(f"--lang {lang}: give en, zh or en,zh")
    if not as_html and not as_csv and langs == ["en"]:
        raise UserError("export: give --html, --csv, or --lang en,zh for the Chinese write-up")
    from tools import profile_table
    from tools.export import export_html
    from tools.zh import translate

    folder = _folder(run_id)
    if as_csv:
        for path in profile_table.write(folder):
            say(str(path))
    for code in langs:
        if code == "zh":
            target = folder / "writeup.zh.md"
            target.write_text(
                translate((folder / "writeup.md").read_text(encoding="utf-8")), encoding="utf-8"
            )
            say(str(target))
        if as_html:
            say(str(export_html(folder, code)))


def show(
    run_id: Annotated[str, typer.Argument(help="A published run (see `reprodesk runs`).")],
    lang: Annotated[
        str, typer.Option("--lang", help="en, or zh when writeup.zh.md exists.")
    ] = "en",
) -> None:
    """Render the write-up in the terminal and list its figures and artifacts."""
    folder = _folder(run_id)
    name = "writeup.md" if lang == "en" else f"writeup.{lang}.md"
    if not (folder / name).is_file():
        raise UserError(f"--lang {lang}: the run has no {name}")
    # The write-up quotes the paper (untrusted text): Markdown, never rich markup.
    out.print(Markdown((folder / name).read_text(encoding="utf-8")))
    table = Table("file", "bytes", "what")
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder)
        if rel.parts[0] == "figures":
            what = "figure"
        elif "artifacts" in rel.parts:
            what = "artifact (written by the job)"
        elif rel.parts[0] == "results":
            what = "job result (host record)"
        elif rel.parts[0] == "code":
            what = "job code"
        else:
            what = "run record"
        table.add_row(Text(str(rel)), str(path.stat().st_size), what)
    out.print(table)
