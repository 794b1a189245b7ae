"""The Docker backend's container specification: pure, so tests read it flag by flag.

`container_spec(job, settings, name=..., mounts=...)` is every keyword argument given to
`client.containers.create` for one job: identity, network, read-only root, tmpfs,
limits, mounts, GPU device requests. No engine is needed to build or check it. What
the flags cover is said in `sandbox.container`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from reprodesk.schemas import Job
from sandbox.base import JOB_UID, PYTHON_NAMES, job_env
from sandbox.images import DEFAULT_IMAGE
from sandbox.meter import file_size_bytes, tmpfs_bytes

"""What `reprodesk sandbox build` and docker compose tag; scripts/docker-engine.sh builds :test."""
IMAGE_PYTHON = "/opt/venv/bin/python"
"""The image's interpreter (see the Dockerfile): what a job's `python` means."""
JOB_MOUNT = "/job"
OUT_MOUNT = "/job/out"

LABEL = "reprodesk.sandbox"
"""On every container and volume this backend creates; value: what it is."""
OWNER_LABEL = "reprodesk.owner"
"""host:pid:start-time of the process that created it, for the leftover sweep."""

NOFILE = 4096
"""RLIMIT_NOFILE: DataLoader workers pass tensors through file descriptors."""


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
    file_size = file_size_bytes(limits)
    tmpfs = tmpfs_bytes(limits)
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
        # Small, and charged to the memory cgroup: what is in them is counted as memory.
        "shm_size": tmpfs,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={tmpfs // mb}m,mode=1777"},
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
