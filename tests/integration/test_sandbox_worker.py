"""Real jobs in the warm worker: what is particular to `WarmWorkerSandbox`.

The properties every backend shares are attacked in sandbox/test_sandbox_adversarial.py. The
worker is one long-lived sandbox, so these tests check what a warm worker could get
wrong: a job outliving its turn, one job seeing
another's files or processes, the worker not surviving a job (or not coming back
when it dies). Skipped, with the reason, where bubblewrap cannot start a sandbox. The
only network traffic is to a server these tests run on 127.0.0.1.
"""

from __future__ import annotations

import builtins
import os
import signal
import subprocess
import symtable
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox.worker
from reprodesk.schemas import Job, Limits, RunResult
from sandbox.meter import process_tree
from sandbox.worker import WarmWorkerSandbox, python_mode
from sandbox.worker_inside import worker_source
from tests.sandbox_jobs import assert_no_stray_child, bwrap_works_or_skip, processes_with, report

# RLIMIT_AS counts the preloaded torch (about 0.6 GB of address space) in every job.
FAST = Limits(wall_s=20, memory_mb=2048, output_bytes=64_000)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarmWorkerSandbox]:
    bwrap_works_or_skip()
    sandbox = WarmWorkerSandbox(tmp_path_factory.mktemp("warm-jobs"))
    sandbox.start()
    yield sandbox
    sandbox.close()
    assert sandbox.worker_pid is None


def run(box: WarmWorkerSandbox, code: str, *args: str, limits: Limits = FAST) -> RunResult:
    return box.run(Job(files={"main.py": code}, argv=["python", "main.py", *args], limits=limits))


def assert_worker_idle(box: WarmWorkerSandbox, pid: int) -> None:
    """The same worker is up, and nothing of any job is left under it.

    An idle worker's tree is our helper (`bwrap.die_with_us`), bwrap, the sandbox's
    init, and the worker's Python.
    """
    assert box.worker_pid == pid
    deadline = time.monotonic() + 2.0
    while len(process_tree(pid)) != 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(process_tree(pid)) == 4, process_tree(pid)


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    assert_no_stray_child()


ALIVE = "import json\nprint(json.dumps({'alive': True}))\n"


# --------------------------------------------------------------------------- results


def test_trivial_script_is_ok_with_metrics_and_artifacts(box: WarmWorkerSandbox) -> None:
    code = (
        "import json, os, sys\n"
        "print('hi')\n"
        "open('out/result.txt', 'w').write('42')\n"
        "print(json.dumps({'answer': 42, 'args': sys.argv[1:], 'cwd': os.getcwd()}))\n"
    )
    result = run(box, code, "--seed", "3")
    assert result.status == "ok", result.stderr
    assert result.exit_code == 0
    assert result.metrics == {"answer": 42, "args": ["--seed", "3"], "cwd": "/job"}
    assert Path(result.artifacts["out/result.txt"]).read_text() == "42"
    assert result.backend == box.name == result.environment["backend"]
    assert result.environment["preloaded"].startswith("torch ")
    assert result.peak_memory_mb is not None and result.peak_memory_mb > 1


def test_failing_script_is_an_error_without_worker_frames(box: WarmWorkerSandbox) -> None:
    result = run(box, "import sys\nprint('x', file=sys.stderr)\n1 / 0\n")
    assert result.status == "error"
    assert result.exit_code == 1
    assert "ZeroDivisionError" in result.message
    assert 'File "/job/main.py", line 3' in result.stderr
    assert "reprodesk-worker" not in result.stderr and "runpy" not in result.stderr


@pytest.mark.slow
def test_torch_is_already_imported_and_runs_after_the_fork(box: WarmWorkerSandbox) -> None:
    code = (
        "import json, sys, time\n"
        "preloaded = 'torch' in sys.modules\n"
        "start = time.perf_counter()\n"
        "import torch\n"
        "import_s = time.perf_counter() - start\n"
        "a = torch.ones(256, 512)  # (256, 512)\n"
        "b = torch.ones(512, 128)  # (512, 128)\n"
        "c = a @ b                 # (256, 128), every entry 512; uses the thread pool\n"
        "print(json.dumps({'preloaded': preloaded, 'import_s': import_s,\n"
        "                  'sum': c.sum().item(), 'threads': torch.get_num_threads()}))\n"
    )
    got = report(run(box, code))
    assert got["preloaded"] is True
    assert got["import_s"] < 0.01  # a dict lookup, not the 1+ s import
    assert got["sum"] == 256 * 128 * 512
    assert got["threads"] >= 1


# --------------------------------------------------------------------------- limits


def test_infinite_loop_times_out_and_the_worker_survives(box: WarmWorkerSandbox) -> None:
    pid = box.worker_pid
    assert pid is not None
    # Two spinners, one in a session of its own: a process group kill would miss it.
    code = "import os\nif os.fork() == 0:\n    os.setsid()\nwhile True:\n    pass\n"
    started = time.monotonic()
    result = run(box, code, limits=Limits(wall_s=2, memory_mb=2048))
    assert result.status == "timeout", (result.message, result.stderr)
    assert 2 <= time.monotonic() - started < 6
    assert_worker_idle(box, pid)  # the escaped spinner went with the job's pid namespace
    assert run(box, ALIVE).metrics == {"alive": True}


def test_memory_limit_below_the_preloaded_baseline_says_so(box: WarmWorkerSandbox) -> None:
    result = run(box, ALIVE, limits=Limits(wall_s=20, memory_mb=256))
    assert result.status == "oom"
    assert "below the address space" in result.message


def test_fork_bomb_is_contained_and_the_next_job_runs(box: WarmWorkerSandbox) -> None:
    pid = box.worker_pid
    assert pid is not None
    code = (
        "import os, sys\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        sys.exit(3)\n"
    )
    result = run(box, code, limits=Limits(wall_s=10, memory_mb=2048, processes=32))
    assert result.status in ("error", "killed"), (result.status, result.message)
    assert_worker_idle(box, pid)
    assert run(box, ALIVE).metrics == {"alive": True}


# --------------------------------------------------------------------------- isolation


def test_a_job_cannot_read_another_jobs_files_or_processes(box: WarmWorkerSandbox) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    first = (
        "import json, os, sys, time\n"
        "for path in ('keep.txt', 'out/keep.txt', '/tmp/keep.txt', '/dev/shm/keep.txt'):\n"
        "    with open(path, 'w') as fh:\n"
        "        fh.write(sys.argv[1])\n"
        "os.chmod('.', 0o777)\n"
        "os.chmod('keep.txt', 0o666)\n"
        "if os.fork() == 0:  # a process that outlives the job, holding the secret\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "print(json.dumps({'pid': os.getpid()}))\n"
    )
    earlier = run(box, first, secret)
    assert earlier.status == "ok", earlier.stderr
    earlier_dir = Path(earlier.artifacts["logs/stdout.log"]).parent
    assert (earlier_dir / "job" / "keep.txt").read_text() == secret  # it was there to find
    # Owner-only dirs would stop uid 65534 anyway; open them so that this tests the
    # namespace (not root: every job has the same uid and permissions stop nothing).
    for path in (earlier_dir.parent, earlier_dir):
        os.chmod(path, 0o755)
    second = (
        "import json, os, sys\n"
        "secret, name, host_path = sys.argv[1:4]\n"
        "found, skip = [], {'/proc', '/sys', '/usr', '/dev', *sys.argv[4:]}\n"
        "for root, dirs, files in os.walk('/'):\n"
        "    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]\n"
        "    for name in files:\n"
        "        path = os.path.join(root, name)\n"
        "        try:\n"
        "            with open(path, 'rb') as fh:\n"
        "                if secret.encode() in fh.read(1 << 20):\n"
        "                    found.append(path)\n"
        "        except OSError:\n"
        "            pass\n"
        "tries = {}\n"
        "for path in ('/jobs/' + name + '/job/keep.txt', host_path + '/job/keep.txt'):\n"
        "    try:\n"
        "        tries[path] = open(path).read()\n"
        "    except OSError as err:\n"
        "        tries[path] = err.strerror\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print(json.dumps({'found': found, 'tries': tries, 'pids': pids,\n"
        "                  'tmp': os.listdir('/tmp'), 'shm': os.listdir('/dev/shm')}))\n"
    )
    got = report(run(box, second, secret, earlier_dir.name, str(earlier_dir), *box.python_dirs))
    assert got["found"] == []
    assert secret not in str(got["tries"].values())
    assert got["pids"] == [1, 2]  # its init and itself: nothing of the earlier job
    # /tmp is fresh: empty but for the way to a Python install that lives under /tmp
    via_tmp = {
        Path(d).relative_to("/tmp").parts[0] for d in box.python_dirs if d.startswith("/tmp/")
    }
    assert sorted(got["tmp"]) == sorted(via_tmp) and got["shm"] == []


def test_a_job_sees_no_worker_channel_and_runs_as_nobody(box: WarmWorkerSandbox) -> None:
    code = (
        "import json, os\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "uid_map = [line.split() for line in open('/proc/self/uid_map')]\n"
        "host_uid = [int(h) for ns, h, n in uid_map if int(ns) <= os.getuid() < int(ns) + int(n)]\n"
        "res = {'fds': sorted(os.listdir('/proc/self/fd')), 'uid': os.getuid(),\n"
        "       'gid': os.getgid(), 'groups': os.getgroups(), 'host_uid': host_uid,\n"
        "       'nnp': status['NoNewPrivs'].strip(),\n"
        "       'caps': [status[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd',\n"
        "                                            'CapAmb')]}\n"
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "res['userns'] = libc.unshare(0x10000000) == 0 or os.strerror(ctypes.get_errno())\n"
        "for path in ('/proc/1/fd', '/proc/1/environ', '/proc/1/root/jobs'):\n"
        "    try:\n"
        "        res[path] = str(open(path).read() if 'environ' in path else os.listdir(path))\n"
        "    except OSError as err:\n"
        "        res[path] = err.strerror\n"
        "print(json.dumps(res))\n"
    )
    got = report(run(box, code))
    assert got["fds"] == ["0", "1", "2", "3"]  # 3 is the listing itself
    for path in ("/proc/1/fd", "/proc/1/environ", "/proc/1/root/jobs"):
        assert got[path] == "Permission denied", (path, got[path])
    assert (got["uid"], got["gid"], got["groups"]) == (65534, 65534, [])
    assert got["caps"] == ["0000000000000000"] * 5  # none now, none after an exec
    assert got["nnp"] == "1"
    assert got["userns"] is not True  # no nested user namespace to be root in
    assert got["host_uid"] == [65534 if os.geteuid() == 0 else os.geteuid()]


def test_host_secret_env_var_is_not_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bwrap_works_or_skip()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret-123")
    code = (
        "import json, os\n"
        "environ = open('/proc/self/environ', 'rb').read().decode()\n"
        "print(json.dumps({'key': os.environ.get('OPENAI_API_KEY'),\n"
        "                  'leaked': 'sk-host-secret' in environ, 'names': sorted(os.environ)}))\n"
    )
    with WarmWorkerSandbox(tmp_path, preload=()) as fresh:  # started with the secret set
        got = report(run(fresh, code))
    assert got["key"] is None
    assert got["leaked"] is False
    assert "OPENAI_API_KEY" not in got["names"]
    assert "HOME" in got["names"]  # the allow-list, not an empty env


def test_rss_watchdog_kills_a_gpu_job_over_its_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bwrap_works_or_skip()
    # A GPU job has no RLIMIT_AS; pretend /dev/null is the GPU to reach the watchdog,
    # in a worker without torch (whose resident pages alone would pass 192 MB).
    monkeypatch.setattr(sandbox.worker, "gpu_devices", lambda: ["/dev/null"])
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
    with WarmWorkerSandbox(tmp_path, preload=()) as gpu_box:
        result = gpu_box.run(job)
        pid = gpu_box.worker_pid
        assert pid is not None
        assert_worker_idle(gpu_box, pid)
    assert result.status == "oom", (result.message, result.stderr[-500:])
    assert "memory (the processes' PSS plus /tmp and /dev/shm) passed" in result.message
    assert result.duration_s < 10


# --------------------------------------------------------------------------- the worker


def test_a_job_that_exits_hard_or_attacks_its_parents_does_not_stop_the_next(
    box: WarmWorkerSandbox,
) -> None:
    pid = box.worker_pid
    assert pid is not None
    hard = run(box, "import os\nos._exit(7)\n")
    assert (hard.status, hard.exit_code) == ("error", 7)
    code = (
        "import json, os, signal\n"
        "res = {}\n"
        "for name, target in (('parent', os.getppid()), ('init', 1), ('everyone', -1)):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "        res[name] = 'sent'\n"
        "    except OSError as err:\n"
        "        res[name] = err.strerror\n"
        "print(json.dumps(res))\n"
    )
    got = report(run(box, code))
    # The worker is not in the job's pid namespace; its init is not the job's to kill.
    assert got["parent"] == got["init"] == "Operation not permitted"
    assert_worker_idle(box, pid)
    assert run(box, ALIVE).metrics == {"alive": True}


def test_a_dead_worker_is_restarted_by_the_next_job(box: WarmWorkerSandbox) -> None:
    pid = box.worker_pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while box.worker_pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.worker_pid is None
    result = run(box, ALIVE)
    assert result.metrics == {"alive": True}, (result.message, result.stderr)
    assert box.worker_pid not in (None, pid)


def test_a_worker_killed_during_a_job_reports_it_and_comes_back(box: WarmWorkerSandbox) -> None:
    pid = box.worker_pid
    assert pid is not None
    killer = threading.Timer(1.0, os.killpg, (pid, signal.SIGKILL))
    killer.start()
    try:
        result = run(box, "import time\ntime.sleep(30)\n")
    finally:
        killer.cancel()
    assert result.status == "error"
    assert "worker died" in result.message
    assert run(box, ALIVE).metrics == {"alive": True}
    assert box.worker_pid not in (None, pid)


def test_the_worker_and_its_job_die_with_the_host(tmp_path: Path) -> None:
    bwrap_works_or_skip()
    marker = f"no_such_module_{uuid.uuid4().hex}"  # in the worker's argv, so in every fork's
    host = (
        "import sys\n"
        "from pathlib import Path\n"
        "from reprodesk.schemas import Job, Limits\n"
        "from sandbox.worker import WarmWorkerSandbox\n"
        "box = WarmWorkerSandbox(Path(sys.argv[1]), preload=('json', sys.argv[2]))\n"
        "box.start()\n"
        "print(box.worker_pid, flush=True)\n"
        "job = Job(files={'main.py': 'import time; time.sleep(60)'},\n"
        "          argv=['python', 'main.py'], limits=Limits(wall_s=120))\n"
        "box.run(job)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", host, str(tmp_path), marker],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        worker_pid = int(proc.stdout.readline())
        deadline = time.monotonic() + 10  # the worker, its job's init and the job
        while len(processes_with(marker)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(processes_with(marker)) >= 3, processes_with(marker)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while (processes_with(marker) or pid_exists(worker_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []
    assert not pid_exists(worker_pid)


def pid_exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- no sandbox


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["python", "mla.py", "--out", "out"], ("script", ["mla.py", "--out", "out"])),
        (["python3", "-m", "json.tool", "x"], ("module", ["json.tool", "x"])),
        (["python", "-c", "print(1)", "a"], ("code", ["print(1)", "a"])),
        (["python", "-u", "mla.py"], ("exec", ["/py", "-u", "mla.py"])),
        (["sh", "-c", "python x"], ("exec", ["sh", "-c", "python x"])),
        (["python"], ("exec", ["/py"])),
    ],
)
def test_which_commands_run_warm(argv: list[str], expected: tuple[str, list[str]]) -> None:
    assert python_mode(argv, "/py") == expected


def test_the_shipped_worker_code_names_only_what_it_ships() -> None:
    """The worker runs from source with a prelude of imports: no name may be missing."""
    source = worker_source()
    table = symtable.symtable(source, "<reprodesk-worker>", "exec")
    defined = set(dir(builtins)) | {
        s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()
    }
    missing: set[str] = set()
    todo = list(table.get_children())
    while todo:
        scope = todo.pop()
        todo.extend(scope.get_children())
        missing |= {s.get_name() for s in scope.get_symbols() if s.is_global()} - defined
    assert missing == set()
    assert source.rstrip().endswith("_w_main()")
