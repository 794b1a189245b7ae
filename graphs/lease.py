"""One driver per run: a lease on the run id, held while a process drives the run.

An exclusive `flock` on `leases/<run-id>.lock` under the home. The kernel drops it when
the holder's file is closed — including when the process dies (kill -9 too) — so a lease
of a dead process is simply taken over; nothing goes stale. The holder writes its pid,
host and start time into the file, so a refused driver can say who holds the run.
flock is per open file, so two drivers in one process exclude each other as well.
(A team running drivers on several hosts needs a database lease instead: see the
scale-out notes in the README.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from reprodesk.schemas import UserError


class RunBusy(UserError):
    """Another process drives this run now."""


class Lease:
    """`with Lease(home, run_id):` — or RunBusy naming the holder."""

    def __init__(self, home: Path, run_id: str) -> None:
        self.path = home / "leases" / f"{run_id}.lock"
        self.run_id = run_id
        self._fd: int | None = None

    def acquire(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunBusy(
                f"run '{self.run_id}' is being driven by {holder}; wait for it to pause or "
                "end (or stop that process), then resume"
            ) from None
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')})"
