"""Asking at a gate in a terminal, and reading a user's edits: decisions, never run logic.

The answers are the same `Runs.resume` arguments the flags give (--approve, --reject,
--revise, --edit, --plan), so a terminal and a script decide the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.text import Text

from reprodesk.cli.render import ask_choice, ask_reason, edit_file, err, say
from reprodesk.compose import App
from reprodesk.schemas import UserError


def ask(app_: App, run_id: str, gate: str, review: Path) -> dict[str, Any]:
    """A decision in the terminal; the default is no."""
    if gate == "plan":
        while True:
            choice = ask_choice(gate, ["approve", "edit", "reject"])
            if choice == "approve":
                return {"approve": True}
            if choice == "reject":
                return {"approve": False, "reason": ask_reason()}
            plan_file = review / "plan.json"
            edit_file(plan_file)
            try:
                data = json.loads(plan_file.read_text(encoding="utf-8"))
                from graphs.gates import check_plan_edit

                check_plan_edit(app_.runs.state(run_id), data, str(plan_file))
            except (UserError, ValueError) as exc:
                err.print(Text(f"reprodesk: {exc}"))
                continue
            return {"approve": True, "plan": data, "plan_label": str(plan_file)}
    if gate == "code":
        while True:
            choice = ask_choice(gate, ["approve", "edit", "revise", "reject"])
            if choice == "approve":
                return {"approve": True}
            if choice == "revise":
                return {"revise": True, "reason": ask_reason()}
            if choice == "reject":
                return {"approve": False, "reason": ask_reason()}
            state = app_.runs.state(run_id)
            edit: dict[str, dict[str, str]] = {}
            for key, w in state.work.items():
                if w.status != "pending" or w.reproduction is None:
                    continue
                path = review / key / w.reproduction.script
                before = path.read_text(encoding="utf-8")
                edit_file(path)
                after = path.read_text(encoding="utf-8")
                if after != before:
                    edit[key] = {w.reproduction.script: after}
            if not edit:
                say("nothing changed")
                continue
            return {"approve": True, "edit": edit}
    choice = ask_choice(gate, ["approve", "reject"])
    if choice == "approve":
        return {"approve": True}
    return {"approve": False, "reason": ask_reason()}


def before_code(view: Any) -> dict[str, dict[str, str]]:
    """What each waiting job is compared with: its last attempt, else the recipe on disk."""
    from agents.offline.reproducer import RECIPES_DIR

    out_: dict[str, dict[str, str]] = {}
    for job in (view.question or {}).get("jobs", []):
        compared = str(job.get("compared_with", ""))
        if compared.startswith("recipes/"):
            path = RECIPES_DIR / compared.removeprefix("recipes/")
            if path.is_file():
                out_[job["mechanism"]] = {job["script"]: path.read_text(encoding="utf-8")}
    return out_


def read_edits(paths: list[Path], view: Any) -> dict[str, dict[str, str]]:
    """--edit FILE (matched to a waiting job's file by name) or a folder laid out as the
    code gate's review folder (<mechanism>/<file>)."""
    jobs = (view.question or {}).get("jobs", [])
    edit: dict[str, dict[str, str]] = {}

    def add(key: str, name: str, path: Path) -> None:
        try:
            edit.setdefault(key, {})[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--edit {path}: cannot read it as text ({exc})") from exc

    for path in paths:
        if path.is_dir():
            for job in jobs:
                candidate = path / job["mechanism"] / job["script"]
                if candidate.is_file():
                    add(job["mechanism"], job["script"], candidate)
            continue
        owners = [j for j in jobs if j["script"] == path.name]
        if not path.is_file():
            raise UserError(f"--edit {path}: no such file")
        if len(owners) != 1:
            raise UserError(
                f"--edit {path}: its name matches {len(owners)} waiting jobs' files; give the "
                "review folder instead (<mechanism>/<file>)"
            )
        add(owners[0]["mechanism"], path.name, path)
    if not edit:
        raise UserError(f"--edit {' '.join(map(str, paths))}: no file of a waiting job found")
    return edit
