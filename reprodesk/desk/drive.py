"""Decisions from the page, driven in background threads: one per decision, one per run.

`Runs.resume` checks a decision before anything moves (a UserError comes back to the
request at once); the graph then runs on in a thread of the server, under the run's
`Lease`, while the page polls `progress`. A second decision on a run this desk is
driving is refused naming the holder, and so is one on a run another process drives.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from graphs.lease import Lease, RunBusy
from reprodesk.schemas import UserError


@dataclass
class Drive:
    """One decision being driven: its progress lines and how it ended."""

    run_id: str
    action: str
    since: str
    lines: list[str] = field(default_factory=list)
    done: bool = False
    error: str = ""
    status: str = ""

    @property
    def holder(self) -> str:
        return f"this desk (pid {os.getpid()}, {self.action} since {self.since})"


class Drivers:
    """The drives of one desk process, by run id."""

    def __init__(self, runs: Any) -> None:
        self.runs = runs
        # Nodes read `deps.ledger` when they run: give them one usable from any thread.
        runs.deps.ledger = ThreadLedger(runs.home / "ledger.sqlite")
        if not isinstance(runs.deps.sandbox, OneJobAtATime):
            runs.deps.sandbox = OneJobAtATime(runs.deps.sandbox)
        self._lock = threading.Lock()
        self._drives: dict[str, Drive] = {}
        self._threads: dict[str, threading.Thread] = {}

    def current(self, run_id: str) -> Drive | None:
        """The latest drive of `run_id` in this process (running or finished), if any."""
        with self._lock:
            return self._drives.get(run_id)

    def busy(self, run_id: str) -> bool:
        with self._lock:
            thread = self._threads.get(run_id)
            return thread is not None and thread.is_alive()

    def check_free(self, run_id: str) -> None:
        """RunBusy naming this desk's drive of `run_id`, if one is going."""
        with self._lock:
            self._check_free(run_id)

    def _check_free(self, run_id: str) -> None:
        thread = self._threads.get(run_id)
        if thread is not None and thread.is_alive():
            raise RunBusy(
                f"run '{run_id}' is being driven by {self._drives[run_id].holder}; "
                "wait for it to pause or end"
            )

    def start(self, run_id: str, action: str, events: Callable[[], Iterator[Any]]) -> Drive:
        """Check nobody drives `run_id`, make its events (the decision's checks run here,
        in the caller), and drive them in a new thread."""
        with self._lock:
            self._check_free(run_id)
            # Another process (a CLI resume) may hold the lease: say so now, not in a thread.
            with Lease(self.runs.home, run_id):
                pass
            stream = events()
            drive = Drive(run_id, action, datetime.now(UTC).isoformat(timespec="seconds"))
            worker = threading.Thread(
                target=self._run, args=(drive, stream), name=f"desk-drive-{run_id}", daemon=True
            )
            self._drives[run_id] = drive
            self._threads[run_id] = worker
            worker.start()
            return drive

    def _run(self, drive: Drive, stream: Iterator[Any]) -> None:
        log = structlog.get_logger(__name__).bind(run_id=drive.run_id, agent="desk")
        try:
            for ev in stream:
                if ev.kind == "step":
                    drive.lines.append(f"{', '.join(ev.nodes)}: {ev.summary}")
                elif ev.view is not None:
                    drive.status = ev.view.status
        except UserError as exc:
            drive.error = " ".join(str(exc).split())
        except Exception as exc:  # a bug of ours: the page says so; the run is checkpointed
            log.exception("desk.drive_failed")
            drive.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            drive.done = True

    def join(self, timeout: float | None = None) -> None:
        """Wait for every drive (the server's shutdown, and tests)."""
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)


class ThreadLedger:
    """The job ledger, one SQLite connection per thread.

    `sandbox.ledger.Ledger` holds a connection that only its creating thread may use;
    the desk drives runs in threads of its own, so each thread gets its own connection
    to the same file (WAL, busy timeout: the ledger's own settings).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def _ledger(self) -> Any:
        ledger = getattr(self._local, "ledger", None)
        if ledger is None:
            from sandbox.ledger import Ledger

            ledger = self._local.ledger = Ledger(self.path)
        return ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger(), name)


class OneJobAtATime:
    """The sandbox, one job at a time across this desk's drives.

    Two decisions on two runs drive in two threads; a warm sandbox worker speaks one
    request at a time over its pipe (and the machine has one GPU), so jobs queue here.
    """

    def __init__(self, sandbox: Any) -> None:
        self._sandbox = sandbox
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self._sandbox.name)

    def run(self, job: Any) -> Any:
        with self._lock:
            return self._sandbox.run(job)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sandbox, name)
