"""The backend-independent parts of the sandbox, with no sandboxed process started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sandbox.artifacts as artifacts
from reprodesk.schemas import SANDBOX_NAMES, Job, Limits, UserError
from sandbox import SubprocessSandbox, make_sandbox
from sandbox.artifacts import collect_artifacts
from sandbox.base import (
    Refused,
    StreamCapture,
    check_relpath,
    decide_status,
    job_env,
    launcher_argv,
    lay_out,
    parse_metrics,
)
from sandbox.bwrap import _from_bwrap_exit

# --------------------------------------------------------------------------- capture


def test_short_stream_is_kept_whole() -> None:
    cap = StreamCapture(limit=100)
    cap.feed(b"hello\n")
    cap.feed(b"world\n")
    assert cap.text() == "hello\nworld\n"
    assert not cap.truncated


def test_stream_exactly_at_limit_is_not_truncated() -> None:
    cap = StreamCapture(limit=10)
    cap.feed(b"0123456789")
    assert cap.text() == "0123456789"
    assert not cap.truncated


def test_long_stream_keeps_head_and_tail_with_marker() -> None:
    data = bytes(range(65, 91)) * 1000  # 26_000 bytes of A..Z
    cap = StreamCapture(limit=100)
    for i in range(0, len(data), 7):  # odd chunk sizes: the result must not depend on them
        cap.feed(data[i : i + 7])
    text = cap.text()
    assert cap.truncated
    assert text.startswith(data[:50].decode())
    assert text.endswith(data[-50:].decode())
    assert f"\n... [truncated {len(data) - 100} bytes] ...\n" in text


def test_log_is_saved_capped_and_never_follows_a_planted_file(tmp_path: Path) -> None:
    log = tmp_path / "stdout.log"
    cap = StreamCapture(limit=10, log_path=log, log_cap=1000)
    cap.feed(b"x" * 1500)
    cap.close()
    saved = log.read_bytes()
    assert saved.startswith(b"x" * 1000)
    assert b"[log capped; 500 more bytes not saved]" in saved
    os.symlink("/etc/passwd", tmp_path / "stderr.log")
    with pytest.raises(FileExistsError):
        StreamCapture(limit=10, log_path=tmp_path / "stderr.log")


# --------------------------------------------------------------------------- metrics


def test_metrics_is_the_last_json_object_line() -> None:
    out = '{"loss": 3.0}\nstep 2\n{"loss": 1.5, "ppl": [1, 2]}\n'
    assert parse_metrics(out) == {"loss": 1.5, "ppl": [1, 2]}


def test_metrics_skips_a_non_json_last_line_and_a_json_array_line() -> None:
    out = '{"acc": 0.9}\n[1, 2, 3]\n{not json}\ndone\n'
    assert parse_metrics(out) == {"acc": 0.9}


def test_no_metrics_line_gives_none() -> None:
    assert parse_metrics("hello\n[1]\n42\n") is None
    assert parse_metrics("") is None


# --------------------------------------------------------------------------- job dir


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../escape.py", "a/../../b.py", "a/..", "", "bad\0name"]
)
def test_unsafe_file_names_are_refused(name: str) -> None:
    with pytest.raises(Refused):
        check_relpath(name)


def test_refused_job_writes_nothing(tmp_path: Path) -> None:
    job = Job(files={"ok.py": "x", "../evil.py": "y"}, argv=["python", "ok.py"])
    with pytest.raises(Refused, match=r"'\.\.'"):
        lay_out(job, tmp_path / "work")
    assert not (tmp_path / "evil.py").exists()
    assert not (tmp_path / "work").exists()  # names are checked before anything is created


def test_subprocess_backend_returns_refused_for_an_absolute_name(tmp_path: Path) -> None:
    box = SubprocessSandbox(tmp_path)
    result = box.run(Job(files={"/tmp/x.py": "print(1)"}, argv=["python", "/tmp/x.py"]))
    assert result.status == "refused"
    assert "absolute" in result.message


def test_lay_out_writes_nested_files_and_keeps_logs_outside_the_job_view(tmp_path: Path) -> None:
    job = Job(files={"main.py": "print(1)", "pkg/mod.py": "X = 1"}, argv=["python", "main.py"])
    jd = lay_out(job, tmp_path)
    assert (jd.work / "pkg" / "mod.py").read_text() == "X = 1"
    assert jd.out.is_dir() and jd.out.parent == jd.work
    assert jd.work not in jd.stdout_log.parents
    assert (jd.root / "owner").read_text().split(":")[1] == str(os.getpid())
    assert jd.work not in (jd.root / "owner").parents


# --------------------------------------------------------------------------- status

LIMITS = Limits(wall_s=3, memory_mb=256)


@pytest.mark.parametrize(
    ("code", "timed_out", "oom_killed", "stderr", "status"),
    [
        (0, False, False, "", "ok"),
        (0, False, False, "warning: MemoryError mentioned but handled", "ok"),
        (1, False, False, "ZeroDivisionError: division by zero", "error"),
        (1, False, False, "Traceback ...\nMemoryError", "oom"),
        (
            1,
            False,
            False,
            "RuntimeError: [enforce fail] DefaultCPUAllocator: can't allocate",
            "oom",
        ),
        (134, False, False, "OSError: [Errno 12] Cannot allocate memory", "oom"),
        (-9, False, True, "", "oom"),
        (-11, False, False, "", "killed"),
        (-9, True, False, "MemoryError", "timeout"),
    ],
)
def test_status_mapping(
    code: int, timed_out: bool, oom_killed: bool, stderr: str, status: str
) -> None:
    got, message = decide_status(
        code, timed_out=timed_out, oom_killed=oom_killed, stderr=stderr, limits=LIMITS
    )
    assert got == status
    assert message


def test_quota_comes_after_the_wall_time_and_before_memory() -> None:
    over = "disk quota of 64 MB exceeded (job folder, /tmp and /dev/shm held 70 MB)"
    assert decide_status(
        -9, timed_out=False, oom_killed=True, stderr="", limits=LIMITS, quota=over
    ) == ("quota", over)
    assert (
        decide_status(-9, timed_out=True, oom_killed=False, stderr="", limits=LIMITS, quota=over)[0]
        == "timeout"
    )
    full = decide_status(
        1,
        timed_out=False,
        oom_killed=False,
        stderr="OSError: [Errno 28] No space left on device",
        limits=Limits(memory_mb=256, tmpfs_mb=64, disk_mb=100),
    )
    assert full[0] == "quota" and "64 MB each" in full[1] and "100 MB" in full[1]
    # A full tmpfs seen by the meter, whatever the job printed; exit 0 stays ok.
    assert (
        decide_status(
            1, timed_out=False, oom_killed=False, stderr="", limits=LIMITS, tmpfs_full=True
        )[0]
        == "quota"
    )
    assert (
        decide_status(
            0, timed_out=False, oom_killed=False, stderr="", limits=LIMITS, tmpfs_full=True
        )[0]
        == "ok"
    )


def test_status_messages_name_the_cause() -> None:
    assert (
        "SIGSEGV"
        in decide_status(-11, timed_out=False, oom_killed=False, stderr="", limits=LIMITS)[1]
    )
    assert "3 s" in decide_status(-9, timed_out=True, oom_killed=False, stderr="", limits=LIMITS)[1]
    error = decide_status(
        1, timed_out=False, oom_killed=False, stderr="a\nValueError: bad\n", limits=LIMITS
    )
    assert error[1] == "exit code 1: ValueError: bad"


@pytest.mark.parametrize(("code", "normalised"), [(0, 0), (1, 1), (137, -9), (139, -11), (-9, -9)])
def test_bwrap_signal_exit_codes_become_negative(code: int, normalised: int) -> None:
    assert _from_bwrap_exit(code) == normalised


# --------------------------------------------------------------------------- artifacts


def test_artifacts_are_regular_files_under_out_only(tmp_path: Path) -> None:
    jd = lay_out(Job(files={"main.py": ""}, argv=["python", "main.py"]), tmp_path)
    (jd.out / "plot.png").write_bytes(b"png")
    (jd.out / "sub").mkdir()
    (jd.out / "sub" / "table.csv").write_text("a,b")
    os.symlink("/etc/passwd", jd.out / "leak")
    (jd.work / "not_out.txt").write_text("x")
    jd.stdout_log.write_text("log")
    found, refused = collect_artifacts(jd.work, {"stdout": jd.stdout_log, "stderr": jd.stderr_log})
    assert found == {
        "out/plot.png": str(jd.out / "plot.png"),
        "out/sub/table.csv": str(jd.out / "sub" / "table.csv"),
        "logs/stdout.log": str(jd.stdout_log),
    }
    assert refused == {}


def test_out_replaced_by_a_symlink_yields_nothing(tmp_path: Path) -> None:
    jd = lay_out(Job(files={}, argv=["true"]), tmp_path)
    jd.out.rmdir()
    os.symlink("/etc", jd.out)
    assert collect_artifacts(jd.work, {}) == ({}, {})


def test_artifact_count_and_size_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts, "MAX_ARTIFACTS", 3)
    monkeypatch.setattr(artifacts, "MAX_ARTIFACT_BYTES", 10)
    jd = lay_out(Job(files={}, argv=["true"]), tmp_path)
    for i in range(5):
        (jd.out / f"f{i}.txt").write_text("small")
    (jd.out / "big.bin").write_bytes(b"x" * 11)
    found, refused = collect_artifacts(jd.work, {})
    assert sorted(found) == ["out/f0.txt", "out/f1.txt", "out/f2.txt"]
    assert refused == {
        "out/big.bin": "larger than 0 MB",
        "out/f3.txt": "more than 3 artifacts",
        "out/f4.txt": "more than 3 artifacts",
    }


# --------------------------------------------------------------------------- launch


def test_file_size_limit_is_never_above_the_disk_quota() -> None:
    argv = launcher_argv(
        "/py",
        ["python", "x.py"],
        Limits(file_size_mb=256, disk_mb=64),
        gpu=False,
        nproc=True,
        uid=None,
    )
    assert argv[7] == str(64 << 20)


def test_launcher_maps_python_and_sets_limits() -> None:
    limits = Limits(memory_mb=100, processes=7, file_size_mb=2)
    argv = launcher_argv(
        "/py", ["python", "train.py", "python"], limits, gpu=False, nproc=True, uid=65534
    )
    assert argv[:4] == ["/py", "-I", "-S", "-c"]
    assert argv[5:] == [
        str(100 << 20),
        "7",
        str(2 << 20),
        "0",
        "65534",
        "-1",
        "/py",
        "train.py",
        "python",
    ]


def test_gpu_jobs_get_no_address_space_limit_and_subprocess_no_nproc() -> None:
    argv = launcher_argv("/py", ["nvidia-smi"], Limits(), gpu=True, nproc=False, uid=None)
    assert argv[5:7] == ["-1", "-1"]
    assert argv[9:] == ["-1", "-1", "nvidia-smi"]


def test_job_env_is_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    env = job_env(home="/tmp", python_bin="/venv/bin")
    assert "sk-secret" not in env.values()
    assert env["HOME"] == "/tmp" and env["PATH"].startswith("/venv/bin:")
    assert set(env) == {
        "PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND", "MPLCONFIGDIR",
    }  # fmt: skip


# --------------------------------------------------------------------------- factory


def test_docker_backend_without_the_image_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"Docker engine|sandbox image"):
        make_sandbox("docker", tmp_path, image="reprodesk-sandbox:no-such-tag")


def test_unknown_backend_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=", ".join(SANDBOX_NAMES)):
        make_sandbox("firejail", tmp_path)


def test_subprocess_backend_only_by_its_name(tmp_path: Path) -> None:
    assert make_sandbox("subprocess", tmp_path).name == "subprocess"
