"""Warm-worker bubblewrap backend: one sandboxed Python with torch imported, a fresh fork per job.

`import torch` costs over a second, paid by every job under `BubblewrapSandbox`.
`WarmWorkerSandbox` starts ONE worker under bubblewrap (the same namespaces, binds,
uid map and environment as `bwrap.py`, built by its `bwrap_args`), imports torch
there once, and runs each job in a freshly forked child of it. A job's files never
pass through the worker: the host lays them out as usual, under a jobs root that the
worker has bound at /jobs.

Two programs: this module is the host side (start the worker, hand it jobs, watch
them); `sandbox.worker_inside` is the code shipped into the sandbox (the worker, each
job's init, the job process), with a picture of how one job runs.

- Isolation between jobs: each job has its own pid namespace (it sees only its own
  processes; when it ends, the kernel kills everything left in it, setsid'd escapees
  included), its own mount namespace in which /jobs is unmounted (other jobs' dirs,
  the logs, the worker's files are not reachable), its own /tmp, /dev/shm (so HOME,
  TMPDIR and the caches in them are per job) and IPC namespace. Jobs run one at a time.
  The job dir travels as a directory, not over the pipe: a forked child inherits the
  worker's memory, so file contents the worker had held could be read by a later job.
  The worker holds only each job's request (dir name, argv, limits, env).
- The control channel (a socketpair to the host) and every other fd of the worker
  are closed in the job; the worker (host pid space, ns uid 0) is not in the job's
  pid namespace, so the job can neither signal nor ptrace it.
- Limits per job, as in `base`: wall time (the host SIGKILLs the job's init through a
  pidfd, which takes down the job's whole pid namespace; the worker survives),
  RLIMIT_AS / NPROC / FSIZE / CORE=0 in the job process, the meter (PSS plus the
  job's own /tmp and /dev/shm of `Limits.tmpfs_mb`; disk quota on its folder and
  tmpfs), head+tail output capture, the metrics line, artifacts under out/.
- Capabilities: the worker keeps CAP_SYS_ADMIN (per-job namespaces and mounts),
  CAP_SETPCAP, CAP_SYS_RESOURCE and, as root, CAP_SETUID/CAP_SETGID, all inside
  bwrap's user namespace only. The job drops its bounding, ambient and inheritable
  sets, switches to uid 65534 (as root) and keeps no_new_privs from bwrap.
- No nested user namespaces, as root too: `bwrap.map_ids` forbids them in the
  worker's user namespace at start, and each job's init sets user.max_user_namespaces
  to 0 there again: what bwrap's --disable-userns does, which a job cannot raise. (bwrap's
  option itself would put the worker in a nested user namespace, from which it could
  not setns back to its own pid namespace between jobs.)
- Lifetime: the worker is started from a dedicated host thread that lives as long as
  this object, because bwrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when
  the *thread* that started bwrap exits (LangGraph runs nodes in pool threads). The
  worker exits when the host closes the socket or dies; `close()` stops it. A dead
  worker is restarted transparently by the next `run()`.

Why the worker never touches CUDA (nor runs a parallel CPU op) before forking: a CUDA
context does not survive fork (the child fails with "Cannot re-initialize CUDA in
forked subprocess"), and GNU OpenMP's thread pool is not fork-safe (a child of a
process that ran a parallel region can hang in its first one). The worker only
imports the modules in `preload`; each job initialises CUDA and the thread pools
itself, as a fresh process would.

Differences from a fresh `python script.py` (cold bwrap), worth knowing:

- The job is a fork, not an exec: `sys.flags` are those of `python -I`, the str hash
  seed is the worker's (the same for every job of one worker), modules imported by
  the worker keep their import-time state, and `sys.argv[0]` is the script's absolute
  path (runpy's doing; `__file__` is absolute in both). `random` and `numpy.random` are
  reseeded per job; torch's default seed is fixed anyway.
- RLIMIT_AS covers the preloaded interpreter too (about 0.6 GB with torch), as it
  does for a cold job that imports torch; a limit below that baseline fails at once,
  as oom, with a message that says so.
- Only `python script.py ...`, `python -m mod ...` and `python -c code ...` run warm;
  any other command is exec'd inside the job's namespaces (same isolation, no gain).
- Not root: bwrap maps only the caller's uid, so every job is ns uid 0 (the caller
  on the host) with no capabilities, no bounding set and SECBIT_NOROOT (an exec gives
  root's capabilities back otherwise); since all jobs share that uid, the namespaces
  are what keeps them apart. The test suite runs as root; this path was checked by
  hand as uid 1000 with the system Python and no preload.

What it does not cover, besides what `bwrap.py` and `base` list: no per-job network
namespace (jobs share the worker's loopback-only one, one job at a time), and one
worker runs one job at a time (`run` holds a lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reprodesk.schemas import Job, Limits, RunResult
from sandbox.base import (
    DRAIN_GRACE_S,
    JOB_UID,
    NO_GPU_MESSAGE,
    WATCHDOG_EVERY_S,
    JobDir,
    Meter,
    Outcome,
    Refused,
    StreamCapture,
    build_result,
    chown_tree,
    gpu_devices,
    job_env,
    lay_out,
    metered_outcome,
    refused,
    tmpfs_bytes,
)
from sandbox.bwrap import BubblewrapSandbox, BwrapLayout, bwrap_args, die_with_us, map_ids
from sandbox.meter import file_size_bytes
from sandbox.owner import owner_id
from sandbox.retention import OWNER_FILE
from sandbox.worker_inside import BOOT, worker_source
from sandbox.worker_process import (
    WorkerError,
    _pidfd_pid,
    _receive,
    _Shared,
    _Worker,
    python_mode,
)

STARTUP_TIMEOUT_S = 180.0
"""How long the worker may take to start and import `preload` (torch: seconds)."""
REPLY_TIMEOUT_S = 30.0
"""How long the worker may take to acknowledge a job (fork + pidfd)."""
KILL_GRACE_S = 15.0
"""After we kill a job, how long the worker may take to report it; then it is replaced."""
WORKER_TMPFS_BYTES = 64 * 1024 * 1024
"""/tmp and /dev/shm of the worker itself; every job gets fresh ones of its own."""
JOBS_MOUNT = "/jobs"


class WarmWorkerSandbox:
    """Runs each job in a fresh fork of one warm, sandboxed worker. See the module docstring.

    `preload` names the modules the worker imports before any job (they must not
    initialise CUDA at import). Job dirs go under a `warm-*` dir in `work_root`, which
    is the only host path the worker sees. Use `start()` to pay the start-up ahead of
    the first job, and `close()` (or `with`) to stop the worker.
    """

    name = "bwrap-warm"

    def __init__(
        self, work_root: Path, python: str | None = None, preload: Sequence[str] = ("torch",)
    ) -> None:
        cold = BubblewrapSandbox(work_root, python)  # bwrap binary, version, Python binds
        self.work_root = cold.work_root
        self.python = cold.python
        self.bwrap = cold.bwrap
        self.version = cold.version
        self.python_dirs = cold.python_dirs
        self.preload = tuple(preload)
        self.environment = {**cold.environment, "backend": self.name, "worker": "warm"}
        self.jobs_root: Path | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self._shared = _Shared()
        self._finalizer = weakref.finalize(self, self._shared.shutdown)

    # ------------------------------------------------------------------ lifecycle

    @property
    def worker_pid(self) -> int | None:
        """Host pid of the worker's group leader (`bwrap.die_with_us`); None when none runs."""
        worker = self._shared.worker
        return worker.proc.pid if worker is not None and worker.alive() else None

    def start(self) -> None:
        """Start the worker now (otherwise the first `run` does). Raises `WorkerError`."""
        with self._lock:
            self._ensure_worker()

    def close(self) -> None:
        """Stop the worker. A later `run` starts a new one."""
        with self._lock:
            self._shared.shutdown()

    def __enter__(self) -> WarmWorkerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_worker(self) -> _Worker:
        worker = self._shared.worker
        if worker is not None and worker.alive():
            return worker
        if worker is not None:
            worker.stop()  # reaps it
            self._shared.worker = None
        if self._shared.spawner is None:
            self._shared.spawner = ThreadPoolExecutor(1, thread_name_prefix="reprodesk-worker")
        # bwrap is started from the spawner thread: --die-with-parent follows the thread.
        worker = self._shared.spawner.submit(self._spawn).result()
        self._shared.worker = worker
        loaded = ", ".join(f"{n} {v}".strip() for n, v in worker.loaded.items())
        self.environment["preloaded"] = loaded or "nothing"
        if worker.failed:  # the jobs will import these themselves (and fail as cold jobs would)
            self.environment["preload_failed"] = "; ".join(
                f"{n}: {why}" for n, why in worker.failed.items()
            )
        else:
            self.environment.pop("preload_failed", None)
        return worker

    def _spawn(self) -> _Worker:
        if self.jobs_root is None:
            self.work_root.mkdir(parents=True, exist_ok=True)
            self.jobs_root = Path(tempfile.mkdtemp(prefix="warm-", dir=self.work_root))
            (self.jobs_root / OWNER_FILE).write_text(owner_id() + "\n", encoding="utf-8")
        as_root = os.geteuid() == 0
        devices = gpu_devices()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        passed = [theirs.fileno()]
        parent_ends: list[int] = []
        handshake: tuple[int, int] | None = None
        if as_root:
            info_read, info_write = os.pipe()
            block_read, block_write = os.pipe()
            passed += [info_write, block_read]
            parent_ends += [info_read, block_write]
            handshake = (info_write, block_read)
        argv = self._argv(handshake, passed, theirs.fileno(), self.jobs_root, devices)
        log_path = self.jobs_root / "worker.log"
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    die_with_us(self.python, self.bwrap, argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    pass_fds=passed,
                )
        except BaseException:
            ours.close()
            for fd in parent_ends:
                os.close(fd)
            raise
        finally:
            theirs.close()
            for fd in passed[1:]:
                os.close(fd)
        worker = _Worker(proc=proc, ctrl=ours, devices=devices)
        try:
            try:
                if as_root:
                    map_ids(parent_ends[0], parent_ends[1])
            finally:
                for fd in parent_ends:
                    os.close(fd)
            ready, _ = _receive(ours, STARTUP_TIMEOUT_S)
            if ready is None or not ready.get("ready"):
                raise WorkerError("the worker exited during start-up")
        except (OSError, ValueError, KeyError, WorkerError) as err:
            worker.stop()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            detail = " | ".join(tail) or str(err) or type(err).__name__
            raise WorkerError(f"the warm worker did not start: {detail}") from err
        worker.loaded, worker.failed = ready["loaded"], ready["failed"]
        return worker

    def _argv(
        self,
        handshake: tuple[int, int] | None,
        passed: list[int],
        ctrl_fd: int,
        jobs_root: Path,
        devices: list[str],
    ) -> list[str]:
        """bwrap for the worker: the cold backend's sandbox (`bwrap_args`), plus /jobs and caps."""
        layout = BwrapLayout(
            python=self.python,
            python_dirs=self.python_dirs,
            tmpfs_bytes=WORKER_TMPFS_BYTES,
            binds=[(str(jobs_root), JOBS_MOUNT)],
            devices=devices,  # every job but a GPU job has them removed again
            dirs=["/job"],
            # Inside bwrap's user namespace only: SYS_ADMIN for the per-job namespaces and
            # mounts, SETPCAP to empty the job's bounding set, SYS_RESOURCE to forbid user
            # namespaces (see worker_inside), SETUID/SETGID (as root) to become 65534.
            caps=("CAP_SYS_ADMIN", "CAP_SETPCAP", "CAP_SYS_RESOURCE"),
            uid=0,
            disable_userns=False,  # it would put the worker in a nested user namespace
            chdir="/",
        )
        command = [self.python, "-I", "-c", BOOT, worker_source()]
        command += [str(ctrl_fd), json.dumps(list(self.preload)), JOBS_MOUNT]
        return ["bwrap", *bwrap_args(layout, handshake, passed), *command]

    # ------------------------------------------------------------------ jobs

    def run(self, job: Job) -> RunResult:
        devices = gpu_devices() if job.gpu else []
        if job.gpu and not devices:
            return refused(NO_GPU_MESSAGE, backend=self.name)
        if not job.argv:
            return refused("job has an empty command", backend=self.name)
        with self._lock:
            try:
                worker = self._ensure_worker()
                if job.gpu and not worker.devices:  # a GPU appeared after the worker started
                    self._drop(worker)
                    worker = self._ensure_worker()
            except WorkerError as err:
                return self._error(str(err))
            assert self.jobs_root is not None
            try:
                jd = lay_out(job, self.jobs_root)
            except Refused as err:
                return refused(str(err), backend=self.name)
            as_root = os.geteuid() == 0
            if as_root:
                chown_tree(jd.work, JOB_UID, JOB_UID)
            self._seq += 1
            request = self._request(job, jd.root.name, as_root, worker.devices)
            return self._run(worker, job, jd, request)

    def _request(
        self, job: Job, dir_name: str, as_root: bool, devices: list[str]
    ) -> dict[str, Any]:
        limits = job.limits
        mb = 1024 * 1024
        mode, argv = python_mode(job.argv, self.python)
        return {
            "seq": self._seq,
            "dir": dir_name,
            "mode": mode,
            "argv": argv,
            "env": job_env(home="/tmp", python_bin=os.path.dirname(self.python)),
            "uid": JOB_UID if as_root else -1,
            "gpu": job.gpu,
            "devices": devices,
            "tmpfs_bytes": tmpfs_bytes(limits),
            "keep": [str(d) for d in self.python_dirs],
            "rlimits": {
                "as": -1 if job.gpu else limits.memory_mb * mb,
                "nproc": limits.processes,
                "fsize": file_size_bytes(limits),
                "core": 0,
            },
        }

    def _run(self, worker: _Worker, job: Job, jd: JobDir, request: dict[str, Any]) -> RunResult:
        limits = job.limits
        stdout = StreamCapture(limits.output_bytes, jd.stdout_log)
        stderr = StreamCapture(limits.output_bytes, jd.stderr_log)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        message = json.dumps(request).encode()
        started = time.monotonic()
        try:
            try:
                socket.send_fds(worker.ctrl, [message], [out_w, err_w])
            except OSError:
                # The worker never got the job: replace it and hand the job over again.
                self._drop(worker)
                worker = self._ensure_worker()
                started = time.monotonic()
                socket.send_fds(worker.ctrl, [message], [out_w, err_w])
            os.close(out_w)
            os.close(err_w)
            out_w = err_w = -1
            reply, fds = _receive(worker.ctrl, REPLY_TIMEOUT_S)
            if reply is None or not reply.get("started") or not fds:
                for fd in fds:
                    os.close(fd)
                self._drop(worker)
                why = (reply or {}).get("setup_error") or "the worker did not acknowledge the job"
                return self._error(f"sandbox setup failed: {why}", stdout, stderr, jd)
            for fd in fds[1:]:
                os.close(fd)
            pipes = (out_r, err_r)
            out_r = err_r = -1  # _supervise closes them
            outcome, report, died = self._supervise(
                worker,
                fds[0],
                request["seq"],
                pipes,
                (stdout, stderr),
                limits,
                Meter(limits, disk_dirs=[jd.work], tmpfs_depth=0),
                started,
            )
        except (OSError, ValueError, WorkerError) as err:
            self._drop(worker)
            return self._error(f"sandbox setup failed: {err}", stdout, stderr, jd)
        finally:
            for fd in (out_r, out_w, err_r, err_w):
                if fd >= 0:
                    os.close(fd)
            stdout.close()
            stderr.close()
        result = build_result(
            outcome, jd, limits, backend=self.name, environment=dict(self.environment)
        )
        if died:
            self._drop(worker)
            result.status = "error"
            result.message = "the sandbox worker died during the job; the next job restarts it"
        elif report.get("setup_error"):
            result.status = "error"
            result.message = f"sandbox setup failed: {report['setup_error']}"
        return result

    def _drop(self, worker: _Worker) -> None:
        """Stop a worker we no longer trust; the next job starts a new one."""
        worker.stop()
        if self._shared.worker is worker:
            self._shared.worker = None

    def _supervise(
        self,
        worker: _Worker,
        pidfd: int,
        seq: int,
        pipes: tuple[int, int],
        captures: tuple[StreamCapture, StreamCapture],
        limits: Limits,
        meter: Meter,
        started: float,
    ) -> tuple[Outcome, dict[str, Any], bool]:
        """`base.supervise` for a job that is not our child: the pidfd kills, the worker reports.

        Returns the outcome, the worker's report and whether the worker died meanwhile.
        Closes `pidfd` and the pipes (stdout, stderr).
        """
        out_r, err_r = pipes
        stdout, stderr = captures
        host_pid = _pidfd_pid(pidfd)
        sel = selectors.DefaultSelector()
        sel.register(out_r, selectors.EVENT_READ, stdout)
        sel.register(err_r, selectors.EVENT_READ, stderr)
        sel.register(worker.ctrl, selectors.EVENT_READ, None)
        deadline = started + limits.wall_s
        next_sample = time.monotonic() + WATCHDOG_EVERY_S
        give_up = float("inf")  # after our kill, the worker must report by then
        timed_out = killed_for_limit = exited = died = False
        drain_until = ended = 0.0
        report: dict[str, Any] = {}

        def kill() -> None:
            nonlocal give_up
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            give_up = min(give_up, time.monotonic() + KILL_GRACE_S)

        try:
            while True:
                now = time.monotonic()
                if exited and (len(sel.get_map()) == 0 or now >= drain_until):
                    break
                if not exited and now >= deadline:
                    timed_out = True
                    kill()
                    deadline = float("inf")
                if not exited and now >= give_up:
                    self._drop(worker)  # unresponsive: it and the job go
                    died, exited, ended = True, True, now
                    drain_until = now + DRAIN_GRACE_S
                    with contextlib.suppress(KeyError):
                        sel.unregister(worker.ctrl)
                    continue
                if not exited and now >= next_sample and host_pid > 0:
                    if meter.sample(host_pid) and not killed_for_limit:
                        killed_for_limit = True
                        kill()
                    next_sample = time.monotonic() + WATCHDOG_EVERY_S
                wake = drain_until if exited else min(deadline, next_sample, give_up)
                for key, _ in sel.select(timeout=max(0.0, wake - now)):
                    if key.data is None:
                        sel.unregister(worker.ctrl)
                        exited, ended = True, time.monotonic()
                        drain_until = ended + DRAIN_GRACE_S
                        try:
                            data = worker.ctrl.recv(1 << 16)
                        except OSError:
                            data = b""
                        if not data:
                            died = True
                            continue
                        report = json.loads(data)
                        if report.get("seq") != seq:
                            raise WorkerError(f"the worker answered job {report.get('seq')}")
                        continue
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        key.data.feed(chunk)
                    else:
                        sel.unregister(key.fd)
        finally:
            sel.close()
            os.close(pidfd)
            os.close(out_r)
            os.close(err_r)
        status = report.get("status")
        if status is not None:
            returncode = os.waitstatus_to_exitcode(int(status))
        else:
            returncode = -signal.SIGKILL if (died or timed_out or killed_for_limit) else 1
        outcome = metered_outcome(
            meter,
            returncode=returncode,
            timed_out=timed_out,
            duration_s=(ended or time.monotonic()) - started,
            maxrss_kb=int(report.get("maxrss_kb") or 0),
            stdout=stdout,
            stderr=stderr,
        )
        return outcome, report, died

    def _error(
        self,
        message: str,
        stdout: StreamCapture | None = None,
        stderr: StreamCapture | None = None,
        jd: JobDir | None = None,
    ) -> RunResult:
        return RunResult(
            workdir=str(jd.root) if jd is not None else "",
            status="error",
            message=message,
            stdout=stdout.text() if stdout is not None else "",
            stderr=stderr.text() if stderr is not None else "",
            backend=self.name,
            environment=dict(self.environment),
        )


__all__ = ["WarmWorkerSandbox", "WorkerError", "python_mode", "worker_source"]
