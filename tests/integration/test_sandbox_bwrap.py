"""Real sandboxed jobs. Each test attacks one property of the sandbox.

Skipped, with the reason, where bubblewrap cannot start a sandbox. The only network
traffic is to a server these tests run on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandbox.bwrap
from reprodesk.schemas import Job, Limits, RunResult
from sandbox import BubblewrapSandbox, Sandbox, SubprocessSandbox, backend_report
from sandbox.bwrap import ETC_FILES

FAST = Limits(wall_s=20, memory_mb=1024, output_bytes=64_000)


@pytest.fixture(scope="module")
def bwrap_box(tmp_path_factory: pytest.TempPathFactory) -> BubblewrapSandbox:
    works, why = dict((n, (w, y)) for n, w, y in backend_report())["bwrap"]
    if not works:
        pytest.skip(f"bubblewrap cannot run here: {why}")
    return BubblewrapSandbox(tmp_path_factory.mktemp("bwrap-jobs"))


@pytest.fixture(params=["bwrap", "subprocess"])
def any_box(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """The properties that do not depend on isolation, on both backends."""
    if request.param == "bwrap":
        box: Sandbox = request.getfixturevalue("bwrap_box")
        return box
    return SubprocessSandbox(tmp_path_factory.mktemp("subprocess-jobs"))


def run(box: Sandbox, code: str, *args: str, limits: Limits = FAST) -> RunResult:
    return box.run(Job(files={"main.py": code}, argv=["python", "main.py", *args], limits=limits))


def report(result: RunResult) -> dict[str, Any]:
    """The job's own report: its metrics line, which each attack prints."""
    assert result.metrics is not None, (result.status, result.message, result.stderr[-2000:])
    return result.metrics


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds `marker`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    # Every run reaps its own processes; nothing may be left as our child.
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        pid = 0
    assert pid == 0


def assert_none_left(marker: str) -> None:
    deadline = time.monotonic() + 1.0  # SIGKILLed processes can take a moment to vanish
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


# --------------------------------------------------------------------------- both backends


def test_trivial_script_is_ok_with_metrics(any_box: Sandbox) -> None:
    result = run(any_box, 'import json\nprint("hi")\nprint(json.dumps({"answer": 42}))\n')
    assert result.status == "ok", result.stderr
    assert result.exit_code == 0
    assert result.metrics == {"answer": 42}
    assert result.backend == any_box.name
    assert result.environment["backend"] == any_box.name
    assert result.peak_memory_mb is not None and result.peak_memory_mb > 1


def test_failing_script_is_an_error_with_the_exception(any_box: Sandbox) -> None:
    result = run(any_box, "1 / 0\n")
    assert result.status == "error"
    assert result.exit_code == 1
    assert "ZeroDivisionError" in result.message


def test_infinite_loop_hits_the_wall_time_and_leaves_nothing(any_box: Sandbox) -> None:
    marker = f"spin-{uuid.uuid4().hex}"
    code = "import os\nos.fork()\nwhile True:\n    pass\n"  # two spinning processes
    started = time.monotonic()
    result = run(any_box, code, marker, limits=Limits(wall_s=2))
    assert result.status == "timeout"
    assert 2 <= time.monotonic() - started < 6
    assert_none_left(marker)


def test_host_secret_env_var_is_not_visible(
    any_box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret-123")
    code = (
        "import json, os\n"
        "environ = open('/proc/self/environ', 'rb').read().decode()\n"
        "print(json.dumps({'key': os.environ.get('OPENAI_API_KEY'),\n"
        "                  'leaked': 'sk-host-secret' in environ, 'names': sorted(os.environ)}))\n"
    )
    got = report(run(any_box, code))
    assert got["key"] is None
    assert got["leaked"] is False
    assert "OPENAI_API_KEY" not in got["names"]


def test_megabytes_of_stdout_are_cut_to_head_and_tail(any_box: Sandbox) -> None:
    code = (
        "import json, sys\n"
        "print('HEAD-OF-OUTPUT')\n"
        "for i in range(20_000):\n"
        "    sys.stdout.write(f'filler line {i:06d} ' + 'x' * 50 + '\\n')\n"
        "print('TAIL-OF-OUTPUT')\n"
        "print(json.dumps({'done': True}))\n"
    )
    result = run(any_box, code, limits=Limits(wall_s=20, output_bytes=20_000))
    assert result.status == "ok"
    assert result.truncated
    assert result.stdout.startswith("HEAD-OF-OUTPUT\n")
    assert "TAIL-OF-OUTPUT" in result.stdout[-200:]
    assert "... [truncated " in result.stdout
    assert len(result.stdout.encode()) < 20_000 + 100
    assert result.metrics == {"done": True}  # the tail holds the metrics line
    assert Path(result.artifacts["stdout.log"]).stat().st_size > 1_000_000


def test_file_size_limit_stops_a_disk_filler(any_box: Sandbox) -> None:
    code = (
        "with open('out/big.bin', 'wb') as fh:\n"
        "    for _ in range(64):\n"
        "        fh.write(b'x' * 2**20)\n"
    )
    result = run(any_box, code, limits=Limits(wall_s=20, file_size_mb=2))
    assert result.status == "error"
    assert "File too large" in result.message
    assert Path(result.artifacts["out/big.bin"]).stat().st_size <= 2 * 2**20


# --------------------------------------------------------------------------- bwrap only


@pytest.mark.slow
def test_torch_imports_and_a_matmul_runs(bwrap_box: BubblewrapSandbox) -> None:
    code = (
        "import json, torch\n"
        "a = torch.ones(64, 32)  # (64, 32)\n"
        "b = torch.ones(32, 16)  # (32, 16)\n"
        "c = a @ b               # (64, 16), every entry 32\n"
        "print(json.dumps({'torch': torch.__version__, 'sum': c.sum().item()}))\n"
    )
    result = run(bwrap_box, code, limits=Limits(wall_s=60))
    assert result.status == "ok", result.stderr
    got = report(result)
    assert got["sum"] == 64 * 16 * 32
    assert str(got["torch"]).startswith("2.")


def test_network_shows_only_lo_and_cannot_reach_the_host(bwrap_box: BubblewrapSandbox) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    try:
        port = server.getsockname()[1]
        code = (
            "import json, socket, sys\n"
            "lines = open('/proc/net/dev').read().splitlines()[2:]\n"
            "ifaces = sorted(line.split(':')[0].strip() for line in lines)\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n"
            "    outcome = 'connected'\n"
            "except OSError as err:\n"
            "    outcome = type(err).__name__\n"
            "print(json.dumps({'ifaces': ifaces, 'connect': outcome}))\n"
        )
        got = report(run(bwrap_box, code, str(port)))
        assert got["ifaces"] == ["lo"]
        assert got["connect"] != "connected"
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the host's listener either
    finally:
        server.close()


def test_system_dirs_are_read_only_and_etc_is_minimal(bwrap_box: BubblewrapSandbox) -> None:
    code = (
        "import json, os\n"
        "res = {'etc': sorted(os.listdir('/etc'))}\n"
        "for path in ['/etc/passwd', '/etc/evil.conf', '/usr/lib/evil.so', '/evil']:\n"
        "    existed = os.path.exists(path)\n"
        "    try:\n"
        "        open(path, 'a').close()  # opening for writing is the breach; write nothing\n"
        "        res[path] = 'writable'\n"
        "        if not existed:\n"
        "            os.unlink(path)\n"
        "    except OSError as err:\n"
        "        res[path] = err.strerror\n"
        "print(json.dumps(res))\n"
    )
    got = report(run(bwrap_box, code))
    for path in ["/etc/passwd", "/etc/evil.conf", "/usr/lib/evil.so", "/evil"]:
        assert got[path] != "writable", path
    assert set(got["etc"]) <= {*ETC_FILES, "passwd", "group"}
    assert "shadow" not in got["etc"]


def test_writes_cannot_escape_the_job_dir(bwrap_box: BubblewrapSandbox, tmp_path: Path) -> None:
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    os.chmod(host_dir, 0o777)  # were the path reachable, permissions would not stop the job
    code = (
        "import json, os, sys\n"
        "os.symlink('..', 'up')\n"
        "os.symlink(sys.argv[1], 'out/host')\n"
        "os.symlink('/etc/hostname', 'out/leak')\n"
        "res = {}\n"
        "targets = {'dotdot': '../escaped-1', 'up': 'up/escaped-2',\n"
        "           'host': sys.argv[1] + '/escaped-3', 'out_host': 'out/host/escaped-4'}\n"
        "for name, path in targets.items():\n"
        "    try:\n"
        "        with open(path, 'w') as fh:\n"
        "            fh.write('x')\n"
        "        res[name] = 'written'\n"
        "    except OSError as err:\n"
        "        res[name] = err.strerror\n"
        "print(json.dumps(res))\n"
    )
    result = run(bwrap_box, code, str(host_dir))
    got = report(result)
    assert got["dotdot"] != "written" and got["up"] != "written"
    job_root = Path(result.artifacts["stdout.log"]).parent
    assert not list(job_root.parent.rglob("escaped-*"))
    assert not list(tmp_path.rglob("escaped-*"))
    assert "out/host" not in result.artifacts and "out/leak" not in result.artifacts


def test_host_home_is_not_visible(bwrap_box: BubblewrapSandbox) -> None:
    home = Path.home()
    code = (  # everything under the home, not descending into the Python install
        "import json, os, sys\n"
        "seen = []\n"
        "for root, dirs, files in os.walk(sys.argv[1]):\n"
        "    seen += [os.path.join(root, n) for n in dirs + files]\n"
        "    dirs[:] = [d for d in dirs if os.path.join(root, d) not in sys.argv[2:]]\n"
        "print(json.dumps({'seen': seen}))\n"
    )
    got = report(run(bwrap_box, code, str(home), *bwrap_box.python_dirs))
    python_dirs = [Path(d) for d in bwrap_box.python_dirs]

    def allowed(p: Path) -> bool:  # the Python install, or a dir on the way to it
        return any(p == d or d in p.parents or p in d.parents for d in python_dirs)

    leaked = [p for p in got["seen"] if not allowed(Path(p))]
    assert leaked == []


def test_memory_bomb_is_oom(bwrap_box: BubblewrapSandbox) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n"
    result = run(bwrap_box, code, limits=Limits(wall_s=20, memory_mb=256))
    assert result.status == "oom", (result.message, result.stderr[-500:])
    assert "MemoryError" in result.stderr


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
    assert "resident memory" in result.message
    assert result.duration_s < 10


def test_fork_bomb_is_contained_and_the_next_job_runs(bwrap_box: BubblewrapSandbox) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    code = (
        "import os, sys\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        sys.exit(3)\n"
    )
    result = run(bwrap_box, code, marker, limits=Limits(wall_s=10, processes=32))
    assert result.status in ("error", "killed"), (result.status, result.message)
    assert_none_left(marker)
    after = run(bwrap_box, "import json\nprint(json.dumps({'alive': True}))\n")
    assert after.status == "ok" and after.metrics == {"alive": True}


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
