"""`copy_artifacts`: a job's files come out as plain data, or are refused with a reason.

The job folders here are laid out by hand, as a hostile job would leave them; no
sandboxed process runs (the adversarial suite does that on every backend).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reprodesk.schemas import Job, RunResult
from sandbox.artifacts import (
    LOG_KEYS,
    artifact_name_problem,
    collect_artifacts,
    copy_artifacts,
)
from sandbox.base import JobDir, lay_out


@pytest.fixture
def jd(tmp_path: Path) -> JobDir:
    return lay_out(Job(files={"main.py": "pass"}, argv=["python", "main.py"]), tmp_path / "jobs")


def result_for(jd: JobDir) -> RunResult:
    found, refused = collect_artifacts(jd.work, {"stdout": jd.stdout_log})
    return RunResult(status="ok", artifacts=found, artifacts_refused=refused, workdir=str(jd.root))


def test_setuid_setgid_and_exec_bits_are_dropped(jd: JobDir, tmp_path: Path) -> None:
    (jd.out / "evil").write_bytes(b"\x7fELF...")
    os.chmod(jd.out / "evil", 0o6777)
    old = os.umask(0)
    try:
        report = copy_artifacts(result_for(jd), tmp_path / "dest")
    finally:
        os.umask(old)
    assert report.copied == ["evil"]
    st = os.lstat(tmp_path / "dest" / "evil")
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_uid == os.getuid() and st.st_gid == os.getgid()
    assert (tmp_path / "dest" / "evil").read_bytes() == b"\x7fELF..."


def test_relative_paths_are_kept_so_same_names_do_not_collide(jd: JobDir, tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (jd.out / sub).mkdir()
        (jd.out / sub / "x").write_text(sub)
    (jd.out / "result.json").write_text('{"status": "ok"}')
    jd.stdout_log.write_text("the host's log")
    result = result_for(jd)
    assert LOG_KEYS["stdout"] in result.artifacts
    report = copy_artifacts(result, tmp_path / "dest")
    assert sorted(report.copied) == ["a/x", "b/x", "result.json"]
    assert (tmp_path / "dest" / "a" / "x").read_text() == "a"
    assert (tmp_path / "dest" / "b" / "x").read_text() == "b"
    assert not (tmp_path / "dest" / "stdout.log").exists()  # logs are the host's to write


def test_nothing_is_written_over(jd: JobDir, tmp_path: Path) -> None:
    (jd.out / "result.json").write_text("forged")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "result.json").write_text("the host's record")
    report = copy_artifacts(result_for(jd), dest)
    assert report.copied == []
    assert report.refused == [("out/result.json", "destination exists; nothing is written over")]
    assert (dest / "result.json").read_text() == "the host's record"


def test_a_symlink_swapped_in_after_collection_is_not_followed(jd: JobDir, tmp_path: Path) -> None:
    (jd.out / "sub").mkdir()
    (jd.out / "sub" / "data.txt").write_text("fine")
    (jd.out / "top.txt").write_text("fine")
    result = result_for(jd)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "data.txt").write_text("host secret")
    (jd.out / "sub" / "data.txt").unlink()
    (jd.out / "sub").rmdir()
    os.symlink(secret, jd.out / "sub")  # a directory on the way
    (jd.out / "top.txt").unlink()
    os.symlink(secret / "data.txt", jd.out / "top.txt")  # the file itself
    report = copy_artifacts(result, tmp_path / "dest")
    assert report.copied == []
    refused = dict(report.refused)
    assert refused["out/sub/data.txt"].startswith("source folder cannot be opened")
    assert refused["out/top.txt"].startswith("source cannot be opened as a plain file")
    assert not list((tmp_path / "dest").rglob("data.txt"))


def test_a_fifo_is_refused_without_blocking(jd: JobDir, tmp_path: Path) -> None:
    (jd.out / "pipe").write_text("x")
    result = result_for(jd)
    (jd.out / "pipe").unlink()
    os.mkfifo(jd.out / "pipe")
    report = copy_artifacts(result, tmp_path / "dest")
    assert report.refused == [("out/pipe", "not a regular file")]


def test_a_symlink_in_the_destination_is_not_followed(jd: JobDir, tmp_path: Path) -> None:
    (jd.out / "sub").mkdir()
    (jd.out / "sub" / "x").write_text("x")
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, dest / "sub")
    report = copy_artifacts(result_for(jd), dest)
    assert report.refused[0][0] == "out/sub/x"
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("out/../../etc/passwd", "'..' in the path"),
        ("/etc/passwd", "absolute path"),
        ("out/red\x1b[31m", "control, format or undecodable characters in the name"),
        ("out/rtl\u202etxt.exe", "control, format or undecodable characters in the name"),
        ("out/bytes-\udcff", "control, format or undecodable characters in the name"),
        ("out//x", "not a normalised relative path"),
        ("out/./x", "not a normalised relative path"),
        ("", "empty name"),
    ],
)
def test_bad_names_in_a_result_are_refused_and_recorded_escaped(
    name: str, problem: str, jd: JobDir, tmp_path: Path
) -> None:
    assert artifact_name_problem(name) == problem
    result = RunResult(status="ok", artifacts={name: "/etc/passwd"}, workdir=str(jd.root))
    report = copy_artifacts(result, tmp_path / "dest")
    assert report.copied == []
    assert len(report.refused) == (0 if not name.startswith("out/") else 1)
    for shown_name, why in report.refused:
        assert shown_name.isprintable() and why == problem
    assert list((tmp_path / "dest").iterdir()) == []


def test_an_entry_that_points_outside_its_job_folder_is_refused(jd: JobDir, tmp_path: Path) -> None:
    result = RunResult(status="ok", artifacts={"out/x": "/etc/passwd"}, workdir=str(jd.root))
    report = copy_artifacts(result, tmp_path / "dest")
    assert report.refused == [("out/x", "host path is not the job's out/ entry")]


def test_collection_refuses_undecodable_names_and_the_result_stores_as_json(jd: JobDir) -> None:
    (jd.out / os.fsdecode(b"bad-\xff")).write_text("x")
    (jd.out / "tab\there").write_text("x")
    (jd.out / "good.txt").write_text("x")
    result = result_for(jd)
    assert [n for n in result.artifacts if n.startswith("out/")] == ["out/good.txt"]
    assert set(result.artifacts_refused) == {"out/bad-\\udcff", "out/tab\\there"}
    assert RunResult.model_validate_json(result.model_dump_json()) == result
