"""The `Sandbox` protocol and what every backend shares.

A job is untrusted code: an LLM or a recipe wrote it from an untrusted paper. A backend
lays the job's files out in a fresh job dir, runs its command under limits, and hands
back a `RunResult`. This module holds the parts that do not depend on how the process
is isolated:

- laying out the files (absolute names and `..` are refused, nothing is written
  outside the job dir; an `owner` file next to it says which process ran it, for
  `sandbox.retention`);
- the in-sandbox launcher that sets the rlimits (address space, processes, file size
  at most the disk quota, core dumps), drops to uid 65534 where it runs as root,
  closes stray fds and execs the job's command;
- supervising the process: wall-time kill of the whole process group, the `Meter`
  (memory as PSS plus the job's tmpfs, disk as its folder plus its tmpfs; a job over
  either limit is killed), and head+tail capture of stdout/stderr with the full logs
  (capped) saved next to the job dir;
- the metrics line (the last JSON object line of stdout), the status decision and the
  artifacts (`sandbox.artifacts`: regular files under `out/`, capped).

Limits (`reprodesk.schemas.Limits`) and who enforces them: wall time (we kill),
memory (RLIMIT_AS for CPU jobs, the meter for all), tmpfs (the size of /tmp and
/dev/shm, each at most the memory limit, counted as memory and as disk), disk (the
meter: status "quota"), processes (RLIMIT_NPROC where the job is not root; cgroup pids
under Docker), output (head+tail kept, logs capped at `LOG_CAP_BYTES`).

What a backend covers is said in its own module; what no backend here covers:

- CPU time and CPU share: only the wall time is limited.
- Memory and disk are sampled every `WATCHDOG_EVERY_S`: a job can overshoot either by
  what it allocates or writes between two samples (the hard caps: RLIMIT_AS, the
  tmpfs sizes, RLIMIT_FSIZE per file). As a non-root user, a folder the job made
  unreadable (mode 000) is not counted.
- Memory on CPU jobs is RLIMIT_AS (address space), not RSS; a job that maps much more
  than it touches fails early, and the kernel's OOM killer remains the last resort.
- Status "oom" is inferred from the job's stderr (MemoryError, "Cannot allocate
  memory", torch's allocator message) or from our watchdog; a job can print those
  words and exit non-zero to be reported as oom ("No space left on device" likewise
  gives "quota"). Signals are reported as "killed".
- A job that exits with 129..192 under bwrap is indistinguishable from one killed by
  signal (code - 128): bwrap reports signals that way.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable

from reprodesk.schemas import Job, Limits, RunResult, RunStatus
from sandbox.artifacts import (
    MAX_ARTIFACT_BYTES,
    MAX_ARTIFACTS,
    MAX_ARTIFACTS_TOTAL_BYTES,
    collect_artifacts,
)
from sandbox.capture import LOG_CAP_BYTES, StreamCapture
from sandbox.meter import WATCHDOG_EVERY_S, Meter, file_size_bytes, tmpfs_bytes
from sandbox.owner import owner_id
from sandbox.retention import OWNER_FILE

__all__ = [
    "LOG_CAP_BYTES",
    "MAX_ARTIFACTS",
    "MAX_ARTIFACTS_TOTAL_BYTES",
    "MAX_ARTIFACT_BYTES",
    "WATCHDOG_EVERY_S",
    "Meter",
    "StreamCapture",
    "collect_artifacts",
    "tmpfs_bytes",
]

JOB_UID = 65534
"""uid/gid the job runs as inside a sandbox ("nobody"); not root, so RLIMIT_NPROC holds."""

DRAIN_GRACE_S = 2.0
"""How long to keep reading the pipes after the job's main process ended."""

PYTHON_NAMES = frozenset({"python", "python3"})
"""argv[0] values that mean the sandbox's own interpreter."""

OOM_MARKERS = (
    "MemoryError",
    "Cannot allocate memory",
    "DefaultCPUAllocator: can't allocate",
    "CUDA out of memory",
    "OutOfMemoryError",
    "std::bad_alloc",
)
NO_SPACE_MARKER = "No space left on device"

NO_GPU_MESSAGE = "job asks for a GPU but this machine has none"


@runtime_checkable
class Sandbox(Protocol):
    """Runs one job and reports what happened. Never raises for a failure of the job."""

    name: str

    def run(self, job: Job) -> RunResult: ...


class Refused(Exception):
    """The job cannot be run as given (a bad file name, a GPU we do not have)."""


# --------------------------------------------------------------------------- job dir


@dataclass(frozen=True)
class JobDir:
    """Where one job lives on the host.

    `root` is private to the host; only `work` is visible to the job (at /job under
    bwrap), so the job cannot plant a symlink where we later write the logs.
    """

    root: Path
    work: Path
    out: Path
    tmp: Path
    stdout_log: Path
    stderr_log: Path


def check_relpath(name: str) -> PurePosixPath:
    """A job file name as a safe relative path, or `Refused`."""
    if not name or "\0" in name:
        raise Refused(f"job file name {name!r} is empty or holds a NUL byte")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise Refused(f"job file name {name!r} is absolute; give a path relative to the job dir")
    if ".." in path.parts:
        raise Refused(f"job file name {name!r} contains '..'; it must stay inside the job dir")
    if not path.parts:
        raise Refused(f"job file name {name!r} names the job dir itself")
    return path


def lay_out(job: Job, work_root: Path) -> JobDir:
    """Create a fresh job dir under `work_root` holding the job's files and an empty out/."""
    relpaths = {name: check_relpath(name) for name in job.files}
    work_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="job-", dir=work_root))
    jd = JobDir(
        root=root,
        work=root / "job",
        out=root / "job" / "out",
        tmp=root / "tmp",
        stdout_log=root / "stdout.log",
        stderr_log=root / "stderr.log",
    )
    jd.work.mkdir()
    jd.tmp.mkdir()
    (root / OWNER_FILE).write_text(owner_id() + "\n", encoding="utf-8")
    for name, rel in relpaths.items():
        target = jd.work / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(job.files[name], encoding="utf-8")
        except OSError as err:
            raise Refused(f"job file {name!r} cannot be written: {err.strerror}") from err
    jd.out.mkdir(exist_ok=True)
    return jd


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give a freshly laid-out tree to the job's uid (no symlinks in it yet)."""
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def gpu_devices() -> list[str]:
    """NVIDIA device nodes on this machine (empty when there is no GPU)."""
    return sorted(str(p) for p in Path("/dev").glob("nvidia*"))


# --------------------------------------------------------------------------- launch


def job_env(*, home: str, python_bin: str) -> dict[str, str]:
    """The whole environment a job sees: an allow-list, nothing from the host's env."""
    threads = str(len(os.sched_getaffinity(0)))
    return {
        "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": home,
    }


# Runs as `python -I -S -c LAUNCHER AS NPROC FSIZE CORE UID LIFELINE CMD...` inside the
# sandbox: limits of -1 stay as they are; UID >= 0 is switched to when we are not already
# it; LIFELINE >= 0 is the read end of a pipe whose write end the host holds: readable
# (EOF) means the host died before the job started, and the job must not run unwatched.
LAUNCHER = """\
import os, resource, select, sys
a = sys.argv
lifeline = int(a[6])
if lifeline >= 0 and select.select([lifeline], [], [], 0)[0]:
    sys.stderr.write("sandbox: the host is gone; the job is not started\\n")
    os._exit(125)
for r, v in zip((resource.RLIMIT_AS, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE,
                 resource.RLIMIT_CORE), a[1:5]):
    if int(v) >= 0:
        resource.setrlimit(r, (int(v), int(v)))
uid = int(a[5])
if uid >= 0 and os.getuid() != uid:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.closerange(3, 1 << 20)
try:
    os.execvp(a[7], a[7:])
except OSError as e:
    sys.stderr.write("sandbox: cannot run %r: %s\\n" % (a[7], e.strerror))
    os._exit(127)
"""


def launcher_argv(
    python: str,
    argv: list[str],
    limits: Limits,
    *,
    gpu: bool,
    nproc: bool,
    uid: int | None,
    lifeline: int = -1,
) -> list[str]:
    """The command that sets the job's rlimits (and uid) and then execs `argv`.

    GPU jobs get no RLIMIT_AS (CUDA reserves far more address space than it uses);
    the meter limits them instead. `lifeline`: see LAUNCHER.
    """
    mb = 1024 * 1024
    address_space = -1 if gpu else limits.memory_mb * mb
    processes = limits.processes if nproc else -1
    command = [python if i == 0 and a in PYTHON_NAMES else a for i, a in enumerate(argv)]
    return [
        python,
        "-I",
        "-S",
        "-c",
        LAUNCHER,
        str(address_space),
        str(processes),
        str(file_size_bytes(limits)),
        "0",
        str(-1 if uid is None else uid),
        str(lifeline),
        *command,
    ]


# --------------------------------------------------------------------------- supervise


@dataclass
class Outcome:
    """How the process ended, before it is judged."""

    returncode: int
    """Exit code, or -N when killed by signal N (backends normalise to this)."""
    timed_out: bool
    oom_killed: bool
    duration_s: float
    peak_memory_mb: float | None
    stdout: StreamCapture
    stderr: StreamCapture
    oom_message: str = ""
    """Why our watchdog killed it for memory (empty when it did not)."""
    quota_message: str = ""
    """Why it is over its disk quota (empty when it is not)."""
    tmpfs_full: bool = False
    peak_disk_mb: float | None = None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def supervise(
    proc: subprocess.Popen[bytes],
    *,
    wall_s: float,
    started: float,
    stdout: StreamCapture,
    stderr: StreamCapture,
    meter: Meter,
) -> Outcome:
    """Pump the job's output until it ends; kill its process group on timeout or a limit.

    `proc` must lead its own process group (start_new_session=True). The exit is seen
    through a pidfd without reaping, so the group id cannot be reused while we kill
    leftovers; `wait4` then reaps it and gives the largest RSS of one process. `meter`
    samples memory and disk every `WATCHDOG_EVERY_S` and says when to kill.
    """
    assert proc.stdout is not None and proc.stderr is not None
    pidfd = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, stdout)
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, stderr)
    sel.register(pidfd, selectors.EVENT_READ, None)
    deadline = started + wall_s
    next_sample = time.monotonic() + WATCHDOG_EVERY_S
    timed_out = killed_for_limit = exited = False
    drain_until = 0.0
    ended = 0.0
    try:
        while True:
            now = time.monotonic()
            # After the exit only the pipes are registered; stop when they hit EOF, or
            # after a grace period if something that escaped the group still holds one.
            if exited and (not sel.get_map() or now >= drain_until):
                break
            if not exited and now >= deadline:
                timed_out = True
                _kill_group(proc.pid)
                deadline = float("inf")
            if not exited and now >= next_sample:
                if meter.sample(proc.pid) and not killed_for_limit:
                    killed_for_limit = True
                    _kill_group(proc.pid)
                next_sample = time.monotonic() + WATCHDOG_EVERY_S
            wake = drain_until if exited else min(deadline, next_sample)
            for key, _ in sel.select(timeout=max(0.0, wake - now)):
                if key.data is None:
                    exited = True
                    ended = time.monotonic()
                    sel.unregister(pidfd)
                    _kill_group(proc.pid)  # leftovers in the group; the leader is a zombie
                    drain_until = time.monotonic() + DRAIN_GRACE_S
                    continue
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fd)
    finally:
        if not exited:
            _kill_group(proc.pid)
        sel.close()
        os.close(pidfd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        duration = (ended or time.monotonic()) - started
        proc.stdout.close()
        proc.stderr.close()
        stdout.close()
        stderr.close()
    return metered_outcome(
        meter,
        returncode=proc.returncode,
        timed_out=timed_out,
        duration_s=duration,
        maxrss_kb=usage.ru_maxrss,
        stdout=stdout,
        stderr=stderr,
    )


def metered_outcome(
    meter: Meter,
    *,
    returncode: int,
    timed_out: bool,
    duration_s: float,
    maxrss_kb: int,
    stdout: StreamCapture,
    stderr: StreamCapture,
) -> Outcome:
    """The `Outcome` of a finished job with what its meter saw (and one last disk check)."""
    meter.final()
    # ru_maxrss (KB) is the largest RSS of any one process in the reaped tree; the
    # samples (PSS of the whole tree plus its tmpfs) catch what it misses.
    peak = max(maxrss_kb / 1024, meter.peak_memory_mb)
    return Outcome(
        returncode=returncode,
        timed_out=timed_out,
        oom_killed=bool(meter.oom),
        duration_s=round(duration_s, 3),
        peak_memory_mb=round(peak, 1) if peak > 0 else None,
        stdout=stdout,
        stderr=stderr,
        oom_message=meter.oom,
        quota_message=meter.quota,
        tmpfs_full=meter.tmpfs_full,
        peak_disk_mb=round(meter.peak_disk_mb, 1),
    )


# --------------------------------------------------------------------------- judge


def parse_metrics(stdout: str) -> dict[str, Any] | None:
    """The last line of stdout that parses as a JSON object; other lines are ignored."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:300]
    return ""


def decide_status(
    returncode: int,
    *,
    timed_out: bool,
    oom_killed: bool,
    stderr: str,
    limits: Limits,
    quota: str = "",
    tmpfs_full: bool = False,
    oom_message: str = "",
) -> tuple[RunStatus, str]:
    """Status and a one-line message. Order: our kills first, then what the job said.

    timeout: our wall-time killer fired. quota: the job went over its disk quota
    (`quota` says how), or failed with a full /tmp or /dev/shm (we saw one full, or
    it said "No space left on device"). oom: our memory watchdog fired, or the job
    failed with an out-of-memory message on stderr. killed: any other signal. error:
    non-zero exit. ok: exit 0 (whatever stderr says).
    """
    last = _last_line(stderr)
    if timed_out:
        return "timeout", f"wall time limit of {limits.wall_s:g} s reached; the job was killed"
    if quota:
        return "quota", quota
    if returncode != 0 and (tmpfs_full or NO_SPACE_MARKER in stderr):
        return "quota", (
            f"out of space (disk quota {limits.disk_mb} MB; /tmp and /dev/shm "
            f"{min(limits.tmpfs_mb, limits.memory_mb)} MB each): {last}"
        )
    if oom_killed:
        return "oom", oom_message or f"memory passed {limits.memory_mb} MB; the job was killed"
    if returncode != 0 and any(marker in stderr for marker in OOM_MARKERS):
        return "oom", f"out of memory (limit {limits.memory_mb} MB): {last}"
    if returncode < 0:
        return "killed", f"killed by {_signal_name(-returncode)}"
    if returncode != 0:
        return "error", f"exit code {returncode}" + (f": {last}" if last else "")
    return "ok", "exit code 0"


def build_result(
    outcome: Outcome, jd: JobDir, limits: Limits, *, backend: str, environment: dict[str, str]
) -> RunResult:
    stdout_text = outcome.stdout.text()
    stderr_text = outcome.stderr.text()
    status, message = decide_status(
        outcome.returncode,
        timed_out=outcome.timed_out,
        oom_killed=outcome.oom_killed,
        stderr=stderr_text,
        limits=limits,
        quota=outcome.quota_message,
        tmpfs_full=outcome.tmpfs_full,
        oom_message=outcome.oom_message,
    )
    artifacts, refused_artifacts = collect_artifacts(
        jd.work, {"stdout": jd.stdout_log, "stderr": jd.stderr_log}
    )
    return RunResult(
        status=status,
        exit_code=outcome.returncode,
        message=message,
        stdout=stdout_text,
        stderr=stderr_text,
        truncated=outcome.stdout.truncated or outcome.stderr.truncated,
        duration_s=outcome.duration_s,
        peak_memory_mb=outcome.peak_memory_mb,
        peak_disk_mb=outcome.peak_disk_mb,
        metrics=parse_metrics(stdout_text),
        artifacts=artifacts,
        artifacts_refused=refused_artifacts,
        environment=environment,
        backend=backend,
        workdir=str(jd.root),
    )


def refused(message: str, *, backend: str) -> RunResult:
    return RunResult(status="refused", message=message, backend=backend)


def python_version(python: str) -> str:
    """Version of an interpreter, `sys.executable` without a subprocess."""
    if python == sys.executable:
        return ".".join(map(str, sys.version_info[:3]))
    out = subprocess.run(
        [python, "-I", "-S", "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.stdout.strip() or "unknown"
