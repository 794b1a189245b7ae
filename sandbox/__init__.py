"""Sandboxes for untrusted experiment code: `Sandbox.run(job) -> RunResult`.

Backends, strongest first: Docker (not available yet), bubblewrap (`BubblewrapSandbox`,
the default), plain subprocess (`SubprocessSandbox`, unisolated, explicit opt-in only).
`make_sandbox` picks one by name; `backend_report` says which work on this machine.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from reprodesk.schemas import Job, Limits, UserError
from sandbox.base import Sandbox
from sandbox.bwrap import BubblewrapSandbox
from sandbox.local import SubprocessSandbox

__all__ = [
    "BubblewrapSandbox",
    "Sandbox",
    "SubprocessSandbox",
    "backend_report",
    "make_sandbox",
]

BACKENDS = ("auto", "bwrap", "subprocess", "docker")
DOCKER_NOT_YET = (
    "sandbox backend 'docker' is not available yet: use 'bwrap' (the default, via 'auto'), "
    "or 'subprocess' to run jobs unisolated"
)


@functools.cache
def _bwrap_works() -> tuple[bool, str]:
    """Run `true` through the real bwrap backend once per process: does it work here?"""
    try:
        with tempfile.TemporaryDirectory(prefix="reprodesk-probe-") as tmp:
            box = BubblewrapSandbox(Path(tmp))
            result = box.run(Job(files={}, argv=["true"], limits=Limits(wall_s=30)))
    except (UserError, OSError) as err:
        return False, str(err)
    if result.status == "ok":
        return True, (
            f"bubblewrap {box.version}: user/pid/net/mount namespaces, uid 65534, "
            "read-only system, no network"
        )
    detail = result.stderr.strip().splitlines()[-1:] or [result.message]
    return False, f"bubblewrap {box.version} cannot start a sandbox here: {detail[0]}"


def backend_report() -> list[tuple[str, bool, str]]:
    """(backend, works here?, why or why not) for `reprodesk doctor`."""
    works, why = _bwrap_works()
    return [
        ("docker", False, "not available yet"),
        ("bwrap", works, why),
        ("subprocess", True, "always runs, but UNISOLATED: only by explicit opt-in"),
    ]


def make_sandbox(name: str, work_root: Path) -> Sandbox:
    """The backend called `name`; job dirs go under `work_root`.

    "auto" is bwrap when it works here and otherwise an error: it never falls back to
    the unisolated subprocess backend on its own.
    """
    if name == "docker":
        raise UserError(DOCKER_NOT_YET)
    if name == "subprocess":
        return SubprocessSandbox(work_root)
    if name in ("auto", "bwrap"):
        works, why = _bwrap_works()
        if not works:
            lead = (
                "no isolating sandbox backend works here"
                if name == "auto"
                else "bwrap does not work here"
            )
            raise UserError(
                f"{lead} (bwrap: {why}); to run jobs UNISOLATED anyway, choose the sandbox "
                "backend 'subprocess' explicitly"
            )
        return BubblewrapSandbox(work_root)
    raise UserError(f"unknown sandbox backend {name!r}: choose one of {', '.join(BACKENDS)}")
