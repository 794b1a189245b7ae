"""The gates as a person meets them in a terminal: a real pseudo-terminal, the real CLI.

Enter at a gate never approves running code; at the plan gate "edit" opens $EDITOR on
the plan and the run goes on with what was saved.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A child process on a pty: `expect` text, `send` keys."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {pattern!r}; screen:\n{self.seen[-3000:]}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the child closed the pty
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    raise AssertionError(f"exited before {pattern!r}:\n{self.seen[-3000:]}")
                self.seen += _ANSI.sub("", chunk.decode(errors="replace"))
        return self.seen

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        """Wait for the child and read what it printed last."""
        code = self.proc.wait(timeout=300)
        while select.select([self.master], [], [], 0.5)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.seen += _ANSI.sub("", chunk.decode(errors="replace"))
        os.close(self.master)
        return code


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    env.update(REPRODESK_HOME=str(home), TERM="dumb", COLUMNS="120", **extra)
    return env


def test_enter_at_the_code_gate_rejects(tmp_path: Path) -> None:
    home = tmp_path / "home"
    argv = [sys.executable, "-m", "reprodesk", "run", str(ROOT / "examples" / "mla_note.md")]
    term = Terminal([*argv, "--run-id", "t"], _env(home, REPRODESK_GATES='["code"]'))
    term.expect(r"code gate: approve / edit / revise / reject")
    term.send("\r")  # Enter: the default
    term.expect(r"Why")
    term.send("\r")
    assert term.close() == 4
    assert "rejected at the code gate" in term.seen
    from sandbox.ledger import Ledger

    assert Ledger(home / "ledger.sqlite").launches("t") == {}  # nothing ran


def test_edit_at_the_plan_gate_runs_the_saved_plan(tmp_path: Path) -> None:
    home = tmp_path / "home"
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "path = sys.argv[1]\n"
        "plan = json.load(open(path))\n"
        "for m in plan['mechanisms']:\n"
        "    m['selected'] = m['key'] == 'mla'\n"
        "json.dump(plan, open(path, 'w'))\n"
    )
    env = _env(home, REPRODESK_GATES='["plan","code"]', EDITOR=f"{sys.executable} {editor}")
    note = ROOT / "examples" / "deepseek_v2_note.md"
    term = Terminal([sys.executable, "-m", "reprodesk", "run", str(note), "--run-id", "e"], env)
    term.expect(r"plan gate: approve / edit / reject")
    term.send("edit\r")
    term.expect(r"code gate: approve / edit / revise / reject")  # the edited plan was accepted
    term.send("reject\r")
    term.expect(r"Why")
    term.send("not now\r")
    assert term.close() == 4
    views = subprocess.run(
        [sys.executable, "-m", "reprodesk", "runs", "--json"],
        env=_env(home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    view = json.loads(views[0])
    assert view["mechanisms"] == ["mla"] and view["status"] == "rejected"


def test_ctrl_c_prints_the_resume_command_and_resume_keeps_auto_approve(tmp_path: Path) -> None:
    import signal

    import pytest

    from sandbox import backend_report

    works = {name: ok for name, ok, _ in backend_report()}
    if not works.get("bwrap"):
        pytest.skip("bubblewrap cannot run here")
    home = tmp_path / "home"
    note = ROOT / "examples" / "mla_note.md"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reprodesk", "run", str(note), "--auto-approve", "--run-id", "c"],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal: a shell's background job (CI, this suite's parent) may have
        # SIGINT ignored, and a child inherits that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "code_gate" in line:  # the jobs start now
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "reprodesk resume c" in stderr and "Traceback" not in stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "reprodesk", "resume", "c"],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # no --auto-approve here: the run's own policy approves the publish gate
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert (home / "runs" / "c" / "writeup.md").is_file()
