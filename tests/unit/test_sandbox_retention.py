"""Removing job folders (after publish, and `reprodesk gc`), and the ledger's list of them.

The folders are laid out by hand, with the modes and links a hostile job leaves.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from reprodesk.schemas import Job, RunResult
from sandbox.base import lay_out
from sandbox.ledger import Ledger, job_key
from sandbox.owner import owner_id
from sandbox.retention import OWNER_FILE, orphan_job_dirs, remove_job_dirs

DEAD_OWNER = f"{socket.gethostname()}:999999999:1"  # this host, a pid that cannot run


def hostile_job_dir(jobs_root: Path, outside: Path) -> Path:
    jd = lay_out(Job(files={"main.py": "pass"}, argv=["python", "main.py"]), jobs_root)
    (jd.out / "locked" / "deeper").mkdir(parents=True)
    (jd.out / "locked" / "deeper" / "f").write_text("x")
    (jd.out / "ro").mkdir()
    (jd.out / "ro" / "g").write_text("x")
    os.symlink(outside, jd.out / "link-to-dir")
    os.symlink(outside / "keep.txt", jd.out / "link-to-file")
    os.chmod(jd.out / "ro", 0o555)
    os.chmod(jd.out / "locked" / "deeper", 0)
    os.chmod(jd.out / "locked", 0)
    return jd.root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "keep.txt").write_text("keep")
    return path


def test_a_hostile_job_dir_goes_and_what_its_links_point_at_stays(
    tmp_path: Path, outside: Path
) -> None:
    jobs = tmp_path / "jobs"
    workdir = hostile_job_dir(jobs, outside)
    assert remove_job_dirs(jobs, [str(workdir)]) == 1
    assert not os.path.lexists(workdir)
    assert (outside / "keep.txt").read_text() == "keep"
    assert jobs.is_dir()


def test_only_dirs_strictly_under_the_jobs_root_are_touched(tmp_path: Path, outside: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    sneaky = str(jobs / ".." / "outside")  # outside, by a name that starts under jobs/
    assert remove_job_dirs(jobs, [str(outside), sneaky, str(jobs), "", "/"]) == 0
    assert (outside / "keep.txt").exists() and jobs.is_dir()


def test_a_symlink_in_place_of_a_job_dir_is_removed_not_followed(
    tmp_path: Path, outside: Path
) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    os.symlink(outside, jobs / "job-link")
    assert remove_job_dirs(jobs, [str(jobs / "job-link"), str(jobs / "job-gone")]) == 1
    assert not os.path.lexists(jobs / "job-link")
    assert (outside / "keep.txt").exists()


def test_orphans_are_dead_owners_folders_not_kept_ones(tmp_path: Path, outside: Path) -> None:
    jobs = tmp_path / "jobs"
    live = hostile_job_dir(jobs, outside)  # owned by this (live) process
    dead = hostile_job_dir(jobs, outside)
    kept = hostile_job_dir(jobs, outside)
    unowned = jobs / "job-from-before-owners"
    unowned.mkdir()
    other_host = hostile_job_dir(jobs, outside)  # another machine's process: not ours to judge
    (other_host / OWNER_FILE).write_text("some-other-host:1:1\n")
    for path in (dead, kept):
        (path / OWNER_FILE).write_text(f"{DEAD_OWNER}\n")
    # A warm worker's folder: dead owner, one dead job inside -> the whole folder goes.
    warm = jobs / "warm-abc"
    warm.mkdir()
    (warm / OWNER_FILE).write_text(DEAD_OWNER)
    (warm / "worker.log").write_text("log")
    warm_job = hostile_job_dir(warm, outside)
    (warm_job / OWNER_FILE).write_text(DEAD_OWNER)
    orphans = orphan_job_dirs(jobs, keep={str(kept)})
    assert sorted(orphans) == sorted([dead, unowned, warm])
    assert live not in orphans
    assert remove_job_dirs(jobs, [str(p) for p in orphans]) == 3
    left = sorted(p.name for p in jobs.iterdir())
    assert left == sorted([live.name, kept.name, other_host.name])


def test_a_live_workers_folder_stays_while_its_dead_jobs_go(tmp_path: Path, outside: Path) -> None:
    jobs = tmp_path / "jobs"
    warm = jobs / "warm-live"
    warm.mkdir(parents=True)
    (warm / OWNER_FILE).write_text(owner_id())  # this process: alive
    dead_job = hostile_job_dir(warm, outside)
    (dead_job / OWNER_FILE).write_text(DEAD_OWNER)
    assert orphan_job_dirs(jobs, keep=set()) == [dead_job]


def test_the_ledger_lists_a_runs_job_dirs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "runs.sqlite")
    try:
        for run_id, n in (("run-1", 2), ("run-2", 1)):
            for i in range(n):
                job = Job(files={"main.py": f"print({i})"}, argv=["python", "main.py"])
                key = job_key(run_id, job)
                ledger.start(key, run_id, f"job{i}", job)
                ledger.finish(
                    key, RunResult(status="ok", workdir=str(tmp_path / f"{run_id}-job-{i}"))
                )
        unfinished = Job(files={"main.py": "x"}, argv=["python", "main.py"])
        ledger.start(job_key("run-1", unfinished), "run-1", "crashed", unfinished)
        assert sorted(ledger.workdirs("run-1")) == [
            str(tmp_path / "run-1-job-0"),
            str(tmp_path / "run-1-job-1"),
        ]
        assert ledger.workdirs("run-2") == [str(tmp_path / "run-2-job-0")]
        assert ledger.workdirs("no-such-run") == []
    finally:
        ledger.close()
