"""The offline graph picks the right recipe for each sample note, up to the code gate.

Runs the real CLI with the code gate on and no terminal: the run pauses before any
code runs, and the review folder holds the exact files the sandbox would run: the
recipe and the harness it imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NOTES = {
    "mla_note.md": "mla.py",
    "deepseek_moe_note.md": "deepseek_moe.py",
    "grpo_note.md": "grpo.py",
    "mtp_note.md": "mtp.py",
    "fp8_note.md": "fp8_blockwise.py",
    "deepseek_v2_note.md": "deepseek_moe.py",
}


@pytest.mark.parametrize(("note", "script"), sorted(NOTES.items()))
def test_note_reaches_the_code_gate_with_its_recipe(tmp_path: Path, note: str, script: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    env.update(
        REPRODESK_HOME=str(tmp_path), REPRODESK_GATES='["code"]', REPRODESK_SANDBOX="subprocess"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reprodesk",
            "run",
            str(ROOT / "examples" / note),
            "--run-id",
            "sel",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 3, (proc.stdout, proc.stderr)  # paused at the code gate
    review = tmp_path / "review" / "sel" / "code" / script.removesuffix(".py")
    assert (review / script).read_text() == (ROOT / "recipes" / script).read_text()
    assert (review / "harness.py").read_text() == (ROOT / "recipes" / "harness.py").read_text()
    assert sorted(p.name for p in review.iterdir()) == sorted([script, "harness.py", "command.txt"])
    command = (review / "command.txt").read_text()
    assert command.startswith(f"python {script} ")
