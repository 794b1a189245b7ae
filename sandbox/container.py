"""Docker backend: the strongest isolation here, and the way to a GPU, local or rented.

One container per job, from the image `sandbox/Dockerfile` builds, through the Docker
SDK (`docker.from_env()`, so a `DOCKER_HOST` pointing at a rented cloud GPU machine
works unchanged). The container's whole specification is built by the pure function
`container_spec`, which the unit tests check flag by flag.

What it covers:

- Network: network mode "none": the job sees only `lo`, and the host's 127.0.0.1 is
  another namespace's loopback, out of reach.
- Filesystem: the image's root is read-only; /tmp and /dev/shm are private tmpfs mounts
  (sized to the memory limit, and charged to it); the job's files are mounted read-only
  at /job and only /job/out is writable. Nothing else of the host is visible: not the
  home dir, not the host's Python.
- Identity: uid/gid 65534, every capability dropped, no-new-privileges, Docker's
  default seccomp profile; with `runtime="runsc"` (gVisor) a user-space kernel as well.
  The engine must know runsc; in daemon.json (reloaded on SIGHUP):
  `{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}}`
  (Debian's runsc 20221219 refuses Docker's "none" network without --network=none).
- Limits (cgroups, so they hold for GPU jobs too): memory with memory+swap equal (no
  swap), a pids limit (processes and threads), a CPU quota, RLIMIT_FSIZE and
  RLIMIT_NOFILE, no core dumps. The wall time is ours: `wait` with a timeout only ends
  the HTTP request (NOTES), so on timeout the container is killed.
- Environment: exactly the allow-list of `base.job_env`; nothing from the host's env.
- Lifetime: an init process (docker-init) reaps zombies; every container is removed
  after its job, whatever happened. Containers and volumes carry labels naming their
  owner (host, pid, process start time): a new `DockerSandbox` removes those whose
  owner on this host is dead, e.g. after a crash.
- Status: as `base.decide_status`, with the OOM killer's verdict from the container
  state (`OOMKilled`, and a non-zero exit) as the "oom" signal. Exit codes 129..192 are
  reported as signals (docker-init reports a child killed by signal N as 128 + N), as
  under bwrap.
- Output: head+tail of stdout/stderr (attached before start, so nothing is missed),
  the full logs capped next to the job dir; the engine keeps no log (log driver none).
- GPU: a job with `gpu=True` gets a device request for all GPUs, or for the device ids
  given; on an engine without NVIDIA's container toolkit the job is refused.

Files: with a local engine (a unix socket) the job dir is bind-mounted; with a remote
one the paths of this machine mean nothing there, so the files are copied into two
volumes (source, read-only for the job; out, writable) and out/ is copied back after
the job ("copy" transfer). Both keep the artifacts contract of `base.collect_artifacts`.
A unix socket forwarded from another machine looks local: pass transfer="copy" then.

What it does not cover:

- Disk: RLIMIT_FSIZE caps each file, not the sum a job writes under out/.
- The kernel is the host's (runc): a kernel bug is an escape. Use gVisor for hostile code.
- Peak memory is sampled from the engine's stats about twice a second (RSS without
  page cache); a spike between samples is missed, and a job shorter than about a
  second may have no sample at all (peak None).
- GPU device requests were written on a machine with no GPU: only their shape is
  tested (and the refusal by an engine without the toolkit).
- The engine itself: whoever can reach the Docker socket is root on the engine's host.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

import docker
import docker.errors
import requests
import structlog
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from reprodesk.schemas import Job, RunResult, UserError
from sandbox.base import (
    JOB_UID,
    MAX_ARTIFACT_BYTES,
    MAX_ARTIFACTS,
    MAX_ARTIFACTS_TOTAL_BYTES,
    NO_GPU_MESSAGE,
    PYTHON_NAMES,
    JobDir,
    Outcome,
    Refused,
    StreamCapture,
    build_result,
    check_relpath,
    chown_tree,
    job_env,
    lay_out,
    refused,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_IMAGE = "reprodesk-sandbox:latest"
"""What `reprodesk sandbox build` and docker compose tag; scripts/docker-engine.sh builds :test."""
DOCKERFILE = Path(__file__).with_name("Dockerfile")
IMAGE_PYTHON = "/opt/venv/bin/python"
"""The image's interpreter (see the Dockerfile): what a job's `python` means."""
JOB_MOUNT = "/job"
OUT_MOUNT = "/job/out"

LABEL = "reprodesk.sandbox"
"""On every container and volume this backend creates; value: what it is."""
OWNER_LABEL = "reprodesk.owner"
"""host:pid:start-time of the process that created it, for the leftover sweep."""
DOCKERFILE_LABEL = "reprodesk.dockerfile"
"""On built images: a hash of the Dockerfile they were built from."""

NOFILE = 4096
"""RLIMIT_NOFILE: DataLoader workers pass tensors through file descriptors."""
WAIT_CHUNK_S = 60.0
"""Longest single `wait` request; a long job is waited for in chunks (proxies cut idle HTTP)."""
KILL_WAIT_S = 15.0
DRAIN_GRACE_S = 2.0
STATS_EVERY_S = 0.5
ENGINE_TIMEOUT_S = 30
PROBE_TIMEOUT_S = 3
RETRY_ATTEMPTS = 4
PERMANENT_MARKERS = (
    "could not select device driver",
    "unknown runtime",
    "no such image",
    "no such container",
    "executable file not found",
)
"""Engine answers that no retry will change (a 500 for some of them)."""

Transfer = Literal["bind", "copy"]


class DockerError(UserError):
    """The Docker engine, not the job, failed: unreachable, missing image, bad setup.

    Raised rather than returned as a job result, so that no one "repairs" the job's
    code for it; the ledger sees the job as unfinished and a resumed run runs it again.
    """


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class DockerSettings:
    """What a `DockerSandbox` holds fixed for all its jobs."""

    image: str = DEFAULT_IMAGE
    runtime: str | None = None
    """OCI runtime, e.g. "runsc" (gVisor); None is the engine's default (runc)."""
    gpus: tuple[str, ...] | None = None
    """Device ids a GPU job gets; None: all GPUs of the engine's machine."""
    cpus: float = 1.0
    """CPU quota in CPUs; also the thread count the job is told to use."""
    owner: str = "unknown"
    nofile: int = NOFILE


@dataclass(frozen=True)
class JobMounts:
    """Where the job's files come from: host paths ("bind") or volume names ("volume")."""

    type: Literal["bind", "volume"]
    source: str
    out: str


def job_command(argv: Sequence[str]) -> list[str]:
    """The job's argv with a leading `python`/`python3` meaning the image's interpreter."""
    return [IMAGE_PYTHON if i == 0 and a in PYTHON_NAMES else a for i, a in enumerate(argv)]


def container_env(cpus: float) -> dict[str, str]:
    """The whole environment of a job container: `base.job_env`, threads from the quota."""
    env = job_env(home="/tmp", python_bin=os.path.dirname(IMAGE_PYTHON))
    threads = str(max(1, math.ceil(cpus)))
    env["OMP_NUM_THREADS"] = threads
    env["MKL_NUM_THREADS"] = threads
    return env


def device_requests(gpus: tuple[str, ...] | None) -> list[DeviceRequest]:
    """`--gpus all` or `--gpus device=ID,...` as the API expresses it."""
    if gpus is None:
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]


def container_spec(
    job: Job, settings: DockerSettings, *, name: str, mounts: JobMounts
) -> dict[str, Any]:
    """Keyword arguments for `client.containers.create` that run `job`. Pure.

    Every isolation flag is here, so a unit test can read it without an engine.
    """
    limits = job.limits
    mb = 1024 * 1024
    memory = limits.memory_mb * mb
    file_size = limits.file_size_mb * mb
    volume = mounts.type == "volume"
    spec: dict[str, Any] = {
        "image": settings.image,
        "name": name,
        # The entrypoint, not the command: no image entrypoint or shell comes in between.
        "entrypoint": job_command(job.argv),
        "working_dir": JOB_MOUNT,
        "user": f"{JOB_UID}:{JOB_UID}",
        "environment": container_env(settings.cpus),
        "labels": {LABEL: "job", OWNER_LABEL: settings.owner},
        "hostname": "sandbox",
        "network_mode": "none",
        "read_only": True,
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "init": True,
        "ipc_mode": "private",
        "cgroupns": "private",
        "pids_limit": limits.processes,
        "mem_limit": memory,
        "memswap_limit": memory,  # equal: no swap
        "nano_cpus": int(settings.cpus * 1e9),
        # tmpfs pages are charged to the memory limit, so sizing them to it is safe.
        "shm_size": memory,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.memory_mb}m,mode=1777"},
        "ulimits": [
            Ulimit(name="fsize", soft=file_size, hard=file_size),
            Ulimit(name="nofile", soft=settings.nofile, hard=settings.nofile),
            Ulimit(name="core", soft=0, hard=0),
        ],
        # /job/out is mounted over the read-only /job: the only place the job can write
        # that outlives it. no_copy: a volume starts as we filled it, not from the image.
        "mounts": [
            Mount(JOB_MOUNT, mounts.source, type=mounts.type, read_only=True, no_copy=volume),
            Mount(OUT_MOUNT, mounts.out, type=mounts.type, read_only=False, no_copy=volume),
        ],
        # We read the output live through attach; the engine keeps no copy on its disk.
        "log_config": LogConfig(type="none"),
        "stdin_open": False,
        "tty": False,
    }
    if settings.runtime:
        spec["runtime"] = settings.runtime
    if job.gpu:
        spec["device_requests"] = device_requests(settings.gpus)
    return spec


# --------------------------------------------------------------------------- engine


def _transient(err: BaseException) -> bool:
    """An infrastructure hiccup worth retrying: a dropped connection or a 5xx."""
    if isinstance(err, docker.errors.APIError):
        text = str(err.explanation or err).lower()
        code = err.status_code or 0
        return code >= 500 and not any(m in text for m in PERMANENT_MARKERS)
    return isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout)


def _infra(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the engine, retrying transient failures (never around the job itself)."""
    for attempt in Retrying(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(RETRY_ATTEMPTS),
        wait=wait_exponential(multiplier=0.25, max=2.0),
        reraise=True,
    ):
        with attempt:
            return fn(*args, **kwargs)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _short(err: BaseException) -> str:
    if isinstance(err, docker.errors.APIError) and err.explanation:
        text = str(err.explanation)
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())[:300]


def _engine_name(client: docker.DockerClient) -> str:
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    url = str(client.api.base_url)
    return "unix:///var/run/docker.sock" if url == "http+docker://localhost" else url


def _connect(timeout: int) -> docker.DockerClient:
    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as err:
        where = os.environ.get("DOCKER_HOST") or "the local socket"
        raise DockerError(f"no Docker engine answers at {where}: {_short(err)}") from err


def docker_available(
    image: str | None = None, client: docker.DockerClient | None = None
) -> tuple[bool, str]:
    """(works?, why): does an engine answer, and (with `image`) is the image there?"""
    try:
        client = client or _connect(PROBE_TIMEOUT_S)
        version = client.version().get("Version", "?")
    except (DockerError, docker.errors.DockerException, requests.RequestException) as err:
        return False, str(err) if isinstance(err, DockerError) else _short(err)
    where = _engine_name(client)
    if image is None:
        return True, f"engine {version} at {where}"
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        return False, (
            f"engine {version} at {where} answers, but image {image} is missing: "
            "run `reprodesk sandbox build`"
        )
    except (docker.errors.DockerException, requests.RequestException) as err:
        return False, f"engine {version} at {where}: {_short(err)}"
    return True, f"engine {version} at {where}, image {image} ({found.short_id})"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: (pid, start) names one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def owner_id() -> str:
    """host:pid:start-time of this process, for the owner label."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_is_gone(owner: str) -> bool:
    """Is `owner` a process of this host that no longer runs? Other hosts: never sure."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _start_time(int(pid)) != started


def build_context(out: io.BufferedIOBase, wheels_dir: Path | None) -> int:
    """Write the build context (a tar) of the sandbox image: the Dockerfile, the wheels.

    The layout mirrors the repo (sandbox/Dockerfile, sandbox/wheels/) so that the same
    Dockerfile builds from the repo root too. Returns how many wheels went in.
    """
    count = 0
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(DOCKERFILE, arcname="sandbox/Dockerfile")
        if wheels_dir is not None:
            for wheel in sorted(wheels_dir.glob("*.whl")):
                tar.add(wheel, arcname=f"sandbox/wheels/{wheel.name}")
                count += 1
    return count


def dockerfile_hash() -> str:
    return hashlib.sha256(DOCKERFILE.read_bytes()).hexdigest()[:16]


def build_image(
    *,
    tag: str = DEFAULT_IMAGE,
    base: str | None = None,
    wheels_dir: Path | None = None,
    client: docker.DockerClient | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> str:
    """Build the sandbox image from `sandbox/Dockerfile`; returns the image id.

    base: another base image (e.g. one imported from debootstrap) instead of the official
    PyTorch CUDA image. wheels_dir: install from these wheels only, with no index (offline).
    `on_progress` gets each line of the build's output.
    """
    if wheels_dir is not None and not any(wheels_dir.glob("*.whl")):
        raise UserError(f"--offline-wheels {wheels_dir}: no .whl files in it")
    client = client or _connect(ENGINE_TIMEOUT_S)
    buildargs = {"BASE": base} if base else {}
    image_id = ""
    with tempfile.TemporaryFile() as context:
        wheels = build_context(context, wheels_dir)
        context.seek(0)
        if on_progress is not None:
            size = context.seek(0, io.SEEK_END) / 1e6
            context.seek(0)
            on_progress(f"build context: Dockerfile and {wheels} wheels ({size:.0f} MB)")
        try:
            events = client.api.build(
                fileobj=context,
                custom_context=True,
                dockerfile="sandbox/Dockerfile",
                tag=tag,
                buildargs=buildargs,
                labels={DOCKERFILE_LABEL: dockerfile_hash()},
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for event in events:
                if "error" in event:
                    raise DockerError(f"docker build failed: {' '.join(event['error'].split())}")
                if "aux" in event and "ID" in event["aux"]:
                    image_id = str(event["aux"]["ID"])
                text = str(event.get("stream") or event.get("status") or "").rstrip()
                if text and on_progress is not None:
                    on_progress(text)
        except (docker.errors.DockerException, requests.RequestException) as err:
            raise DockerError(f"docker build failed: {_short(err)}") from err
    if not image_id:
        image_id = str(client.images.get(tag).id)
    return image_id


# --------------------------------------------------------------------------- helpers


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks (the archive stream), counting what it read."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = memoryview(b"")  # a view: reading on does not copy the rest of a chunk
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.total += n
        return n


def _upload_tar(job: Job) -> bytes:
    """The job's files (root-owned, read-only to the job) and an out/ dir the job owns."""
    buf = io.BytesIO()
    made: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, uid: int) -> None:
            if name in made:
                return
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
            tar.addfile(info)
            made.add(name)

        add_dir("out", JOB_UID)  # first: a job file under out/ must not make it root's
        for name, text in sorted(job.files.items()):
            rel = check_relpath(name)
            for parent in reversed(rel.parents[:-1]):
                add_dir(str(parent), 0)
            data = text.encode("utf-8")
            info = tarfile.TarInfo(str(rel))
            info.mode, info.size = 0o644, len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _extract_out(chunks: Iterable[bytes], out: Path) -> None:
    """Unpack the archive of /job/out into `out`: regular files and dirs only, capped.

    The archive is the job's work, hence untrusted: no links, no absolute or `..`
    names, new files only (O_EXCL|O_NOFOLLOW), and we stop reading once it is clearly
    larger than what `collect_artifacts` would keep.
    """
    reader = _ChunkReader(chunks)
    kept = total = 0
    with tarfile.open(fileobj=io.BufferedReader(reader), mode="r|") as tar:
        for member in tar:
            if reader.total > 2 * MAX_ARTIFACTS_TOTAL_BYTES or kept >= MAX_ARTIFACTS:
                break
            path = PurePosixPath(member.name)
            if not path.parts or path.parts[0] != "out" or len(path.parts) == 1:
                continue
            try:
                rel = check_relpath(str(PurePosixPath(*path.parts[1:])))
            except Refused:
                continue
            target = out / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile() or member.size > MAX_ARTIFACT_BYTES:
                continue
            if total + member.size > MAX_ARTIFACTS_TOTAL_BYTES:
                continue
            data = tar.extractfile(member)
            if data is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            try:
                fd = os.open(target, flags, 0o644)
            except OSError:
                continue
            with os.fdopen(fd, "wb") as fh:
                while chunk := data.read(1 << 20):
                    fh.write(chunk)
            kept += 1
            total += member.size


@dataclass
class _Pump:
    """Feeds the attach stream into the two captures, on its own thread."""

    stream: Any
    stdout: StreamCapture
    stderr: StreamCapture
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="docker-attach", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends or is closed under us
            for out, err in self.stream:
                if out:
                    self.stdout.feed(out)
                if err:
                    self.stderr.feed(err)

    def finish(self, grace: float) -> None:
        self.thread.join(grace)
        with contextlib.suppress(Exception):
            self.stream.close()
        self.thread.join(grace)


class _Sampler:
    """Samples the container's memory (RSS, page cache excluded) while the job runs."""

    def __init__(self, client: docker.DockerClient, container_id: str) -> None:
        self.client = client
        self.container_id = container_id
        self.peak = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="docker-stats", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self.client.api.stats(self.container_id, stream=False, one_shot=True)
            except Exception:  # a sample is best effort; the job goes on
                return
            memory = stats.get("memory_stats") or {}
            detail = memory.get("stats") or {}
            used = max(memory.get("usage") or 0, memory.get("max_usage") or 0)
            # Like `docker stats`: cgroup v1 counts page cache as "cache", v2 as inactive_file.
            cache = detail.get("cache", detail.get("inactive_file", 0)) or 0
            self.peak = max(self.peak, used - cache)
            self._stop.wait(STATS_EVERY_S)

    def finish(self) -> float | None:
        """The peak so far. Does not wait for a sample in flight: the engine answers a
        stats request only at its next collection tick (up to a second), and the thread
        ends by itself after it."""
        self._stop.set()
        self.thread.join(0.05)
        return round(self.peak / 2**20, 1) if self.peak > 0 else None


# --------------------------------------------------------------------------- backend


class DockerSandbox:
    """Runs jobs in hardened containers. See the module docstring for what it isolates."""

    name = "docker"

    def __init__(
        self,
        work_root: Path,
        image: str = DEFAULT_IMAGE,
        runtime: str | None = None,
        gpus: Sequence[str] | None = None,
        client: docker.DockerClient | None = None,
        *,
        cpus: float | None = None,
        transfer: Transfer | None = None,
    ) -> None:
        """Connect, check the image (and runtime), and sweep leftovers of dead owners.

        gpus: device ids for GPU jobs (None: all). cpus: CPU quota (None: all the
        engine's CPUs). transfer: "bind" or "copy" (None: bind for a local engine).
        Raises `DockerError` (a UserError) when the engine or the image is missing.
        """
        self.work_root = Path(work_root)
        self.client = client or _connect(ENGINE_TIMEOUT_S)
        try:
            info = _infra(self.client.info)
            version = str(_infra(self.client.version).get("Version", "?"))
            found = _infra(self.client.images.get, image)
        except docker.errors.ImageNotFound as err:
            raise DockerError(
                f"sandbox image {image} is missing on the engine at "
                f"{_engine_name(self.client)}: run `reprodesk sandbox build`"
            ) from err
        except (docker.errors.DockerException, requests.RequestException) as err:
            raise DockerError(
                f"the Docker engine at {_engine_name(self.client)} does not answer: {_short(err)}"
            ) from err
        runtimes = set(info.get("Runtimes") or {})
        if runtime and runtime not in runtimes:
            raise DockerError(
                f"runtime {runtime!r} is not installed on the engine (it has: "
                f"{', '.join(sorted(runtimes)) or 'none'}); for gVisor install runsc and "
                'register it in the engine\'s daemon.json: {"runtimes": {"runsc": {"path": '
                '"/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}}'
            )
        if transfer is None:
            local = str(self.client.api.base_url) in (
                "http+docker://localhost",
                "http+docker://localnpipe",
            )
            transfer = "bind" if local else "copy"
        self.transfer: Transfer = transfer
        self.settings = DockerSettings(
            image=image,
            runtime=runtime,
            gpus=None if gpus is None else tuple(str(g) for g in gpus),
            cpus=float(cpus if cpus is not None else info.get("NCPU") or 1),
            owner=owner_id(),
        )
        self.environment = {
            "backend": self.name,
            "engine": version,
            "image": image,
            "image_id": str(found.short_id),
            "runtime": runtime or str(info.get("DefaultRuntime") or "runc"),
            "transfer": self.transfer,
        }
        self.sweep()

    # ------------------------------------------------------------------ housekeeping

    def sweep(self) -> list[str]:
        """Remove containers and volumes whose owner on this host is dead; their names."""
        removed: list[str] = []
        try:
            listed = _infra(self.client.api.containers, all=True, filters={"label": LABEL})
            for entry in listed:
                if owner_is_gone((entry.get("Labels") or {}).get(OWNER_LABEL, "")):
                    self._remove_container(entry["Id"])
                    removed.append(entry["Id"][:12])
            volumes = _infra(self.client.api.volumes, filters={"label": LABEL})
            for entry in (volumes or {}).get("Volumes") or []:
                if owner_is_gone((entry.get("Labels") or {}).get(OWNER_LABEL, "")):
                    self._remove_volume(entry["Name"])
                    removed.append(entry["Name"])
        except (docker.errors.DockerException, requests.RequestException) as err:
            log.warning("docker.sweep_failed", error=_short(err))
        if removed:
            log.info("docker.swept", removed=removed)
        return removed

    def leftovers(self) -> list[str]:
        """Ids of containers this sandbox created that still exist (none, between jobs)."""
        owned = f"{OWNER_LABEL}={self.settings.owner}"
        listed = _infra(self.client.api.containers, all=True, filters={"label": owned})
        return [str(entry["Id"]) for entry in listed]

    def _remove_container(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            _infra(self.client.api.remove_container, container_id, force=True, v=True)

    def _remove_volume(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            _infra(self.client.api.remove_volume, name, force=True)

    # ------------------------------------------------------------------ one job

    def run(self, job: Job) -> RunResult:
        if not job.argv:
            return refused("job has an empty command", backend=self.name)
        if job.gpu and self.settings.gpus == ():
            return refused(NO_GPU_MESSAGE, backend=self.name)
        try:
            jd = lay_out(job, self.work_root)
        except Refused as err:
            return refused(str(err), backend=self.name)
        name = f"reprodesk-job-{uuid.uuid4().hex[:12]}"
        volumes: list[str] = []
        created: str | None = None
        try:
            if self.transfer == "bind":
                self._prepare_bind(jd)
                mounts = JobMounts("bind", str(jd.work), str(jd.out))
            else:
                volumes = [f"{name}-src", f"{name}-out"]
                mounts = JobMounts("volume", volumes[0], volumes[1])
                self._upload(job, name, mounts)
            spec = container_spec(job, self.settings, name=name, mounts=mounts)
            created = self._create(spec)
            return self._run_container(job, jd, created)
        except (docker.errors.DockerException, requests.RequestException) as err:
            raise DockerError(f"the Docker engine failed us during the job: {_short(err)}") from err
        finally:
            self._clean_up(created, volumes)

    def _clean_up(self, container_id: str | None, volumes: list[str]) -> None:
        """Remove what the job left on the engine; what fails now, the next sweep gets."""
        try:
            if container_id is not None:
                self._remove_container(container_id)
            for volume in volumes:
                self._remove_volume(volume)
        except (docker.errors.DockerException, requests.RequestException) as err:
            log.warning("docker.cleanup_failed", container=container_id, error=_short(err))

    def _prepare_bind(self, jd: JobDir) -> None:
        """Source readable by uid 65534 whatever our umask; out/ writable by it."""
        for dirpath, _, filenames in os.walk(jd.work):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        if os.geteuid() == 0:
            chown_tree(jd.out, JOB_UID, JOB_UID)
        else:
            os.chmod(jd.out, 0o777)

    def _labels(self) -> dict[str, str]:
        return {LABEL: "volume", OWNER_LABEL: self.settings.owner}

    def _upload(self, job: Job, name: str, mounts: JobMounts) -> None:
        """Copy the job's files into its volumes through a loader container never started."""
        for volume in (mounts.source, mounts.out):
            _infra(self.client.api.create_volume, volume, labels=self._labels())
        loader = self._create(
            {
                "image": self.settings.image,
                "name": f"{name}-load",
                "entrypoint": ["true"],
                "labels": {LABEL: "loader", OWNER_LABEL: self.settings.owner},
                "network_mode": "none",
                "mounts": [
                    Mount(JOB_MOUNT, mounts.source, type="volume"),
                    Mount(OUT_MOUNT, mounts.out, type="volume"),
                ],
            }
        )
        try:
            if not _infra(self.client.api.put_archive, loader, JOB_MOUNT, _upload_tar(job)):
                raise DockerError("docker did not accept the job's files")
        finally:
            self._remove_container(loader)

    def _create(self, spec: dict[str, Any]) -> str:
        def create() -> str:
            try:
                return str(self.client.containers.create(**spec).id)
            except docker.errors.APIError as err:
                if err.status_code == 409:  # an earlier attempt got through; names are unique
                    return str(self.client.containers.get(spec["name"]).id)
                raise

        try:
            return _infra(create)
        except docker.errors.ImageNotFound as err:
            raise DockerError(
                f"sandbox image {spec['image']} is gone from the engine: "
                "run `reprodesk sandbox build`"
            ) from err

    def _run_container(self, job: Job, jd: JobDir, container_id: str) -> RunResult:
        limits = job.limits
        stdout = StreamCapture(limits.output_bytes, jd.stdout_log)
        stderr = StreamCapture(limits.output_bytes, jd.stderr_log)
        pump: _Pump | None = None
        sampler: _Sampler | None = None
        try:
            # Attached before the start, so that not a byte of output is missed.
            stream = _infra(
                self.client.api.attach,
                container_id,
                stdout=True,
                stderr=True,
                stream=True,
                logs=False,
                demux=True,
            )
            pump = _Pump(stream, stdout, stderr)
            started = time.monotonic()
            try:
                _infra(self.client.api.start, container_id)
            except docker.errors.APIError as err:
                if job.gpu and "device driver" in str(err.explanation):
                    return RunResult(
                        status="refused",
                        message=f"{NO_GPU_MESSAGE} (the engine: {_short(err)})",
                        backend=self.name,
                        environment=dict(self.environment),
                    )
                raise DockerError(f"docker could not start the job: {_short(err)}") from err
            sampler = _Sampler(self.client, container_id)
            timed_out = self._wait(container_id, started + limits.wall_s)
            ended = time.monotonic()
            pump.finish(DRAIN_GRACE_S)
            peak = sampler.finish()
            state = _infra(self.client.api.inspect_container, container_id)["State"]
            if self.transfer == "copy":
                chunks, _ = _infra(self.client.api.get_archive, container_id, OUT_MOUNT)
                _extract_out(chunks, jd.out)
        finally:
            if pump is not None:
                pump.finish(0)
            if sampler is not None:
                sampler.finish()
            stdout.close()
            stderr.close()
        code = int(state.get("ExitCode") or 0)
        outcome = Outcome(
            # docker-init reports a child killed by signal N as 128 + N; we say -N.
            returncode=-(code - 128) if 128 < code <= 128 + 64 else code,
            timed_out=timed_out,
            # The kernel's OOM killer fired in the container's cgroup. A job that lost a
            # worker to it and still exited 0 is judged by its exit code.
            oom_killed=bool(state.get("OOMKilled")) and code != 0 and not timed_out,
            duration_s=round(ended - started, 3),
            peak_memory_mb=peak,
            stdout=stdout,
            stderr=stderr,
        )
        return build_result(
            outcome, jd, limits, backend=self.name, environment=dict(self.environment)
        )

    def _wait(self, container_id: str, deadline: float) -> bool:
        """Wait for the container to end; kill it at the deadline. True if we killed it."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self.client.api.wait(container_id, timeout=min(remaining, WAIT_CHUNK_S))
                return False
            except requests.exceptions.RequestException:
                # The request timed out (the job runs on) or the connection dropped: look.
                state = _infra(self.client.api.inspect_container, container_id)["State"]
                if not state.get("Running"):
                    return False
        try:
            _infra(self.client.api.kill, container_id)
        except docker.errors.APIError as err:
            if err.status_code != 409:  # 409: it ended on its own just now
                raise
            return False
        with contextlib.suppress(requests.exceptions.RequestException):
            _infra(self.client.api.wait, container_id, timeout=KILL_WAIT_S)
        return True
