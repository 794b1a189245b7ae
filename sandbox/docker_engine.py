"""Talking to the Docker engine: connecting, retrying, probing, building the image.

Infrastructure only: tenacity retries transient engine failures (a dropped connection,
a 5xx), never the job itself. `DockerError` is raised, not returned as a job result,
when the engine rather than the job failed.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from reprodesk.schemas import UserError
from sandbox.docker_spec import DEFAULT_IMAGE

T = TypeVar("T")

DOCKERFILE = Path(__file__).with_name("Dockerfile")
DOCKERFILE_LABEL = "reprodesk.dockerfile"
"""On built images: a hash of the Dockerfile they were built from."""
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


class DockerError(UserError):
    """The Docker engine, not the job, failed: unreachable, missing image, bad setup.

    Raised rather than returned as a job result, so that no one "repairs" the job's
    code for it; the ledger sees the job as unfinished and a resumed run runs it again.
    """


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
