"""Real jobs that attack the sandbox, one property a test, on every backend where it applies.

The backends: cold bubblewrap ("bwrap"), the warm worker ("bwrap-warm"), Docker
("docker", with the image `scripts/docker-engine.sh` builds) and the unisolated
subprocess backend ("subprocess": only the tests marked for every backend, those
that do not rely on isolation). A backend that cannot run here is skipped with the
reason. Isolation (namespaces, network, file system, uid) is in
test_sandbox_isolation.py beside this file; backend-specific behaviour in
tests/integration/test_sandbox_{bwrap,worker,docker}.py. The only network traffic is to
a server these tests run on 127.0.0.1. The bombs are small: quotas of 64 MB against
jobs that try 200 MB.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest

from sandbox import Sandbox
from sandbox.artifacts import LOG_KEYS, copy_artifacts
from sandbox.retention import remove_job_dirs
from tests.sandbox_jobs import assert_none_left, report
from tests.sandbox_suite import ALIVE, SMALL_MEMORY_MB, limits, run

# =========================================================================== every backend


def test_trivial_script_is_ok_with_metrics_artifacts_and_its_dir(any_box: Sandbox) -> None:
    code = (
        "import json, os\n"
        "print('hi')\n"
        "os.makedirs('out/sub')\n"
        "open('out/sub/result.txt', 'w').write('42')\n"
        "print(json.dumps({'answer': 42}))\n"
    )
    result = run(any_box, code)
    assert result.status == "ok", (result.message, result.stderr)
    assert result.exit_code == 0
    assert result.metrics == {"answer": 42}
    assert result.backend == any_box.name == result.environment["backend"]
    assert Path(result.artifacts["out/sub/result.txt"]).read_text() == "42"
    assert Path(result.artifacts[LOG_KEYS["stdout"]]).read_text().startswith("hi\n")
    assert Path(result.workdir).is_dir()
    assert Path(result.artifacts["out/sub/result.txt"]).is_relative_to(result.workdir)
    assert result.peak_disk_mb is not None and result.peak_disk_mb < 1


def test_failing_script_is_an_error_with_the_exception(any_box: Sandbox) -> None:
    result = run(any_box, "1 / 0\n")
    assert result.status == "error"
    assert result.exit_code == 1
    assert "ZeroDivisionError" in result.message


def test_infinite_loop_hits_the_wall_time_and_leaves_nothing(any_box: Sandbox) -> None:
    marker = f"spin-{uuid.uuid4().hex}"
    code = "import os\nos.fork()\nwhile True:\n    pass\n"  # two spinning processes
    result = run(any_box, code, marker, lim=limits(any_box, wall_s=2))
    assert result.status == "timeout", (result.status, result.message)
    assert_none_left(marker)


def test_host_secret_env_var_is_not_visible(
    any_box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret-123")
    code = (
        "import json, os\n"
        "environ = open('/proc/self/environ', 'rb').read().decode()\n"
        "try:  # the sandbox's init, where the job may read it\n"
        "    environ += open('/proc/1/environ', 'rb').read().decode(errors='replace')\n"
        "except OSError:\n"
        "    pass\n"
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
    result = run(any_box, code, lim=limits(any_box, output_bytes=20_000))
    assert result.status == "ok"
    assert result.truncated
    assert result.stdout.startswith("HEAD-OF-OUTPUT\n")
    assert "TAIL-OF-OUTPUT" in result.stdout[-200:]
    assert "... [truncated " in result.stdout
    assert len(result.stdout.encode()) < 20_000 + 100
    assert result.metrics == {"done": True}  # the tail holds the metrics line
    assert Path(result.artifacts[LOG_KEYS["stdout"]]).stat().st_size > 1_000_000


def test_file_size_limit_stops_a_big_file(any_box: Sandbox) -> None:
    code = (
        "with open('out/big.bin', 'wb') as fh:\n"
        "    for _ in range(64):\n"
        "        fh.write(b'x' * 2**20)\n"
    )
    result = run(any_box, code, lim=limits(any_box, file_size_mb=2))
    assert result.status == "error", (result.status, result.message)
    assert "File too large" in result.message
    assert Path(result.artifacts["out/big.bin"]).stat().st_size <= 2 * 2**20


# --------------------------------------------------------------------------- break 1


def test_setuid_artifact_arrives_as_plain_data(any_box: Sandbox, tmp_path: Path) -> None:
    """Break 1: a job's setuid copy of a system binary must not become a setuid file of ours."""
    code = (
        "import json, os, shutil, sys\n"
        "shutil.copy(sys.argv[1], 'out/evil')\n"
        "os.chmod('out/evil', 0o4755)\n"
        "shutil.copy(sys.argv[1], 'out/evil-group')\n"
        "os.chmod('out/evil-group', 0o2775)\n"
        "print(json.dumps({'modes': [oct(os.stat(p).st_mode) for p in\n"
        "                            ('out/evil', 'out/evil-group')]}))\n"
    )
    binary = os.path.realpath(shutil.which("true") or "/bin/true")
    result = run(any_box, code, binary)
    assert result.status == "ok", (result.message, result.stderr)
    source = Path(result.artifacts["out/evil"])
    assert source.stat().st_mode & stat.S_ISUID  # the job did make it setuid
    dest = tmp_path / "results" / "main" / "artifacts"
    copied = copy_artifacts(result, dest)
    assert sorted(copied.copied) == ["evil", "evil-group"] and copied.refused == []
    for name in ("evil", "evil-group"):
        st = os.lstat(dest / name)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o644, oct(st.st_mode)
        assert st.st_uid == os.getuid()
    assert (dest / "evil").read_bytes() == Path(binary).read_bytes()


def test_forged_result_json_does_not_change_the_recorded_status(
    any_box: Sandbox, tmp_path: Path
) -> None:
    """Break 1: a job that times out and writes out/result.json saying ok stays a timeout."""
    code = (
        "import json, os, time\n"
        "os.makedirs('out/a')\n"
        "os.makedirs('out/b')\n"
        "forged = {'status': 'ok', 'exit_code': 0, 'message': 'all good'}\n"
        "for name in ('out/result.json', 'out/metrics.json', 'out/a/x', 'out/b/x'):\n"
        "    with open(name, 'w') as fh:\n"
        "        json.dump({**forged, 'name': name}, fh)\n"
        "time.sleep(60)\n"
    )
    result = run(any_box, code, lim=limits(any_box, wall_s=2))
    assert result.status == "timeout"
    # What publish does: host records in results/<key>/, the job's files in artifacts/.
    results = tmp_path / "results" / "main"
    results.mkdir(parents=True)
    (results / "result.json").write_text(result.model_dump_json())
    (results / "metrics.json").write_text(json.dumps(result.metrics))
    copied = copy_artifacts(result, results / "artifacts")
    assert sorted(copied.copied) == ["a/x", "b/x", "metrics.json", "result.json"]
    recorded = json.loads((results / "result.json").read_text())
    assert recorded["status"] == "timeout"
    assert json.loads((results / "metrics.json").read_text()) is None
    assert json.loads((results / "artifacts" / "a" / "x").read_text())["name"] == "out/a/x"
    assert json.loads((results / "artifacts" / "b" / "x").read_text())["name"] == "out/b/x"


def test_artifact_names_with_control_characters_are_refused_and_recorded(
    any_box: Sandbox, tmp_path: Path
) -> None:
    code = (
        "import os\n"
        "open('out/red\\x1b[31malert', 'w').write('x')\n"
        "open('out/two\\nlines', 'w').write('x')\n"
        "open(b'out/not-utf8-\\xff', 'w').write('x')\n"
        "open('out/fine.txt', 'w').write('x')\n"
    )
    result = run(any_box, code)
    assert result.status == "ok", (result.message, result.stderr)
    assert [n for n in result.artifacts if n.startswith("out/")] == ["out/fine.txt"]
    assert set(result.artifacts_refused) == {
        "out/red\\x1b[31malert",
        "out/two\\nlines",
        "out/not-utf8-\\udcff",
    }
    assert all("control" in why for why in result.artifacts_refused.values())
    json.loads(result.model_dump_json())  # the refusals store as JSON
    assert copy_artifacts(result, tmp_path / "artifacts").copied == ["fine.txt"]


# --------------------------------------------------------------------------- break 2


def test_disk_bomb_of_many_small_files_ends_with_status_quota(any_box: Sandbox) -> None:
    """Break 2: files each under the per-file limit must not add up past the disk quota."""
    code = (
        "import os, time\n"
        "os.makedirs('out/bomb')\n"
        "for i in range(200):  # 200 MB in 1 MB files, against a 64 MB quota\n"
        "    with open(f'out/bomb/{i:03d}.bin', 'wb') as fh:\n"
        "        fh.write(os.urandom(2**20))\n"
        "time.sleep(60)  # stopped by the quota, not by the wall time\n"
    )
    result = run(any_box, code, lim=limits(any_box, disk_mb=64, file_size_mb=16))
    assert result.status == "quota", (result.status, result.message, result.stderr[-500:])
    assert "disk quota of 64 MB exceeded" in result.message
    assert result.peak_disk_mb is not None and result.peak_disk_mb > 64


def test_a_job_dir_is_removed_whatever_the_job_left_in_it(any_box: Sandbox, tmp_path: Path) -> None:
    """Break 2: job folders go once published, even with 000 dirs and links to host files."""
    keep = tmp_path / "host-file"
    keep.write_text("must survive")
    code = (
        "import os, sys\n"
        "os.makedirs('out/locked/deeper')\n"
        "open('out/locked/deeper/f', 'w').write('x')\n"
        "os.symlink(sys.argv[1], 'out/link')\n"
        "os.makedirs('out/ro')\n"
        "open('out/ro/g', 'w').write('x')\n"
        "os.chmod('out/ro', 0o555)\n"
        "os.chmod('out/locked/deeper', 0)\n"
        "os.chmod('out/locked', 0)\n"
    )
    result = run(any_box, code, str(keep))
    assert result.status == "ok", (result.message, result.stderr)
    workdir = Path(result.workdir)
    assert (workdir / "job" / "out" / "ro").is_dir()
    jobs_root = workdir.parent
    assert remove_job_dirs(jobs_root, [result.workdir, "/etc", str(jobs_root)]) == 1
    assert not os.path.lexists(workdir)
    assert keep.read_text() == "must survive"
    assert jobs_root.is_dir()


# =========================================================================== isolating backends


def test_tmpfs_bomb_ends_with_status_quota(box: Sandbox) -> None:
    """Break 3: /tmp and /dev/shm are small tmpfs mounts; filling one is a clear 'quota'."""
    code = (
        "import sys\n"
        "with open(sys.argv[1], 'wb') as fh:\n"
        "    for _ in range(200):  # 200 MB into a 64 MB tmpfs\n"
        "        fh.write(b'x' * 2**20)\n"
    )
    for where in ("/tmp/bomb", "/dev/shm/bomb"):
        result = run(box, code, where, lim=limits(box, tmpfs_mb=64))
        assert result.status == "quota", (where, result.status, result.message)
        assert "out of space" in result.message and "64 MB each" in result.message


def test_what_a_job_keeps_in_tmpfs_counts_against_its_memory(box: Sandbox) -> None:
    """Break 3: tmpfs pages are RAM: with them the job passes its memory limit and is oom."""
    memory = SMALL_MEMORY_MB[box.name]
    code = (
        "import sys, time\n"
        "each = int(sys.argv[1]) * 6 // 10  # 60% of the memory limit into each tmpfs\n"
        "for where in ('/tmp', '/dev/shm'):\n"
        "    for i in range(each):  # 1 MB files: no file reaches the per-file limit\n"
        "        with open(f'{where}/ballast-{i}', 'wb') as fh:\n"
        "            fh.write(b'x' * 2**20)\n"
        "time.sleep(60)\n"
    )
    lim = limits(box, memory_mb=memory, tmpfs_mb=memory)
    result = run(box, code, str(memory), lim=lim)
    assert result.status == "oom", (result.status, result.message, result.stderr[-500:])


def test_memory_bomb_is_oom(box: Sandbox) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n"
    result = run(box, code, lim=limits(box, memory_mb=SMALL_MEMORY_MB[box.name]))
    assert result.status == "oom", (result.status, result.message, result.stderr[-500:])


def test_fork_bomb_is_contained_and_its_peak_memory_is_not_counted_per_copy(
    box: Sandbox,
) -> None:
    """Break 3: thirty copies of one interpreter share their pages; PSS counts them once."""
    marker = f"bomb-{uuid.uuid4().hex}"
    code = (
        "import json, os, time\n"
        "forked = 0\n"
        "try:\n"
        "    for _ in range(1000):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "except OSError as err:\n"
        "    time.sleep(1)  # the children are all there for the meter to see\n"
        "    print(json.dumps({'forked': forked, 'error': err.strerror}))\n"
    )
    lim = limits(box, processes=32)
    result = run(box, code, marker, lim=lim)
    got = report(result)
    assert result.status == "ok", (result.status, result.message)
    assert 5 <= got["forked"] < 32
    assert got["error"] == "Resource temporarily unavailable"
    assert result.peak_memory_mb is not None and result.peak_memory_mb < lim.memory_mb
    assert_none_left(marker)
    assert run(box, ALIVE).metrics == {"alive": True}
