"""Docker backend: the strongest isolation here, and the way to a GPU, local or rented.

One container per job, from the image `sandbox/Dockerfile` builds, through the Docker
SDK (`docker.from_env()`, so a `DOCKER_HOST` pointing at a rented cloud GPU machine
works unchanged). Three rooms: `docker_spec` (the container's whole specification, a
pure function the unit tests check flag by flag), `docker_engine` (connecting,
retries, probing, building the image), `docker_files` (the "copy" transfer's tars);
this module runs one job with them.

What it covers:

- Network: network mode "none": the job sees only `lo`, and the host's 127.0.0.1 is
  another namespace's loopback, out of reach.
- Filesystem: the image's root is read-only; /tmp and /dev/shm are private tmpfs mounts
  of `Limits.tmpfs_mb` (charged to the memory cgroup, so counted as memory); the
  job's files are mounted read-only at /job and only /job/out is writable. Nothing
  else of the host is visible: not the home dir, not the host's Python.
- Identity: uid/gid 65534, every capability dropped, no-new-privileges, Docker's
  default seccomp profile; with `runtime="runsc"` (gVisor) a user-space kernel as well.
  The engine must know runsc; in daemon.json (reloaded on SIGHUP):
  `{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}}`
  (Debian's runsc 20221219 refuses Docker's "none" network without --network=none).
- Limits (cgroups, so they hold for GPU jobs too): memory with memory+swap equal (no
  swap), a pids limit (processes and threads), a CPU quota, RLIMIT_FSIZE (at most the
  disk quota) and RLIMIT_NOFILE, no core dumps. Disk quota: out/ is measured every
  `WATCHDOG_EVERY_S` (bind transfer) and the container killed over it, status
  "quota". The wall time is ours: `wait` with a timeout only ends the HTTP request
  (NOTES), so on timeout the container is killed.
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
the job ("copy" transfer). Both keep the contract of `artifacts.collect_artifacts`.
A unix socket forwarded from another machine looks local: pass transfer="copy" then.

What it does not cover:

- Disk with the copy transfer: out/ is a volume on the engine's machine, measured
  only once it is back (status "quota" then, but the job was not stopped); the
  archive read back is capped. Bind transfer: sampled, so a job can overshoot by
  what it writes in one interval. The tmpfs mounts count as memory, not as disk.
- The kernel is the host's (runc): a kernel bug is an escape. Use gVisor for hostile code.
- Peak memory is sampled from the engine's stats about twice a second (the cgroup's
  usage without reclaimable page cache, tmpfs included); a spike between samples is
  missed, and a job shorter than about a second may have no sample at all (peak None).
- GPU device requests were written on a machine with no GPU: only their shape is
  tested (and the refusal by an engine without the toolkit).
- The engine itself: whoever can reach the Docker socket is root on the engine's host.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests
import structlog
from docker.types import Mount

from reprodesk.schemas import Job, RunResult
from sandbox.base import (
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
    lay_out,
    refused,
)
from sandbox.docker_engine import (
    ENGINE_TIMEOUT_S,
    DockerError,
    _connect,
    _engine_name,
    _infra,
    _short,
    _transient,
    build_context,
    build_image,
    docker_available,
)
from sandbox.docker_files import _extract_out, _upload_tar
from sandbox.docker_spec import (
    DEFAULT_IMAGE,
    IMAGE_PYTHON,
    JOB_MOUNT,
    LABEL,
    OUT_MOUNT,
    OWNER_LABEL,
    DockerSettings,
    JobMounts,
    container_spec,
)
from sandbox.owner import owner_id, owner_is_gone

__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE_PYTHON",
    "LABEL",
    "OWNER_LABEL",
    "DockerError",
    "DockerSandbox",
    "DockerSettings",
    "JobMounts",
    "_transient",
    "build_context",
    "build_image",
    "container_spec",
    "docker_available",
    "owner_id",
    "owner_is_gone",
]

log = structlog.get_logger(__name__)

WAIT_CHUNK_S = 60.0
"""Longest single `wait` request; a long job is waited for in chunks (proxies cut idle HTTP)."""
KILL_WAIT_S = 15.0
DRAIN_GRACE_S = 2.0
STATS_EVERY_S = 0.5

Transfer = Literal["bind", "copy"]


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
    """Samples the container while the job runs: memory from the engine, disk on our side.

    Memory is the cgroup's usage without the reclaimable page cache, tmpfs included
    (cgroup v1 counts /tmp and /dev/shm pages as "shmem" inside "cache"; v2 keeps
    them out of "inactive_file"). Disk: `meter.check_disk` on the bind-mounted out/
    every `WATCHDOG_EVERY_S`, on a thread of its own; over the quota, the container
    is killed.
    """

    def __init__(self, client: docker.DockerClient, container_id: str, meter: Meter | None):
        self.client = client
        self.container_id = container_id
        self.meter = meter
        self.peak = 0
        self.over_quota = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="docker-stats", daemon=True)
        self.thread.start()
        self.disk_thread: threading.Thread | None = None
        if meter is not None and meter.disk_dirs:
            self.disk_thread = threading.Thread(target=self._disk, name="docker-disk", daemon=True)
            self.disk_thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self.client.api.stats(self.container_id, stream=False, one_shot=True)
            except Exception:  # a sample is best effort; the job goes on
                return
            memory = stats.get("memory_stats") or {}
            detail = memory.get("stats") or {}
            used = max(memory.get("usage") or 0, memory.get("max_usage") or 0)
            if "cache" in detail:  # cgroup v1
                cache = (detail.get("cache") or 0) - (detail.get("shmem") or 0)
            else:  # cgroup v2
                cache = detail.get("inactive_file", 0) or 0
            self.peak = max(self.peak, used - max(cache, 0))
            self._stop.wait(STATS_EVERY_S)

    def _disk(self) -> None:
        assert self.meter is not None
        while not self._stop.wait(WATCHDOG_EVERY_S):
            if self.meter.check_disk():
                self.over_quota = True
                with contextlib.suppress(Exception):  # it may have ended just now
                    self.client.api.kill(self.container_id)
                return

    def finish(self) -> float | None:
        """The peak so far. Does not wait for a sample in flight: the engine answers a
        stats request only at its next collection tick (up to a second), and the thread
        ends by itself after it."""
        self._stop.set()
        self.thread.join(0.05)
        if self.disk_thread is not None:
            self.disk_thread.join()
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
            meter = Meter(job.limits, disk_dirs=[jd.out])
            # Bind: out/ is ours to watch while the job runs. Copy: it lives on the
            # engine's machine; it is measured once it is back (and the cap on the
            # archive we read bounds what comes back).
            sampler = _Sampler(
                self.client, container_id, meter if self.transfer == "bind" else None
            )
            timed_out = self._wait(container_id, started + limits.wall_s)
            ended = time.monotonic()
            pump.finish(DRAIN_GRACE_S)
            peak = sampler.finish()
            state = _infra(self.client.api.inspect_container, container_id)["State"]
            if self.transfer == "copy":
                chunks, _ = _infra(self.client.api.get_archive, container_id, OUT_MOUNT)
                _extract_out(chunks, jd.out)
            meter.final()
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
            quota_message=meter.quota,
            peak_disk_mb=round(meter.peak_disk_mb, 1),
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
