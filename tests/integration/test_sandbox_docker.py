"""Real jobs in real containers: what is particular to `DockerSandbox`.

The properties every backend shares are attacked in sandbox/test_sandbox_adversarial.py (which
runs them here too). Here: leftovers on the engine, the read-only source, seccomp, the
engine's view of the home, the copy transfer, gVisor.

Needs an engine and the test image that `scripts/docker-engine.sh` builds (CI runs it
first); skipped, with the reason, when either is missing. After every test a plain job
must still run, and no container of ours may be left. The only network traffic is to a
server these tests run on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from reprodesk.schemas import Job, Limits, RunResult
from sandbox.container import LABEL, OWNER_LABEL, DockerSandbox, docker_available
from tests.sandbox_jobs import report

TEST_IMAGE = os.environ.get("REPRODESK_DOCKER_IMAGE", "reprodesk-sandbox:test")
"""The tag scripts/docker-engine.sh builds."""
FAST = Limits(wall_s=30, memory_mb=1024, output_bytes=64_000)
ALIVE = "import json\nprint(json.dumps({'alive': True}))\n"


@pytest.fixture(scope="module")
def docker_box(tmp_path_factory: pytest.TempPathFactory) -> DockerSandbox:
    works, why = docker_available(TEST_IMAGE)
    if not works:
        pytest.skip(f"no Docker sandbox here ({why}); run `bash scripts/docker-engine.sh`")
    return DockerSandbox(tmp_path_factory.mktemp("docker-jobs"), image=TEST_IMAGE)


@pytest.fixture(scope="module")
def copy_box(docker_box: DockerSandbox, tmp_path_factory: pytest.TempPathFactory) -> DockerSandbox:
    """The remote-engine path (files through volumes), on the local engine."""
    return DockerSandbox(
        tmp_path_factory.mktemp("docker-copy-jobs"), image=TEST_IMAGE, transfer="copy"
    )


@pytest.fixture(autouse=True)
def _next_job_runs_and_nothing_is_left(docker_box: DockerSandbox) -> Iterator[None]:
    yield
    assert docker_box.leftovers() == []
    after = run(docker_box, ALIVE)
    assert after.status == "ok" and after.metrics == {"alive": True}, after.stderr
    assert docker_box.leftovers() == []


def run(box: DockerSandbox, code: str, *args: str, limits: Limits = FAST) -> RunResult:
    return box.run(Job(files={"main.py": code}, argv=["python", "main.py", *args], limits=limits))


def test_trivial_job_is_ok_with_metrics_and_artifacts(docker_box: DockerSandbox) -> None:
    code = (
        "import json\n"
        "print('hi')\n"
        "open('out/result.txt', 'w').write('42')\n"
        "print(json.dumps({'answer': 42}))\n"
    )
    result = run(docker_box, code)
    assert result.status == "ok", (result.message, result.stderr)
    assert result.exit_code == 0
    assert result.metrics == {"answer": 42}
    assert result.backend == "docker" and result.environment["backend"] == "docker"
    assert result.environment["image"] == TEST_IMAGE
    assert Path(result.artifacts["out/result.txt"]).read_text() == "42"
    assert result.stdout.startswith("hi\n")


def test_infinite_loop_times_out_and_the_container_is_gone(docker_box: DockerSandbox) -> None:
    code = "import os\nos.fork()\nwhile True:\n    pass\n"  # two spinning processes
    started = time.monotonic()
    result = run(docker_box, code, limits=Limits(wall_s=2))
    assert result.status == "timeout", (result.status, result.message)
    assert 2 <= time.monotonic() - started < 8
    assert 2 <= result.duration_s < 6
    ours = docker_box.client.api.containers(all=True, filters={"label": LABEL})
    mine = [c for c in ours if c["Labels"].get(OWNER_LABEL) == docker_box.settings.owner]
    assert mine == []


def test_memory_bomb_is_oom(docker_box: DockerSandbox) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n"
    result = run(docker_box, code, limits=Limits(wall_s=30, memory_mb=256))
    assert result.status == "oom", (result.status, result.message, result.stderr[-500:])
    assert result.exit_code == -9  # the kernel's OOM killer: SIGKILL


def test_system_dirs_and_the_job_source_are_read_only(docker_box: DockerSandbox) -> None:
    code = (
        "import json, os\n"
        "res = {}\n"
        "for path in ['/etc/passwd', '/etc/evil.conf', '/usr/lib/evil.so', '/evil',\n"
        "             '/opt/venv/bin/python', '/job/main.py', '/job/new.py',\n"
        "             '/var/tmp/evil']:  # 1777 in the image: only the read-only root stops it\n"
        "    existed = os.path.exists(path)\n"
        "    try:\n"
        "        open(path, 'a').close()  # opening for writing is the breach; write nothing\n"
        "        res[path] = 'writable'\n"
        "        if not existed:\n"
        "            os.unlink(path)\n"
        "    except OSError as err:\n"
        "        res[path] = err.strerror\n"
        "open('/tmp/scratch', 'w').write('tmp is fine')\n"
        "print(json.dumps(res))\n"
    )
    result = run(docker_box, code)
    got = report(result)
    assert result.status == "ok", result.stderr
    for path, outcome in got.items():
        assert outcome in ("Read-only file system", "Permission denied"), (path, outcome)
    assert got["/var/tmp/evil"] == "Read-only file system"


def test_host_home_is_not_visible(docker_box: DockerSandbox) -> None:
    """Nothing of the home: every file the job sees is the image, a kernel fs or a known bind."""
    home = str(Path.home())
    entries = [os.path.join(home, name) for name in sorted(os.listdir(home))]
    code = (
        "import json, os, sys\n"
        "mounts = []\n"
        "for line in open('/proc/self/mountinfo'):\n"
        "    left, right = line.split(' - ')\n"
        "    fields = left.split()\n"
        "    mounts.append({'root': fields[3], 'at': fields[4], 'fs': right.split()[0]})\n"
        "seen = [p for p in json.loads(sys.argv[1]) if os.path.lexists(p)]\n"
        "print(json.dumps({'mounts': mounts, 'seen': seen}))\n"
    )
    result = run(docker_box, code, json.dumps(entries))
    got = report(result)
    assert entries and got["seen"] == []
    job_dir = str(Path(result.workdir) / "job")
    engine_files = {"/usr/sbin/docker-init", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
    kernel_fs = {"overlay", "proc", "tmpfs", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"}
    for mount in got["mounts"]:
        assert not mount["root"].startswith(home.rstrip("/") + "/"), mount
        if mount["fs"] in kernel_fs:
            continue
        # A bind from the host: the job dir, or what the engine adds (init, hosts files).
        assert mount["root"].startswith(job_dir) or mount["at"] in engine_files, mount


def test_runs_as_nobody_without_capabilities(docker_box: DockerSandbox) -> None:
    code = (
        "import json, os\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(),\n"
        "    'groups': os.getgroups(), 'nnp': status['NoNewPrivs'].strip(),\n"
        "    'seccomp': status['Seccomp'].strip(),\n"
        "    'caps': [status[k].strip() for k in ('CapPrm', 'CapEff', 'CapBnd', 'CapAmb')]}))\n"
    )
    got = report(run(docker_box, code))
    assert (got["uid"], got["euid"], got["gid"]) == (65534, 65534, 65534)
    assert set(got["groups"]) <= {65534}
    assert got["caps"] == ["0000000000000000"] * 4
    assert got["nnp"] == "1"
    assert got["seccomp"] == "2"  # filter mode: Docker's default profile


def test_gpu_job_is_refused_by_an_engine_without_gpus(docker_box: DockerSandbox) -> None:
    if "nvidia" in docker_box.client.info().get("Runtimes", {}):
        pytest.skip("this engine has the NVIDIA runtime")
    job = Job(files={"main.py": "print(1)"}, argv=["python", "main.py"], gpu=True)
    result = docker_box.run(job)
    assert result.status == "refused", (result.status, result.message)
    assert result.message.startswith("job asks for a GPU but this machine has none")


def test_leftovers_of_a_dead_owner_are_removed_at_start(
    docker_box: DockerSandbox, tmp_path: Path
) -> None:
    dead = f"{socket.gethostname()}:999999999:1"
    alive_elsewhere = "some-other-host:1:1"
    made = [
        docker_box.client.containers.create(
            TEST_IMAGE, ["true"], labels={LABEL: "job", OWNER_LABEL: owner}, network_mode="none"
        ).id
        for owner in (dead, alive_elsewhere)
    ]
    try:
        DockerSandbox(tmp_path, image=TEST_IMAGE)
        left = {c["Id"] for c in docker_box.client.api.containers(all=True)}
        assert made[0] not in left  # its owner is dead: swept
        assert made[1] in left  # another host's: not ours to judge
    finally:
        for container_id in made:
            with contextlib.suppress(docker.errors.NotFound):
                docker_box.client.api.remove_container(container_id, force=True)


# --------------------------------------------------------------------------- copy transfer


def test_copy_transfer_runs_with_artifacts_and_a_read_only_source(copy_box: DockerSandbox) -> None:
    code = (
        "import json, os\n"
        "os.makedirs('out/sub')\n"
        "open('out/sub/result.txt', 'w').write('42')\n"
        "os.symlink('/etc/passwd', 'out/leak')\n"
        "try:\n"
        "    open('main.py', 'a').close()\n"
        "    source = 'writable'\n"
        "except OSError as err:\n"
        "    source = err.strerror\n"
        "print(json.dumps({'source': source, 'uid': os.getuid()}))\n"
    )
    job = Job(files={"main.py": code, "lib/helper.py": "X = 1\n"}, argv=["python", "main.py"])
    result = copy_box.run(job)
    got = report(result)
    assert result.status == "ok", result.stderr
    assert got["source"] in ("Read-only file system", "Permission denied")
    assert got["uid"] == 65534
    assert Path(result.artifacts["out/sub/result.txt"]).read_text() == "42"
    assert "out/leak" not in result.artifacts
    assert copy_box.environment["transfer"] == "copy"


def test_copy_transfer_timeout_leaves_no_container_or_volume(copy_box: DockerSandbox) -> None:
    result = run(copy_box, "while True:\n    pass\n", limits=Limits(wall_s=1))
    assert result.status == "timeout"
    assert copy_box.leftovers() == []
    owned = f"{OWNER_LABEL}={copy_box.settings.owner}"
    volumes = copy_box.client.api.volumes(filters={"label": owned}).get("Volumes") or []
    assert volumes == []


def test_result_round_trips_as_json(docker_box: DockerSandbox) -> None:
    result = run(docker_box, ALIVE)
    assert json.loads(result.model_dump_json())["status"] == "ok"


# --------------------------------------------------------------------------- gVisor


@pytest.fixture(scope="module")
def gvisor_box(
    docker_box: DockerSandbox, tmp_path_factory: pytest.TempPathFactory
) -> DockerSandbox:
    runtimes = docker_box.client.info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        pytest.skip(f"the engine has no runsc (gVisor) runtime; it has {sorted(runtimes)}")
    return DockerSandbox(tmp_path_factory.mktemp("gvisor-jobs"), image=TEST_IMAGE, runtime="runsc")


@pytest.mark.slow
def test_gvisor_runs_the_job_on_its_own_kernel(gvisor_box: DockerSandbox, tmp_path: Path) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    code = (
        "import json, os, socket, sys, torch\n"
        "open('out/result.txt', 'w').write('42')\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n"
        "    outcome = 'connected'\n"
        "except OSError as err:\n"
        "    outcome = type(err).__name__\n"
        "print(json.dumps({'kernel': os.uname().release, 'uid': os.getuid(), 'connect': outcome,\n"
        "                  'sum': torch.ones(3, 3).sum().item()}))\n"
    )
    try:
        result = run(gvisor_box, code, str(server.getsockname()[1]), limits=Limits(wall_s=90))
        got = report(result)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert result.status == "ok", result.stderr
    assert got["kernel"] != os.uname().release  # gVisor's Sentry answers, not the host kernel
    assert (got["uid"], got["sum"], got["connect"]) == (65534, 9.0, "ConnectionRefusedError")
    assert Path(result.artifacts["out/result.txt"]).read_text() == "42"
    assert result.environment["runtime"] == "runsc"


def test_gvisor_timeout_kills_and_removes(gvisor_box: DockerSandbox) -> None:
    result = run(gvisor_box, "while True:\n    pass\n", limits=Limits(wall_s=2))
    assert result.status == "timeout"
    assert gvisor_box.leftovers() == []
