"""Real jobs under cold bubblewrap: what is particular to `BubblewrapSandbox`.

The properties every backend shares are attacked in sandbox/test_sandbox_adversarial.py. Here:
the GPU paths, the process limit, the uid mapping, the interpreter, and bwrap's own
lifetime when its host dies mid-setup. Skipped, with the reason, where bubblewrap
cannot start a sandbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox.bwrap
from reprodesk.schemas import Job, Limits, RunResult
from sandbox import BubblewrapSandbox, Sandbox
from tests.sandbox_jobs import (
    assert_no_stray_child,
    assert_none_left,
    bwrap_works_or_skip,
    processes_with,
    report,
)

FAST = Limits(wall_s=20, memory_mb=1024, output_bytes=64_000)


@pytest.fixture(scope="module")
def bwrap_box(tmp_path_factory: pytest.TempPathFactory) -> BubblewrapSandbox:
    bwrap_works_or_skip()
    return BubblewrapSandbox(tmp_path_factory.mktemp("bwrap-jobs"))


def run(box: Sandbox, code: str, *args: str, limits: Limits = FAST) -> RunResult:
    return box.run(Job(files={"main.py": code}, argv=["python", "main.py", *args], limits=limits))


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    assert_no_stray_child()


# --------------------------------------------------------------------------- bwrap only


def test_gpu_job_is_refused_without_a_gpu(bwrap_box: BubblewrapSandbox) -> None:
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    job = Job(files={"main.py": "print(1)"}, argv=["python", "main.py"], gpu=True)
    result = bwrap_box.run(job)
    assert result.status == "refused"
    assert result.message == "job asks for a GPU but this machine has none"


def test_rss_watchdog_kills_a_gpu_job_over_its_memory(
    bwrap_box: BubblewrapSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GPU job has no RLIMIT_AS; pretend /dev/null is the GPU to reach the watchdog.
    monkeypatch.setattr(sandbox.bwrap, "gpu_devices", lambda: ["/dev/null"])
    code = (
        "import time\n"
        "chunks = []\n"
        "for _ in range(40):  # touches at most 1.3 GB, then waits to be killed\n"
        "    chunks.append(b'\\x01' * (32 * 2**20))\n"
        "    time.sleep(0.05)\n"
        "time.sleep(60)\n"
    )
    job = Job(
        files={"main.py": code},
        argv=["python", "main.py"],
        limits=Limits(wall_s=20, memory_mb=192),
        gpu=True,
    )
    result = bwrap_box.run(job)
    assert result.status == "oom", (result.message, result.stderr[-500:])
    assert "memory (the processes' PSS plus /tmp and /dev/shm) passed" in result.message
    assert result.duration_s < 10


def test_process_limit_counts_only_the_job(bwrap_box: BubblewrapSandbox) -> None:
    code = (
        "import json, os, time\n"
        "forked = 0\n"
        "try:\n"
        "    for _ in range(100):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(json.dumps({'forked': forked}))\n"
    )
    got = report(run(bwrap_box, code, limits=Limits(wall_s=10, processes=16)))
    assert 5 <= got["forked"] < 16


def test_job_runs_as_nobody_without_capabilities(bwrap_box: BubblewrapSandbox) -> None:
    code = (
        "import json, os\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "uid_map = [line.split() for line in open('/proc/self/uid_map')]\n"
        "host_uid = [int(h) for ns, h, n in uid_map if int(ns) <= os.getuid() < int(ns) + int(n)]\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
        "    'host_uid': host_uid, 'nnp': status['NoNewPrivs'].strip(),\n"
        "    'caps': [status[k].strip() for k in ('CapPrm', 'CapEff', 'CapAmb')]}))\n"
    )
    got = report(run(bwrap_box, code))
    assert (got["uid"], got["gid"], got["groups"]) == (65534, 65534, [])
    assert got["caps"] == ["0000000000000000"] * 3
    assert got["nnp"] == "1"
    # Host root is exempt from RLIMIT_NPROC: the job must not be host root.
    assert got["host_uid"] == [65534 if os.geteuid() == 0 else os.geteuid()]


def test_interpreter_is_the_host_venv(bwrap_box: BubblewrapSandbox) -> None:
    code = "import json, sys\nprint(json.dumps({'exe': sys.executable, 'prefix': sys.prefix}))\n"
    got = report(run(bwrap_box, code))
    assert got == {"exe": sys.executable, "prefix": sys.prefix}


def test_bwrap_dies_with_a_host_killed_during_the_uid_map_handshake(tmp_path: Path) -> None:
    """Break 6: as root, a host killed mid-handshake left bwrap (and then the job) running.

    Once the host is gone, the block fd reads EOF and bwrap goes on with the uid map
    in place: nothing would supervise the job. bwrap must die with its host instead.
    """
    if os.geteuid() != 0:
        pytest.skip("the uid-map handshake happens only as root")
    bwrap_works_or_skip()
    marker = f"handshake-{uuid.uuid4().hex}"
    host = (
        "import json, os, sys, time\n"
        "from pathlib import Path\n"
        "import sandbox.bwrap\n"
        "from reprodesk.schemas import Job, Limits\n"
        "def stuck(info_fd, block_fd, **kw):  # maps the ids, then dies before letting go\n"
        "    data = b''\n"
        "    while chunk := os.read(info_fd, 4096):  # bwrap closes it after the JSON\n"
        "        data += chunk\n"
        "    pid = json.loads(data)['child-pid']\n"
        "    for name in ('uid_map', 'gid_map'):\n"
        "        with open(f'/proc/{pid}/{name}', 'w') as fh:\n"
        "            fh.write('0 0 1\\n65534 65534 1\\n')\n"
        "    print('handshake', flush=True)\n"
        "    time.sleep(600)\n"
        "sandbox.bwrap.map_ids = stuck\n"
        "box = sandbox.bwrap.BubblewrapSandbox(Path(sys.argv[1]))\n"
        "box.run(Job(files={}, argv=['sleep', '600', sys.argv[2]], limits=Limits(wall_s=600)))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", host, str(tmp_path), marker],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "handshake\n"
        assert processes_with(marker)  # bwrap is there, waiting to be let go
    finally:
        proc.kill()
        proc.wait()
    assert_none_left(marker)
