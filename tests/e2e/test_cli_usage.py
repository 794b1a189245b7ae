"""A user's mistake is one clear line and exit 2 — never 'internal error', never a traceback.

The real CLI in fresh processes; nothing here needs a sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "mla_note.md"


def cli(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    base["REPRODESK_HOME"] = str(home)
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "reprodesk", *args],
        env=base,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("replay", "x", "--step", "abc"), "Invalid value for '--step'"),
        (("findings", "search", "q", "-k", "abc"), "Invalid value for '-k'"),
        (("run",), "Missing argument 'source'"),
        (("bogus",), "No such command 'bogus'"),
        (("run", "--nope", "x"), "No such option: --nope"),
        (("run", str(SAMPLE), "--mechanism", "nope"), "--mechanism nope: unknown"),
        (("run", str(SAMPLE), "--sandbox", "vm"), "--sandbox 'vm'"),
        (("resume", "ghost", "--approve", "--reject", "x"), "give one, not both"),
        (("resume", "ghost", "--plan", "/nonexistent/plan.json"), "--plan /nonexistent"),
    ],
)
def test_usage_errors_exit_2_with_the_reason(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    proc = cli(tmp_path / "home", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert says in proc.stderr and "internal error" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_home_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = cli(blocker / "home", "runs")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(blocker / "home") in proc.stderr


def test_a_bad_setting_names_the_variable(tmp_path: Path) -> None:
    proc = cli(tmp_path / "home", "runs", env={"REPRODESK_JOB_TIMEOUT_S": "abc"})
    assert proc.returncode == 2 and "REPRODESK_JOB_TIMEOUT_S" in proc.stderr
    proc = cli(tmp_path / "home", "runs", env={"REPRODESK_SANDBOX": "vm"})
    assert proc.returncode == 2 and "REPRODESK_SANDBOX" in proc.stderr


def test_a_plan_file_that_does_not_validate_leaves_the_run_paused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"REPRODESK_GATES": '["plan"]'}
    first = cli(home, "run", str(SAMPLE), "--run-id", "p", env=env)
    assert first.returncode == 3 and "plan gate" in first.stdout, first.stderr
    plan_file = home / "review" / "p" / "plan" / "plan.json"
    plan = json.loads(plan_file.read_text())
    bad = tmp_path / "bad.json"
    for broken, says in (
        ({"mechanisms": [{"key": 1}]}, "not a valid plan"),
        ({**plan, "mechanisms": [{**plan["mechanisms"][0], "key": "moe"}]}, "not one the paper"),
    ):
        bad.write_text(json.dumps(broken))
        proc = cli(home, "resume", "p", "--plan", str(bad), env=env)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    bad.write_text("{not json")
    assert "not JSON" in cli(home, "resume", "p", "--plan", str(bad), env=env).stderr
    assert "paused at the plan gate" in cli(home, "runs", env=env).stdout


def test_gc_removes_what_dead_runs_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    jobs = home / "cache" / "jobs"
    dead = jobs / "job-left-by-a-killed-run"
    (dead / "job" / "out").mkdir(parents=True)
    (dead / "job" / "out" / "big.bin").write_bytes(b"\0" * 4096)
    (dead / "job" / "out").chmod(0o500)  # what a job may leave: a folder it cannot write
    unrelated = jobs.parent / "papers"
    unrelated.mkdir()
    proc = cli(home, "gc")
    assert proc.returncode == 0, proc.stderr
    assert "removed 1 job folder" in proc.stdout
    assert not dead.exists() and unrelated.is_dir()  # only job folders, only under jobs/
