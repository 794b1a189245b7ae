"""The warm worker's code that runs INSIDE the sandbox: the worker, each job's init, the job.

Standard library only, no project imports: `worker_source` ships these functions by
source into the sandbox (`python -I -c BOOT SOURCE ...`), where they run with a prelude
of imports; they are linted and type-checked here like any other module. The host side
(starting the worker, handing it jobs, supervising them) is `sandbox.worker`; what the
whole backend covers is said there.

How one job runs:

    worker (ns root)  --unshare(PID), fork-->  init (pid 1 of a new pid namespace)
        init: new mount + IPC namespaces; binds /jobs/<its dir>/job on /job, removes
              /jobs, mounts a new /proc and fresh tmpfs /tmp and /dev/shm
        init  --fork-->  job (pid 2): setsid, uid 65534, no capabilities, rlimits,
              runs `script.py` as __main__ with runpy (torch is already in sys.modules)
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
import socket
import sys
import textwrap
import threading
import types
from functools import cache
from typing import Any, NoReturn

WORKER_FILE = "<reprodesk-worker>"
"""Filename the worker's code is compiled under (tracebacks drop these frames)."""


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


@cache
def worker_source() -> str:
    """The code the worker runs: the functions above, by source, and a call to `_w_main`."""
    parts = [_PRELUDE]
    parts += [textwrap.dedent(inspect.getsource(obj)) for obj in _SHIPPED]
    parts.append("_w_main()\n")
    return "\n\n".join(parts)
