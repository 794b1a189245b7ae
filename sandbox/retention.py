"""Removing job folders: once a run is published, and what dead runs left behind.

A job folder (`RunResult.workdir`) holds the job's files, what it wrote and the logs.
Once the results are published they are no longer needed. The job chose the modes of
what it wrote: dirs with mode 000 or 0555, files it cannot delete itself, symlinks to
anything. Removal therefore works through directory fds, never follows a symlink (a
link is removed, not its target), restores owner permissions on a dir it must enter
or empty, and only ever touches paths strictly under the jobs root it is given.

Each job folder carries an `owner` file (host:pid:start-time of the process that ran
it, written by `lay_out` outside the job's view); a warm worker's folder too. A folder
whose owner still runs is never an orphan: its job may be running now.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from sandbox.owner import owner_is_gone

OWNER_FILE = "owner"
"""In each job folder and warm-worker folder: the owner id of the process that made it."""
JOB_PREFIX = "job-"
WORKER_PREFIX = "warm-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int) -> int:
    """Open the dir `name` (no symlink), giving it owner rwx first if we may not enter it."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        # lstat said it is a dir (not a link), so chmod cannot reach through one here.
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _remove_entry(parent_fd: int, name: str) -> None:
    st = os.lstat(name, dir_fd=parent_fd)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    fd = _open_dir(name, parent_fd)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
            os.fchmod(fd, 0o700)  # a read-only dir: its entries could not be unlinked
        with os.scandir(fd) as entries:
            names = [entry.name for entry in entries]
        for child in names:
            _remove_entry(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _under(root: Path, path: Path) -> bool:
    """Is `path` strictly under `root`, by their absolute names (no link is resolved)?"""
    root_abs = Path(os.path.abspath(root))
    path_abs = Path(os.path.abspath(path))
    return path_abs != root_abs and root_abs in path_abs.parents


def remove_tree(path: Path) -> None:
    """Remove `path` (a dir or a file; a symlink itself, never its target)."""
    parent_fd = os.open(path.parent, _DIR_FLAGS)
    try:
        _remove_entry(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def remove_job_dirs(jobs_root: Path, workdirs: Iterable[str]) -> int:
    """Remove the job folders `workdirs` that lie strictly under `jobs_root`; how many went.

    Empty names, paths outside `jobs_root`, folders already gone are skipped. A
    symlink in their place is removed, not followed. Robust to the modes a job left
    (dirs 000 or read-only). Raises OSError only for what even that cannot remove.
    """
    removed = 0
    for workdir in workdirs:
        if not workdir:
            continue
        path = Path(os.path.abspath(workdir))
        if not _under(jobs_root, path):
            continue
        try:
            os.lstat(path)
        except FileNotFoundError:
            continue
        remove_tree(path)
        removed += 1
    return removed


def _owner_gone(folder: Path) -> bool:
    """No owner file (a folder from before owners were written), or its owner is dead."""
    try:
        fd = os.open(folder / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    with contextlib.closing(os.fdopen(fd, "r", encoding="utf-8", errors="replace")) as fh:
        return owner_is_gone(fh.read(200).strip())


def _folders(root: Path, prefix: str) -> list[Path]:
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    return sorted(
        Path(e.path)
        for e in entries
        if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)
    )


def orphan_job_dirs(jobs_root: Path, keep: set[str]) -> list[Path]:
    """Job folders under `jobs_root` that no one needs: not in `keep`, their owner dead.

    Looks at `job-*` folders directly under `jobs_root` and inside each warm worker's
    `warm-*` folder; a `warm-*` folder itself is an orphan once its owner is dead and
    every job folder in it is one too. `keep`: workdirs (as `RunResult.workdir`) still
    wanted, e.g. those of runs not yet published.
    """
    kept = {os.path.abspath(k) for k in keep if k}
    orphans: list[Path] = []

    def judge(folder: Path) -> bool:
        return os.path.abspath(folder) not in kept and _owner_gone(folder)

    for job in _folders(jobs_root, JOB_PREFIX):
        if judge(job):
            orphans.append(job)
    for worker in _folders(jobs_root, WORKER_PREFIX):
        jobs = _folders(worker, JOB_PREFIX)
        dead = [job for job in jobs if judge(job)]
        if len(dead) == len(jobs) and judge(worker):
            orphans.append(worker)  # the worker's folder, its jobs with it
        else:
            orphans.extend(dead)
    return orphans
