"""What the sandbox test suites share: reading a job's report, finding leftover processes."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from reprodesk.schemas import RunResult
from sandbox import backend_report


def bwrap_works_or_skip() -> None:
    works, why = {n: (w, y) for n, w, y in backend_report()}["bwrap"]
    if not works:
        pytest.skip(f"bubblewrap cannot run here: {why}")


def report(result: RunResult) -> dict[str, Any]:
    """The job's own report: its metrics line, which each attack prints."""
    assert result.metrics is not None, (result.status, result.message, result.stderr[-2000:])
    return result.metrics


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds `marker`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def assert_none_left(marker: str, within_s: float = 2.0) -> None:
    """No process with `marker` in its command line, once SIGKILLed ones have vanished."""
    deadline = time.monotonic() + within_s
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


def assert_no_stray_child() -> None:
    """Every run reaps its own processes: nothing may be left as our (zombie) child."""
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pid = 0
    assert pid == 0
