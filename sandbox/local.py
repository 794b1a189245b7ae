"""Plain-subprocess backend. UNISOLATED: only for a user who explicitly opts in.

!!! The job runs as you, on your filesystem and your network. It can read your home
!!! dir, your SSH keys and your cloud credentials files, write anywhere you can, reach
!!! the internet and the services on 127.0.0.1, and leave processes behind that
!!! detach from their process group (setsid + fork). Use it only for code you would
!!! run by hand, on a machine where bubblewrap and Docker are both unavailable.

What it still does:

- The environment is cleared to the allow-list of `base.job_env`, so API keys in the
  host env are not passed; HOME and TMPDIR point at a private dir next to the job dir.
- cwd is the fresh job dir; the wall time kills the job's process group.
- RLIMIT_AS (CPU jobs), RLIMIT_FSIZE and RLIMIT_CORE=0 as under bwrap; an RSS watchdog
  for GPU jobs.
- The same head+tail output capture, metrics line, artifacts and status rules.

What it does not do, besides isolation: RLIMIT_NPROC is not set. Outside a user
namespace it would count every process of the host user (so a busy desktop session
could not start a job), and root ignores it anyway; fork bombs are not contained.
There is no private tmpfs: the job's /tmp is the host's (TMPDIR and HOME point at its
own dir, which the disk quota counts, but nothing stops a write to /tmp itself).
Started as root, the job runs as root.

Every `run` logs a warning (`sandbox.unisolated`) saying so, and the result's
environment carries `isolation: none`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import structlog

from reprodesk.schemas import Job, RunResult
from sandbox.base import (
    NO_GPU_MESSAGE,
    Meter,
    Refused,
    StreamCapture,
    build_result,
    gpu_devices,
    job_env,
    launcher_argv,
    lay_out,
    python_version,
    refused,
    supervise,
)

UNISOLATED_WARNING = (
    "the subprocess sandbox backend does NOT isolate the job: it runs as this user{root}, "
    "with this machine's files and network"
)


def warn_unisolated() -> str:
    """Log (and return) the warning every use of this backend gives."""
    root = " (root!)" if os.geteuid() == 0 else ""
    text = UNISOLATED_WARNING.format(root=root)
    structlog.get_logger(__name__).warning("sandbox.unisolated", warning=text)
    return text


class SubprocessSandbox:
    """Runs jobs as plain child processes. No isolation at all; see the module docstring."""

    name = "subprocess"

    def __init__(self, work_root: Path, python: str | None = None) -> None:
        self.work_root = Path(work_root)
        self.python = python or sys.executable
        self.environment = {
            "backend": self.name,
            "python": python_version(self.python),
            "isolation": "none",
        }

    def run(self, job: Job) -> RunResult:
        warn_unisolated()
        if job.gpu and not gpu_devices():
            return refused(NO_GPU_MESSAGE, backend=self.name)
        if not job.argv:
            return refused("job has an empty command", backend=self.name)
        try:
            jd = lay_out(job, self.work_root)
        except Refused as err:
            return refused(str(err), backend=self.name)
        limits = job.limits
        argv = launcher_argv(self.python, job.argv, limits, gpu=job.gpu, nproc=False, uid=None)
        env = job_env(home=str(jd.tmp), python_bin=os.path.dirname(self.python))
        stdout = StreamCapture(limits.output_bytes, jd.stdout_log)
        stderr = StreamCapture(limits.output_bytes, jd.stderr_log)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=jd.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as err:
            stdout.close()
            stderr.close()
            return RunResult(
                status="error",
                message=f"cannot start {self.python!r}: {err.strerror}",
                backend=self.name,
                environment=dict(self.environment),
                workdir=str(jd.root),
            )
        outcome = supervise(
            proc,
            wall_s=limits.wall_s,
            started=started,
            stdout=stdout,
            stderr=stderr,
            meter=Meter(limits, disk_dirs=[jd.work, jd.tmp], tmpfs_depth=None),
        )
        return build_result(
            outcome, jd, limits, backend=self.name, environment=dict(self.environment)
        )
