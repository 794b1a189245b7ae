"""The Docker backend's container specification, read flag by flag. No engine needed."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from reprodesk.schemas import Job, Limits
from sandbox.artifacts import MAX_ARTIFACT_BYTES
from sandbox.docker_engine import _transient, build_context
from sandbox.docker_files import _extract_out, _upload_tar
from sandbox.docker_spec import (
    IMAGE_PYTHON,
    LABEL,
    OWNER_LABEL,
    DockerSettings,
    JobMounts,
    container_spec,
)
from sandbox.owner import owner_id, owner_is_gone

MB = 1024 * 1024
BIND = JobMounts("bind", "/host/jobs/job-1/job", "/host/jobs/job-1/job/out")
SETTINGS = DockerSettings(image="reprodesk-sandbox:test", cpus=2.0, owner="host:1:2")


def spec_for(
    job: Job | None = None, settings: DockerSettings = SETTINGS, mounts: JobMounts = BIND
) -> dict[str, Any]:
    job = job or Job(files={"main.py": "print(1)"}, argv=["python", "main.py", "--x", "1"])
    return container_spec(job, settings, name="reprodesk-job-abc", mounts=mounts)


def test_hardening_flags() -> None:
    spec = spec_for()
    assert spec["network_mode"] == "none"
    assert spec["read_only"] is True
    assert spec["privileged"] is False
    assert spec["user"] == "65534:65534"
    assert spec["cap_drop"] == ["ALL"]
    assert "cap_add" not in spec
    assert spec["security_opt"] == ["no-new-privileges"]
    assert spec["init"] is True
    assert spec["ipc_mode"] == "private"
    assert spec["cgroupns"] == "private"
    assert spec["hostname"] == "sandbox"
    assert spec["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m,mode=1777"}  # Limits.tmpfs_mb
    assert spec["log_config"]["Type"] == "none"
    assert spec["stdin_open"] is False and spec["tty"] is False
    # Nothing that would widen it: no host namespaces, devices or extra privileges.
    for key in ("pid_mode", "userns_mode", "uts_mode", "devices", "volumes", "ports"):
        assert key not in spec, key
    assert "device_requests" not in spec and "runtime" not in spec


def test_limits_arithmetic() -> None:
    limits = Limits(
        wall_s=5, memory_mb=3000, processes=77, output_bytes=1000, file_size_mb=12, tmpfs_mb=300
    )
    job = Job(files={}, argv=["python", "-c", "pass"], limits=limits)
    spec = spec_for(job, DockerSettings(cpus=1.5))
    assert spec["mem_limit"] == 3000 * MB
    assert spec["memswap_limit"] == 3000 * MB  # equal to the memory limit: no swap
    assert spec["shm_size"] == 300 * MB  # above Docker's 64 MB, for DataLoaders; counted as RAM
    assert "size=300m" in spec["tmpfs"]["/tmp"]
    assert spec["pids_limit"] == 77
    assert spec["nano_cpus"] == 1_500_000_000
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in spec["ulimits"]}
    assert ulimits == {"fsize": (12 * MB, 12 * MB), "nofile": (4096, 4096), "core": (0, 0)}
    assert spec["environment"]["OMP_NUM_THREADS"] == "2"  # ceil(1.5)


def test_tmpfs_is_never_above_the_memory_limit_nor_a_file_above_the_disk_quota() -> None:
    limits = Limits(memory_mb=128, tmpfs_mb=512, file_size_mb=256, disk_mb=64)
    spec = spec_for(Job(files={}, argv=["python", "-c", "pass"], limits=limits))
    assert spec["shm_size"] == 128 * MB
    assert "size=128m" in spec["tmpfs"]["/tmp"]
    ulimits = {u["Name"]: u["Soft"] for u in spec["ulimits"]}
    assert ulimits["fsize"] == 64 * MB


def test_python_means_the_image_python_and_no_shell() -> None:
    assert spec_for()["entrypoint"] == [IMAGE_PYTHON, "main.py", "--x", "1"]
    job = Job(files={}, argv=["python3", "-c", "print('python')"])
    assert spec_for(job)["entrypoint"] == [IMAGE_PYTHON, "-c", "print('python')"]
    job = Job(files={}, argv=["sh", "-c", "python"])  # only argv[0] is rewritten
    assert spec_for(job)["entrypoint"] == ["sh", "-c", "python"]
    assert "command" not in spec_for()
    assert spec_for()["working_dir"] == "/job"
    assert spec_for()["image"] == "reprodesk-sandbox:test"


def test_bind_mounts_source_read_only_and_out_writable() -> None:
    mounts = {m["Target"]: m for m in spec_for()["mounts"]}
    assert set(mounts) == {"/job", "/job/out"}
    assert mounts["/job"]["Source"] == BIND.source and mounts["/job"]["Type"] == "bind"
    assert mounts["/job"]["ReadOnly"] is True
    assert mounts["/job/out"]["Source"] == BIND.out and mounts["/job/out"]["Type"] == "bind"
    assert mounts["/job/out"]["ReadOnly"] is False


def test_volume_mounts_for_a_remote_engine() -> None:
    spec = spec_for(mounts=JobMounts("volume", "job-src", "job-out"))
    mounts = {m["Target"]: m for m in spec["mounts"]}
    assert (mounts["/job"]["Source"], mounts["/job"]["ReadOnly"]) == ("job-src", True)
    assert (mounts["/job/out"]["Source"], mounts["/job/out"]["ReadOnly"]) == ("job-out", False)
    for m in mounts.values():
        assert m["Type"] == "volume"
        assert m["VolumeOptions"]["NoCopy"] is True


def test_no_host_env_leaks_into_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret-123")
    monkeypatch.setenv("DOCKER_HOST", "tcp://gpu.example:2376")
    spec = spec_for()
    env = spec["environment"]
    assert "OPENAI_API_KEY" not in env and "DOCKER_HOST" not in env
    assert "sk-host-secret-123" not in repr(spec)
    assert set(env) == {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "MPLBACKEND",
        "MPLCONFIGDIR",
    }
    assert env["HOME"] == env["TMPDIR"] == env["MPLCONFIGDIR"] == "/tmp"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert os.environ["HOME"] not in env.values()


def test_gpu_device_requests_all_gpus() -> None:
    job = Job(files={}, argv=["python", "-c", "pass"], gpu=True)
    (request,) = spec_for(job)["device_requests"]
    assert request["Count"] == -1
    assert request["Capabilities"] == [["gpu"]]
    assert not request["DeviceIDs"]


def test_gpu_device_requests_chosen_ids() -> None:
    job = Job(files={}, argv=["python", "-c", "pass"], gpu=True)
    (request,) = spec_for(job, DockerSettings(gpus=("0", "2")))["device_requests"]
    assert request["DeviceIDs"] == ["0", "2"]
    assert request["Capabilities"] == [["gpu"]]
    assert not request["Count"]


def test_cpu_job_gets_no_gpu_even_when_gpus_are_configured() -> None:
    assert "device_requests" not in spec_for(settings=DockerSettings(gpus=("0",)))


def test_runtime_gvisor() -> None:
    assert spec_for(settings=DockerSettings(runtime="runsc"))["runtime"] == "runsc"


def test_labels_name_the_owner() -> None:
    spec = spec_for()
    assert spec["labels"] == {LABEL: "job", OWNER_LABEL: "host:1:2"}
    assert spec["name"] == "reprodesk-job-abc"


def test_owner_of_this_process_is_alive_and_a_dead_one_is_gone() -> None:
    me = owner_id()
    assert not owner_is_gone(me)
    host, pid, started = me.split(":")
    assert owner_is_gone(f"{host}:{pid}:{int(started) + 1}")  # same pid, another process
    assert owner_is_gone(f"{host}:999999999:1")
    assert not owner_is_gone(f"another-host-{host}:1:1")  # not ours to judge
    assert not owner_is_gone("")


def _api_error(code: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = code
    return docker.errors.APIError("engine said no", response=response, explanation=explanation)


def test_only_infrastructure_failures_are_retried() -> None:
    assert _transient(requests.exceptions.ConnectionError("connection reset"))
    assert _transient(requests.exceptions.ReadTimeout("slow engine"))
    assert _transient(_api_error(500, "transport is closing"))
    assert _transient(_api_error(503, "engine busy"))
    assert not _transient(_api_error(500, 'could not select device driver "" with [[gpu]]'))
    assert not _transient(_api_error(400, "Unknown runtime specified runsc"))
    assert not _transient(_api_error(404, "No such image: reprodesk-sandbox:latest"))
    assert not _transient(_api_error(409, "name already in use"))
    assert not _transient(ValueError("a bug of ours"))


def test_upload_tar_gives_out_to_the_job_and_the_source_to_root() -> None:
    job = Job(files={"main.py": "print(1)", "pkg/mod.py": "x = 1", "out/seed.txt": "s"}, argv=["x"])
    with tarfile.open(fileobj=io.BytesIO(_upload_tar(job))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert next(iter(members)) == "out"  # first, before any file under out/
    assert (members["out"].uid, members["out"].isdir()) == (65534, True)
    assert (members["main.py"].uid, members["main.py"].mode) == (0, 0o644)
    assert members["pkg"].isdir() and members["pkg"].uid == 0
    assert members["pkg/mod.py"].isfile()
    assert members["out/seed.txt"].uid == 0


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    raw = buf.getvalue()
    return [raw[i : i + 1000] for i in range(0, len(raw), 1000)]  # as a stream of chunks


def test_extract_out_keeps_regular_files_only(tmp_path: Path) -> None:
    def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        return info

    entries = [
        entry("out", tarfile.DIRTYPE),
        entry("out/ok.txt"),
        entry("out/sub", tarfile.DIRTYPE),
        entry("out/sub/deep.txt"),
        entry("out/link", tarfile.SYMTYPE, "/etc/passwd"),
        entry("out/hard", tarfile.LNKTYPE, "out/ok.txt"),
        entry("out/../escape.txt"),
        entry("/abs.txt"),
        entry("elsewhere.txt"),
    ]
    data = {n: n.encode() for n in ["out/ok.txt", "out/sub/deep.txt", "out/../escape.txt"]}
    data |= {"/abs.txt": b"a", "elsewhere.txt": b"e"}
    out = tmp_path / "job" / "out"
    out.mkdir(parents=True)
    _extract_out(_tar(entries, data), out)
    found = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert found == ["ok.txt", "sub", "sub/deep.txt"]
    assert (out / "ok.txt").read_bytes() == b"out/ok.txt"
    assert not list(tmp_path.rglob("escape.txt")) and not list(tmp_path.rglob("abs.txt"))


def test_extract_out_skips_a_file_over_the_artifact_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sandbox.docker_files.MAX_ARTIFACT_BYTES", 10)
    big, small = tarfile.TarInfo("out/big.bin"), tarfile.TarInfo("out/small.bin")
    _extract_out(_tar([big, small], {"out/big.bin": b"x" * 11, "out/small.bin": b"y"}), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.bin"]
    assert MAX_ARTIFACT_BYTES > 10  # the real cap is untouched


def test_build_context_mirrors_the_repo_layout(tmp_path: Path) -> None:
    (tmp_path / "torch-2.13.0-cp311-none-any.whl").write_bytes(b"wheel")
    (tmp_path / "notes.txt").write_text("not a wheel")
    buf = io.BytesIO()
    assert build_context(buf, tmp_path) == 1
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
    assert names == ["sandbox/Dockerfile", "sandbox/wheels/torch-2.13.0-cp311-none-any.whl"]


def test_dockerfile_contract() -> None:
    """What container.py relies on in the image: python at /opt/venv, uid 65534, /job."""
    text = (Path(__file__).parents[2] / "sandbox" / "Dockerfile").read_text()
    assert "ARG BASE=pytorch/pytorch:" in text and "-runtime" in text and "cuda" in text
    assert "/opt/venv" in text and IMAGE_PYTHON.startswith("/opt/venv/")
    assert "USER 65534:65534" in text
    assert "WORKDIR /job" in text
    assert "--no-index" in text and "sandbox/wheel[s]" in text
