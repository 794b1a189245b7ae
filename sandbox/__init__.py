"""Sandboxes for untrusted experiment code: `Sandbox.run(job) -> RunResult`.

Backends, strongest first: Docker (`DockerSandbox`: an engine and the sandbox image,
local or through `DOCKER_HOST`), bubblewrap (`BubblewrapSandbox`; `WarmWorkerSandbox`
keeps one bubblewrap worker with torch imported and forks each job), plain subprocess
(`SubprocessSandbox`, unisolated, explicit opt-in only). `make_sandbox` picks one by
name; `backend_report` says which work on this machine.

Where things are:

- `base`: the `Sandbox` protocol, job dirs, the launcher, supervision, the status rules;
  `capture` (head+tail output), `meter` (memory as PSS plus tmpfs, the disk quota).
- `artifacts`: what a job leaves, collected and copied back as plain data
  (`copy_artifacts`); `retention`: removing job dirs (`remove_job_dirs`,
  `orphan_job_dirs`); `ledger`: the run ledger (`Ledger.workdirs`).
- `bwrap`: cold bubblewrap and `bwrap_args`, the one bubblewrap command-line builder;
  `worker` (host side), `worker_process` (the started worker) and `worker_inside`
  (the code shipped into the sandbox): the warm worker.
- `container` (one job in Docker), `docker_spec` (the pure container specification),
  `docker_engine` (engine calls, the image build), `docker_files` (the copy transfer).
- `local`: the unisolated subprocess backend.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reprodesk.schemas import SANDBOX_NAMES, Job, Limits, UserError
from sandbox.base import Sandbox
from sandbox.bwrap import BubblewrapSandbox
from sandbox.images import DEFAULT_IMAGE
from sandbox.local import SubprocessSandbox
from sandbox.worker import WarmWorkerSandbox

if TYPE_CHECKING:
    from sandbox.container import DockerSandbox


def __getattr__(name: str) -> Any:
    # docker-py (and requests under it) cost a quarter second to import: only on use.
    if name == "DockerSandbox":
        from sandbox.container import DockerSandbox

        return DockerSandbox
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")


def docker_available(image: str = DEFAULT_IMAGE) -> tuple[bool, str]:
    from sandbox.docker_engine import docker_available as available

    return available(image)


__all__ = [
    "BubblewrapSandbox",
    "DockerSandbox",
    "Sandbox",
    "SubprocessSandbox",
    "WarmWorkerSandbox",
    "backend_report",
    "make_sandbox",
]

BACKENDS = SANDBOX_NAMES  # the names live in reprodesk.schemas, once


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


def backend_report(image: str = DEFAULT_IMAGE) -> list[tuple[str, bool, str]]:
    """(backend, works here?, why or why not) for `reprodesk doctor`."""
    docker_works, docker_why = docker_available(image)
    works, why = _bwrap_works()
    return [
        ("docker", docker_works, docker_why),
        ("bwrap", works, why),
        (
            "bwrap-warm",
            works,
            "one bwrap worker per run with torch imported; each job a fresh forked child"
            if works
            else why,
        ),
        ("subprocess", True, "always runs, but UNISOLATED: only by explicit opt-in"),
    ]


def make_sandbox(name: str, work_root: Path, *, image: str = DEFAULT_IMAGE) -> Sandbox:
    """The backend called `name`; job dirs go under `work_root`.

    "auto" is Docker when an engine answers and has the sandbox image (someone set it
    up on purpose: `reprodesk sandbox build`), else the warm bwrap worker when bwrap
    works here, else an error: it never falls back to the unisolated subprocess backend
    on its own. A warm worker should be closed by its owner (`close()`); it also dies
    with the process.
    "docker" raises a UserError saying why when the engine or the image is missing.
    """
    if name in ("docker", "auto"):
        from sandbox.container import DockerSandbox

        if name == "docker" or docker_available(image)[0]:
            return DockerSandbox(work_root, image=image)
    if name == "subprocess":
        return SubprocessSandbox(work_root)
    if name in ("auto", "bwrap", "bwrap-warm"):
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
        if name == "bwrap":
            return BubblewrapSandbox(work_root)
        return WarmWorkerSandbox(work_root)
    raise UserError(f"unknown sandbox backend {name!r}: choose one of {', '.join(BACKENDS)}")
