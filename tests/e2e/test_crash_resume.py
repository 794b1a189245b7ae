"""A run killed mid-node resumes from its last checkpoint without relaunching finished jobs.

The CLI runs in a fresh process and is SIGKILLed (its whole process group) while a
profiler job is running, after the main job and another profiler job have finished;
`reprodesk resume` in a new process must publish, and the ledger must show that no
job finished before the kill was launched again. LangGraph re-runs the interrupted
node from its start (a sync checkpoint is not exactly-once for a node's body), so
this is the ledger's job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from reprodesk.schemas import Job, Limits, RunResult
from sandbox import SubprocessSandbox, backend_report
from sandbox.ledger import Ledger, job_key
from tools.run_code import run_job

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "mla_note.md"
RUN_ID = "crash"
RUN = ("run", str(SAMPLE), "--auto-approve", "--llm", "offline", "--run-id", RUN_ID)
WAIT_S = 300.0

_bwrap = {name: (ok, why) for name, ok, why in backend_report()}.get("bwrap", (False, "unknown"))
needs_bwrap = pytest.mark.skipif(not _bwrap[0], reason=f"bubblewrap cannot run here: {_bwrap[1]}")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    env["REPRODESK_HOME"] = str(home)
    return env


def _jobs(db: Path) -> list[tuple[str, str, int]]:
    """(label, state, launches) of the run's jobs; [] until the ledger exists."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute(
            "SELECT label, state, launches FROM jobs WHERE run_id = ? ORDER BY started_at",
            (RUN_ID,),
        ).fetchall()
    except sqlite3.OperationalError:  # the table is not created yet
        return []
    finally:
        conn.close()
    return [(str(label), str(state), int(n)) for label, state, n in rows]


def _time_to_kill(rows: list[tuple[str, str, int]]) -> bool:
    """The main job and one profiler job finished, and another profiler job is running.

    Killing then makes the resumed profiler node (which LangGraph re-runs from its
    start) meet a sibling it already finished: the case the ledger is there for.
    """
    main_done = any("-attempt" in label and state == "finished" for label, state, _ in rows)
    grid = [state for label, state, _ in rows if "-attempt" not in label]
    return main_done and "finished" in grid and "started" in grid


def _processes_naming(path: Path) -> list[int]:
    """Host pids whose command line names `path` (a sandbox binds its job dir by path)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                if str(path).encode() in fh.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _reap_leftovers(home: Path) -> None:
    """Kill what the killed run left behind, and say so (it is a defect, not ours here).

    A run killed while `BubblewrapSandbox` writes bwrap's uid map (root) leaves bwrap's
    monitor process blocked forever: --die-with-parent covers the sandbox's processes,
    not that one. Jobs killed mid-run die with the CLI.
    """
    stray = _processes_naming(home)
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if stray:
        warnings.warn(
            f"{len(stray)} sandbox process(es) outlived the killed CLI (pids {stray}); killed",
            stacklevel=2,
        )


@needs_bwrap
@pytest.mark.slow
def test_sigkill_mid_profiler_then_resume_relaunches_no_finished_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    db = home / "ledger.sqlite"
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reprodesk", *RUN],
            env=_env(home),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while not _time_to_kill(_jobs(db)):
            assert proc.poll() is None, f"the run ended before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no second profiler job:\n{_jobs(db)}"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    at_kill = _jobs(db)  # read after the kill: what the ledger held when the CLI died
    finished = {label for label, state, _ in at_kill if state == "finished"}
    interrupted = {label for label, state, _ in at_kill if state == "started"}
    assert any("-attempt" in label for label in finished), at_kill
    assert any("-attempt" not in label for label in finished), at_kill
    assert interrupted, f"the profiler job finished before the kill landed: {at_kill}"
    assert all(n == 1 for _, _, n in at_kill), at_kill
    assert not (home / "runs" / RUN_ID).exists()

    try:
        resumed = subprocess.run(
            [sys.executable, "-m", "reprodesk", "resume", RUN_ID, "--auto-approve"],
            env=_env(home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
    finally:
        _reap_leftovers(home)
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert "published" in resumed.stdout

    after = {label: (state, n) for label, state, n in _jobs(db)}
    for label in finished:
        assert after[label] == ("finished", 1), (label, after[label])  # never relaunched
    for label in interrupted:
        assert after[label] == ("finished", 2), (label, after[label])  # it never finished
    assert all(state == "finished" for state, _ in after.values()), after
    folder = home / "runs" / RUN_ID
    assert (folder / "writeup.md").is_file()
    assert "## Claims" in (folder / "writeup.md").read_text()
    assert len(list((folder / "results").iterdir())) == len(after)  # every job's evidence


@needs_bwrap
@pytest.mark.slow
def test_sigkill_during_publish_then_resume_leaves_no_staging_and_no_duplicate(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    run_id = "crash-publish"
    argv = ("run", str(SAMPLE), "--auto-approve", "--llm", "offline", "--run-id", run_id)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reprodesk", *argv],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    runs = home / "runs"
    try:
        deadline = time.monotonic() + WAIT_S
        # publish writes into a hidden staging folder, then renames it into place
        while not (runs.is_dir() and list(runs.glob(f".{run_id}.*"))):
            assert proc.poll() is None, "the run ended before publish was caught"
            assert time.monotonic() < deadline, "publish never started"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _reap_leftovers(home)
    assert list(runs.glob(f".{run_id}.*")), "the kill should leave a staging folder behind"
    assert not (runs / run_id / "writeup.md").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "reprodesk", "resume", run_id],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert list(runs.glob(f".{run_id}.*")) == []  # no staging leftovers
    assert (runs / run_id / "writeup.md").is_file()
    assert set(Ledger(home / "ledger.sqlite").launches(run_id).values()) == {1}
    from memory import FindingStore

    with FindingStore.open(home / "memory") as store:
        evidence = json.loads((runs / run_id / "evidence.json").read_text())
        ids = [f["id"] for f in evidence["findings"]]
        assert store.count() == len(ids) == len(set(ids))  # stored once each
        assert all(store.get(i) is not None for i in ids)


# --------------------------------------------------------------------------- unit level


def _counting(box: SubprocessSandbox, monkeypatch: pytest.MonkeyPatch) -> list[Job]:
    """Wrap the real sandbox's `run` so that every launch is recorded."""
    calls: list[Job] = []
    real_run = box.run

    def run(job: Job) -> RunResult:
        calls.append(job)
        return real_run(job)

    monkeypatch.setattr(box, "run", run)
    return calls


def test_run_job_returns_the_ledger_result_without_launching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The subprocess backend runs anywhere, and this trusted one-liner is all it runs.
    box = SubprocessSandbox(tmp_path / "jobs")
    calls = _counting(box, monkeypatch)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    code = "import json, os\nprint(json.dumps({'pid': os.getpid()}))\n"
    job = Job(files={"main.py": code}, argv=["python", "main.py"], limits=Limits(wall_s=30))
    try:
        first = run_job(box, ledger, "r1", "main", job)
        assert (first.reused, len(calls)) == (False, 1)
        assert first.result.status == "ok" and first.result.metrics is not None

        again = run_job(box, ledger, "r1", "main", job)
        assert (again.reused, len(calls)) == (True, 1)  # the sandbox was not called
        assert again.key == first.key
        assert again.result == first.result  # same pid: the recorded run, not a new one
        assert ledger.launches("r1") == {"main": 1}

        other_run = run_job(box, ledger, "r2", "main", job)  # the key includes the run id
        assert (other_run.reused, len(calls)) == (False, 2)
    finally:
        ledger.close()


def test_run_job_relaunches_a_job_that_started_but_never_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = SubprocessSandbox(tmp_path / "jobs")
    calls = _counting(box, monkeypatch)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    job = Job(files={"main.py": "print('{}')\n"}, argv=["python", "main.py"])
    try:
        ledger.start(job_key("r1", job), "r1", "grid", job)  # a crash right after launch
        done = run_job(box, ledger, "r1", "grid", job)
        assert (done.reused, len(calls)) == (False, 1)
        assert ledger.launches("r1") == {"grid": 2}
        assert ledger.finished(done.key) == done.result
    finally:
        ledger.close()
