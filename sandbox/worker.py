"""Warm-worker bubblewrap backend: one sandboxed Python with torch imported, a fresh fork per job.

`import torch` costs over a second, paid by every job under `BubblewrapSandbox`.
`WarmWorkerSandbox` starts ONE worker under bubblewrap (the same namespaces, binds,
uid map and environment as `bwrap.py`), imports torch there once, and runs each job
in a freshly forked child of it. A job's files never pass through the worker: the
host lays them out as usual, under a jobs root that the worker has bound at /jobs.

How one job runs (inside the worker's sandbox):

    worker (ns root)  --unshare(PID), fork-->  init (pid 1 of a new pid namespace)
        init: new mount + IPC namespaces; binds /jobs/<its dir>/job on /job, removes
              /jobs, mounts a new /proc and fresh tmpfs /tmp and /dev/shm
        init  --fork-->  job (pid 2): setsid, uid 65534, no capabilities, rlimits,
              runs `script.py` as __main__ with runpy (torch is already in sys.modules)

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
  RLIMIT_AS / NPROC / FSIZE / CORE=0 in the job process, the RSS watchdog for GPU
  jobs, head+tail output capture, the metrics line, artifacts under out/.
- Capabilities: the worker keeps CAP_SYS_ADMIN (per-job namespaces and mounts),
  CAP_SETPCAP, CAP_SYS_RESOURCE and, as root, CAP_SETUID/CAP_SETGID, all inside
  bwrap's user namespace only. The job drops its bounding, ambient and inheritable
  sets, switches to uid 65534 (as root) and keeps no_new_privs from bwrap.
- No nested user namespaces for jobs, as root too (cold bwrap allows them as root):
  each job's init sets user.max_user_namespaces to 0 in the worker's user namespace,
  which is what bwrap's --disable-userns does, and which a job cannot raise. (bwrap's
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

import atexit
import contextlib
import ctypes
import gc
import importlib
import inspect
import io
import json
import os
import re
import resource
import runpy
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from reprodesk.schemas import Job, Limits, RunResult
from sandbox.base import (
    DRAIN_GRACE_S,
    JOB_UID,
    NO_GPU_MESSAGE,
    PYTHON_NAMES,
    SAMPLE_EVERY_S,
    WATCHDOG_EVERY_S,
    JobDir,
    Outcome,
    Refused,
    StreamCapture,
    build_result,
    chown_tree,
    gpu_devices,
    job_env,
    lay_out,
    refused,
    tree_rss_mb,
)
from sandbox.bwrap import (
    ETC_FILES,
    GROUP,
    PASSWD,
    ROOT_LINKS,
    SYSTEM_DIRS,
    BubblewrapSandbox,
    _Args,
    _data_fd,
    _map_ids,
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
WORKER_FILE = "<reprodesk-worker>"
"""Filename the worker's code is compiled under (tracebacks drop these frames)."""


class WorkerError(Exception):
    """The worker could not be started or stopped answering."""


# =========================================================================== in the sandbox
# Everything from here to `worker_source` runs INSIDE the sandbox, in the worker and
# its forks: standard library only, no project imports. It is shipped by source
# (see `worker_source`), so it is linted and type-checked like the rest of the file.


class _Kernel:
    """The Linux calls the worker needs that Python 3.11's `os` lacks, via libc."""

    CLONE_NEWNS = 0x00020000
    CLONE_NEWIPC = 0x08000000
    CLONE_NEWPID = 0x20000000
    MS_RDONLY = 1
    MS_NOSUID = 2
    MS_NODEV = 4
    MS_NOEXEC = 8
    MS_REMOUNT = 32
    MS_BIND = 4096
    MS_REC = 16384
    MS_MOVE = 8192
    MS_PRIVATE = 1 << 18
    MNT_DETACH = 2
    PR_SET_DUMPABLE = 4
    PR_CAPBSET_DROP = 24
    PR_SET_SECUREBITS = 28
    PR_CAP_AMBIENT = 47
    PR_CAP_AMBIENT_CLEAR_ALL = 4
    # SECBIT_NOROOT | _LOCKED, NO_SETUID_FIXUP | _LOCKED, KEEP_CAPS_LOCKED
    SECBITS_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
    CAP_VERSION_3 = 0x20080522

    _libc: Any = None

    @classmethod
    def libc(cls) -> Any:
        if cls._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mount.argtypes = [
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.c_ulong,
                ctypes.c_char_p,
            ]
            libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
            libc.unshare.argtypes = [ctypes.c_int]
            libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
            cls._libc = libc
        return cls._libc

    @staticmethod
    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    @classmethod
    def unshare(cls, flags: int) -> None:
        cls.check(cls.libc().unshare(flags), "unshare")

    @classmethod
    def setns(cls, fd: int, nstype: int) -> None:
        cls.check(cls.libc().setns(fd, nstype), "setns")

    @classmethod
    def mount(
        cls, source: str | None, target: str, fstype: str | None, flags: int, data: str = ""
    ) -> None:
        enc = [None if s is None else s.encode() for s in (source, target, fstype)]
        cls.check(
            cls.libc().mount(enc[0], enc[1], enc[2], flags, data.encode() or None),
            f"mount {target}",
        )

    @classmethod
    def umount(cls, target: str) -> bool:
        """Detach `target`; False when the kernel refuses (a mount locked by bwrap's userns)."""
        return cls.libc().umount2(target.encode(), cls.MNT_DETACH) == 0

    @classmethod
    def prctl(cls, option: int, arg: int = 0) -> int:
        return int(cls.libc().prctl(option, arg, 0, 0, 0))

    @classmethod
    def clear_capabilities(cls) -> None:
        """Empty the effective, permitted and inheritable sets (capset(2), v3)."""
        header = (ctypes.c_uint32 * 2)(cls.CAP_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}
        cls.check(cls.libc().capset(header, data), "capset")


def _w_main() -> None:
    """The worker: import `preload`, say ready, then serve one job per request."""
    ctrl_fd, preload, jobs = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    sys.dont_write_bytecode = True  # -I ignores PYTHONDONTWRITEBYTECODE
    ctrl = socket.socket(fileno=ctrl_fd)
    loaded: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in preload:
        try:
            module = importlib.import_module(name)
            loaded[name] = str(getattr(module, "__version__", ""))
        except Exception as err:
            failed[name] = f"{type(err).__name__}: {err}"
    # Keep the preloaded heap out of the children's garbage collections: fewer pages
    # copied on write, faster jobs.
    gc.collect()
    gc.freeze()
    ctrl.send(json.dumps({"ready": True, "loaded": loaded, "failed": failed}).encode())
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctrl, 1 << 16, 4)
        except OSError:
            return
        if not data:
            return  # the host closed the channel
        request = json.loads(data)
        report_r, report_w = os.pipe()
        reply: dict[str, Any] = {"seq": request["seq"]}
        pid = 0
        try:
            # The next child becomes pid 1 of a new pid namespace; setns restores ours
            # for the children after it (unshare(CLONE_NEWPID) works once per process).
            _Kernel.unshare(_Kernel.CLONE_NEWPID)
            try:
                pid = os.fork()
                if pid == 0:
                    try:
                        os.close(report_r)
                        os.close(own_pid_ns)
                        os.close(ctrl.detach())
                        _w_init(request, fds[0], fds[1], report_w, jobs)
                    finally:
                        os._exit(125)
            finally:
                try:
                    _Kernel.setns(own_pid_ns, _Kernel.CLONE_NEWPID)
                except OSError:
                    os._exit(70)  # no more jobs possible here: the host starts a new worker
        except OSError as err:
            reply["setup_error"] = f"cannot start the job: {err}"
        for fd in (*fds, report_w):
            os.close(fd)
        if pid:
            pidfd = os.pidfd_open(pid)
            socket.send_fds(ctrl, [json.dumps({**reply, "started": True}).encode()], [pidfd])
            os.close(pidfd)
            _, status, usage = os.wait4(pid, 0)
            reply["status"] = status
            reply["maxrss_kb"] = usage.ru_maxrss
        with os.fdopen(report_r, "rb") as report:
            for line in report.read().splitlines():
                reply.update(json.loads(line))  # the init's (and the job's setup) report
        ctrl.send(json.dumps(reply).encode())


def _w_init(request: dict[str, Any], out_fd: int, err_fd: int, report_w: int, jobs: str) -> None:
    """Pid 1 of the job's pid namespace: set up its mounts, run the job, reap, report."""
    report: dict[str, Any]
    try:
        _w_enter_job_namespaces(request, jobs)
        pid = os.fork()
        if pid == 0:
            try:
                _w_job(request, out_fd, err_fd, report_w)
            finally:
                os._exit(126)
        os.close(out_fd)
        os.close(err_fd)
        while True:  # as init we also reap the job's orphans
            try:
                child, status, usage = os.wait4(-1, 0)
            except InterruptedError:
                continue
            if child == pid:
                break
        report = {"status": status, "maxrss_kb": usage.ru_maxrss}
    except BaseException as err:
        report = {"setup_error": f"{type(err).__name__}: {err}"}
    os.write(report_w, json.dumps(report).encode() + b"\n")
    # Exiting as init kills whatever the job left behind in its pid namespace.


def _w_enter_job_namespaces(request: dict[str, Any], jobs: str) -> None:
    """New mount and IPC namespaces where /job is this job's dir and nothing else is shared."""
    k = _Kernel
    name = str(request["dir"])
    if not re.fullmatch(r"job-[A-Za-z0-9_]+", name):
        raise ValueError(f"bad job dir name {name!r}")
    k.unshare(k.CLONE_NEWNS | k.CLONE_NEWIPC)
    k.mount(None, "/", None, k.MS_REC | k.MS_PRIVATE)  # nothing propagates back to the worker
    k.mount(f"{jobs}/{name}/job", "/job", None, k.MS_BIND | k.MS_REC)
    if not k.umount(jobs):  # locked (not root): cover it instead
        k.mount("tmpfs", jobs, "tmpfs", k.MS_RDONLY | k.MS_NOSUID | k.MS_NODEV, "size=4k,mode=0")
    # A /proc of the job's own pid namespace, with bwrap's read-only covers.
    nosuid = k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC
    # Covers the worker's /proc (unmounting it first is refused: the kernel wants a
    # fully visible procfs before it mounts another in a user namespace).
    k.mount("proc", "/proc", "proc", nosuid)
    # No user namespaces for the job (bwrap's --disable-userns does the same, but it
    # cannot be combined with our uid map, nor with a worker that must setns): the
    # limit is per user namespace, ours, and the job cannot raise it.
    with open("/proc/sys/user/max_user_namespaces", "w") as limit:
        limit.write("0")
    for sub in ("sys", "sysrq-trigger", "irq", "bus"):
        path = f"/proc/{sub}"
        if os.path.exists(path):
            k.mount(path, path, None, k.MS_BIND | k.MS_REC)
            k.mount(None, path, None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | nosuid)
    for path in ("/tmp", "/dev/shm"):
        # A Python install bound under /tmp (a clone or a venv there) must stay visible
        # through the job's fresh tmpfs: park it on a staging mount point in /dev (a
        # tmpfs of ours), cover /tmp, then move it back and make it read-only.
        keep = [d for d in request["keep"] if d == path or d.startswith(path + "/")]
        staged = []
        for i, d in enumerate(keep):
            stage = f"/dev/.reprodesk-keep-{i}"
            os.makedirs(stage, exist_ok=True)
            k.mount(d, stage, None, k.MS_BIND | k.MS_REC)
            staged.append((d, stage))
        k.umount(path)  # when locked, the fresh tmpfs simply covers it
        size = int(request["tmpfs_bytes"])
        k.mount("tmpfs", path, "tmpfs", k.MS_NOSUID | k.MS_NODEV, f"mode=1777,size={size}")
        for d, stage in staged:
            os.makedirs(d, exist_ok=True)
            k.mount(stage, d, None, k.MS_MOVE)
            os.rmdir(stage)
            k.mount(
                None, d, None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | k.MS_NOSUID | k.MS_NODEV
            )
    if not request["gpu"]:
        for device in request["devices"]:
            if not k.umount(device):
                k.mount("/dev/null", device, None, k.MS_BIND)


def _w_job(request: dict[str, Any], out_fd: int, err_fd: int, report_w: int) -> NoReturn:
    """The job process: drop everything, set the limits, run the command."""
    limits = request["rlimits"]
    try:
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDONLY)
        for fd, target in ((devnull, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(fd, target)
        os.closerange(3, report_w)
        os.closerange(report_w + 1, 1 << 20)
        os.chdir("/job")
        os.environ.clear()
        os.environ.update(request["env"])
        _w_drop_privileges(int(request["uid"]))
        for rlimit, key in (
            (resource.RLIMIT_NPROC, "nproc"),
            (resource.RLIMIT_FSIZE, "fsize"),
            (resource.RLIMIT_CORE, "core"),
        ):
            if limits[key] >= 0:
                resource.setrlimit(rlimit, (limits[key], limits[key]))
        # Unbuffered text streams on the job's pipes, as PYTHONUNBUFFERED gives.
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = _w_text_stream(1, "strict")
        sys.stderr = _w_text_stream(2, "backslashreplace")
        for name in ("stdin", "stdout", "stderr"):
            setattr(sys, f"__{name}__", getattr(sys, name))
        for module_name in ("random", "numpy.random"):  # forks share the worker's RNG state
            module = sys.modules.get(module_name)
            if module is not None:
                module.seed()
    except BaseException as err:
        message = {"setup_error": f"{type(err).__name__}: {err}"}
        os.write(report_w, json.dumps(message).encode() + b"\n")
        os._exit(126)
    os.close(report_w)
    address_space = int(limits["as"])
    if address_space >= 0:
        with open("/proc/self/statm") as statm:
            baseline = os.sysconf("SC_PAGE_SIZE") * int(statm.read().split()[0])
        if baseline >= address_space:
            sys.stderr.write(
                f"MemoryError: the memory limit ({address_space >> 20} MB) is below the "
                f"address space every job of the warm worker starts with ({baseline >> 20} MB: "
                "Python and the preloaded modules); raise the limit or use the cold backend\n"
            )
            os._exit(1)
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    mode, argv = request["mode"], request["argv"]
    if mode == "exec":
        try:
            os.execvp(argv[0], argv)
        except OSError as err:
            sys.stderr.write(f"sandbox: cannot run {argv[0]!r}: {err.strerror}\n")
            os._exit(127)
    os._exit(_w_run_python(mode, argv))


def _w_drop_privileges(uid: int) -> None:
    """No capabilities left, now or after an exec; uid 65534 where we can switch to it."""
    k = _Kernel
    k.check(k.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_CLEAR_ALL), "clear ambient caps")
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last = int(fh.read())
    for cap in range(last + 1):
        k.check(k.prctl(k.PR_CAPBSET_DROP, cap), f"drop capability {cap} from the bounding set")
    if uid >= 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    else:  # we stay ns uid 0: an exec must not give root's capabilities back
        k.check(k.prctl(k.PR_SET_SECUREBITS, k.SECBITS_NOROOT), "set securebits")
    k.clear_capabilities()
    # setuid made us non-dumpable, which would leave /proc/self owned by root (an exec
    # would have reset it): the job must be able to read its own /proc entries.
    k.check(k.prctl(k.PR_SET_DUMPABLE, 1), "set dumpable")


def _w_text_stream(fd: int, errors: str) -> Any:
    raw = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", errors=errors, write_through=True)


def _w_run_python(mode: str, argv: list[str]) -> int:
    """Run `python script.py ...` (or -m / -c) in this process, as Python would; exit code."""
    try:
        if mode == "module":
            sys.argv = list(argv)
            sys.path.insert(0, os.getcwd())
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        elif mode == "code":
            sys.argv = ["-c", *argv[1:]]
            sys.path.insert(0, "")
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(argv[0], "<string>", "exec"), main.__dict__)
        else:
            path = os.path.abspath(argv[0])
            sys.argv = list(argv)
            sys.path.insert(0, os.path.dirname(path))
            runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _w_exit_code(exc)
    except BaseException as exc:
        ours = (WORKER_FILE, runpy.run_path.__code__.co_filename)  # "<frozen runpy>"
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in ours:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        code = 1
    # What interpreter shutdown would do: wait for non-daemon threads, run atexit.
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code


def _w_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    with contextlib.suppress(BaseException):
        print(exc.code, file=sys.stderr)
    return 1


_SHIPPED = (
    _Kernel,
    _w_main,
    _w_init,
    _w_enter_job_namespaces,
    _w_job,
    _w_drop_privileges,
    _w_text_stream,
    _w_run_python,
    _w_exit_code,
)
_PRELUDE = (
    "from __future__ import annotations\n"
    "import atexit, contextlib, ctypes, gc, importlib, io, json, os, re, resource\n"
    "import runpy, socket, sys, threading, types\n"
    "from typing import Any, NoReturn\n"
    f"WORKER_FILE = {WORKER_FILE!r}\n"
)
BOOT = f"import sys; exec(compile(sys.argv.pop(1), {WORKER_FILE!r}, 'exec'))"
"""`python -I -c BOOT SOURCE CTRL_FD PRELOAD_JSON JOBS_MOUNT`: compile SOURCE as the worker."""

DIE_WITH_US = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL; kept across exec\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)  # the host died before the line above\n"
    "os.execv(sys.argv[2], sys.argv[3:])\n"
)
"""`python -I -S -c DIE_WITH_US HOST_PID BWRAP ARGV...`: bwrap itself dies with our thread.

bwrap's --die-with-parent covers the sandbox's processes, not bwrap's own monitor
process: a host killed during the uid-map handshake (root) leaves that monitor
blocked forever (seen with `BubblewrapSandbox` as well).
"""


@cache
def worker_source() -> str:
    """The code the worker runs: the functions above, by source, and a call to `_w_main`."""
    parts = [_PRELUDE]
    parts += [textwrap.dedent(inspect.getsource(obj)) for obj in _SHIPPED]
    parts.append("_w_main()\n")
    return "\n\n".join(parts)


# =========================================================================== on the host


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
        """Host pid of the worker's bwrap process, None when no worker is running."""
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
        helper = [self.python, "-I", "-S", "-c", DIE_WITH_US, str(os.getpid()), self.bwrap]
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [*helper, *argv],
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
                    _map_ids(parent_ends[0], parent_ends[1])
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
        """bwrap for the worker: `BubblewrapSandbox._argv`'s sandbox, plus /jobs and caps."""
        args = _Args()
        args.add("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session")
        args.add("--cap-drop", "ALL", "--hostname", "sandbox")
        # Inside bwrap's user namespace only: SYS_ADMIN for the per-job namespaces and
        # mounts, SETPCAP to empty the job's bounding set, SYS_RESOURCE to forbid user
        # namespaces (see _w_enter_job_namespaces), SETUID/SETGID to become 65534.
        for cap in ("CAP_SYS_ADMIN", "CAP_SETPCAP", "CAP_SYS_RESOURCE"):
            args.add("--cap-add", cap)
        if handshake is not None:
            info_fd, block_fd = handshake
            args.add("--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID")
            args.add("--info-fd", str(info_fd), "--userns-block-fd", str(block_fd))
        else:
            args.add("--uid", "0", "--gid", "0")
        args.add("--clearenv")
        for key, value in job_env(home="/tmp", python_bin=os.path.dirname(self.python)).items():
            args.add("--setenv", key, value)
        for d in SYSTEM_DIRS:
            args.mount("--ro-bind", d, d)
        for link in ROOT_LINKS:
            if os.path.islink(link):
                args.mount("--symlink", os.readlink(link), link)
            elif os.path.isdir(link):
                args.mount("--ro-bind", link, link)
        for name in ETC_FILES:
            if os.path.exists(f"/etc/{name}"):
                args.mount("--ro-bind", f"/etc/{name}", f"/etc/{name}")
        for dest, text in (("/etc/passwd", PASSWD), ("/etc/group", GROUP)):
            fd = _data_fd(text)
            passed.append(fd)
            args.mount("--ro-bind-data", str(fd), dest)
        size = str(WORKER_TMPFS_BYTES)
        args.mount("--proc", "/proc")
        args.mount("--dev", "/dev")
        args.mount("--perms", "1777", "--size", size, "--tmpfs", "/dev/shm")
        args.mount("--perms", "1777", "--size", size, "--tmpfs", "/tmp")
        for device in devices:  # every job but a GPU job has them removed again
            args.mount("--dev-bind", device, device)
        for d in self.python_dirs:
            args.mount("--ro-bind", d, d)
        args.mount("--bind", str(jobs_root), JOBS_MOUNT)
        args.mount("--perms", "0755", "--dir", "/job")
        args.add("--remount-ro", "/", "--chdir", "/", "--")
        command = [self.python, "-I", "-c", BOOT, worker_source()]
        command += [str(ctrl_fd), json.dumps(list(self.preload)), JOBS_MOUNT]
        return ["bwrap", *args.argv, *command]

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
            "tmpfs_bytes": limits.memory_mb * mb,
            "keep": [str(d) for d in self.python_dirs],
            "rlimits": {
                "as": -1 if job.gpu else limits.memory_mb * mb,
                "nproc": limits.processes,
                "fsize": limits.file_size_mb * mb,
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
                return self._error(f"sandbox setup failed: {why}", stdout, stderr)
            for fd in fds[1:]:
                os.close(fd)
            pipes = (out_r, err_r)
            out_r = err_r = -1  # _supervise closes them
            outcome, report, died = self._supervise(
                worker, fds[0], request["seq"], pipes, (stdout, stderr), limits, job.gpu, started
            )
        except (OSError, ValueError, WorkerError) as err:
            self._drop(worker)
            return self._error(f"sandbox setup failed: {err}", stdout, stderr)
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
        gpu: bool,
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
        rss_limit = limits.memory_mb if gpu else None
        every = WATCHDOG_EVERY_S if rss_limit is not None else SAMPLE_EVERY_S
        next_sample = time.monotonic() + every
        give_up = float("inf")  # after our kill, the worker must report by then
        timed_out = oom_killed = exited = died = False
        drain_until = ended = sampled_peak = 0.0
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
                    rss = tree_rss_mb(host_pid)
                    sampled_peak = max(sampled_peak, rss)
                    if rss_limit is not None and rss > rss_limit:
                        oom_killed = True
                        kill()
                    next_sample = now + every
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
            returncode = -signal.SIGKILL if (died or timed_out or oom_killed) else 1
        peak = max(int(report.get("maxrss_kb") or 0) / 1024, sampled_peak)
        outcome = Outcome(
            returncode=returncode,
            timed_out=timed_out,
            oom_killed=oom_killed,
            duration_s=round((ended or time.monotonic()) - started, 3),
            peak_memory_mb=round(peak, 1) if peak > 0 else None,
            stdout=stdout,
            stderr=stderr,
        )
        return outcome, report, died

    def _error(
        self,
        message: str,
        stdout: StreamCapture | None = None,
        stderr: StreamCapture | None = None,
    ) -> RunResult:
        return RunResult(
            status="error",
            message=message,
            stdout=stdout.text() if stdout is not None else "",
            stderr=stderr.text() if stderr is not None else "",
            backend=self.name,
            environment=dict(self.environment),
        )


def _receive(sock: socket.socket, timeout: float) -> tuple[dict[str, Any] | None, list[int]]:
    """One message from the worker (None at EOF) and the fds it carried."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        raise WorkerError(f"no answer from the worker within {timeout:g} s")
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
    return (json.loads(data) if data else None), list(fds)


__all__ = ["WarmWorkerSandbox", "WorkerError", "python_mode", "worker_source"]
