"""The warm worker as the host sees it: the started bwrap process and its control channel.

`sandbox.worker` starts and drives it; `sandbox.worker_inside` is what runs on the
other end of the channel.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sandbox.base import PYTHON_NAMES


class WorkerError(Exception):
    """The worker could not be started or stopped answering."""


def python_mode(argv: list[str], python: str) -> tuple[str, list[str]]:
    """How the worker runs `argv`: ("script" | "module" | "code", args) or ("exec", argv).

    `python script.py ARGS`, `python -m MOD ARGS` and `python -c CODE ARGS` run warm,
    in the forked child; anything else is exec'd (the sandbox's own interpreter for
    `python`), in the same namespaces but without the preloaded modules.
    """
    if argv and argv[0] in PYTHON_NAMES and len(argv) >= 2:
        first = argv[1]
        if first in ("-m", "-c") and len(argv) >= 3:
            return ("module" if first == "-m" else "code"), argv[2:]
        if not first.startswith("-"):
            return "script", argv[1:]
    return "exec", [python if i == 0 and a in PYTHON_NAMES else a for i, a in enumerate(argv)]


@dataclass
class _Worker:
    """One started worker: the bwrap process and our end of its control channel."""

    proc: subprocess.Popen[bytes]
    ctrl: socket.socket
    devices: list[str]
    loaded: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:  # an EOF (or a stray message) on the channel means it is not usable
            ready, _, _ = select.select([self.ctrl], [], [], 0)
        except (OSError, ValueError):
            return False
        return not ready

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.ctrl.close()
        if self.proc.poll() is None:
            # bwrap leads its process group; the sandbox's pid 1 dies with bwrap
            # (--die-with-parent) and takes the worker and any job with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class _Shared:
    """What the finalizer needs, kept apart from the sandbox object."""

    worker: _Worker | None = None
    spawner: ThreadPoolExecutor | None = None

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.spawner is not None:
            self.spawner.shutdown(wait=True)
            self.spawner = None


def _pidfd_pid(pidfd: int) -> int:
    """The host pid behind a pidfd (-1 once the process is gone)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as fh:
        for line in fh:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return -1


def _receive(sock: socket.socket, timeout: float) -> tuple[dict[str, Any] | None, list[int]]:
    """One message from the worker (None at EOF) and the fds it carried."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        raise WorkerError(f"no answer from the worker within {timeout:g} s")
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
    return (json.loads(data) if data else None), list(fds)
