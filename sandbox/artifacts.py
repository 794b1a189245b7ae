"""A job's artifacts: found after the job, copied out as plain data.

Everything a job leaves is hostile data. A job can write setuid copies of system
binaries, symlinks, FIFOs and device-like names, files named `../result.json` or with
terminal escape codes in them, a `result.json` that claims it succeeded. So:

- `collect_artifacts` (after the job, by every backend) lists the regular files under
  out/ by their path relative to the job dir (`out/a/x` and `out/b/x` stay apart),
  capped in count and size, and names the logs the host saved under a key prefix of
  their own (`logs/stdout.log`, `logs/stderr.log`) that no job file can take. Names
  that are not safe relative paths (control characters, non-UTF-8 bytes) are left out
  and recorded in `RunResult.artifacts_refused`.
- `copy_artifacts` (at publish) copies the `out/` entries into a folder of the
  caller's as new regular files with mode 0644, owned by the caller, opening the
  source with O_NOFOLLOW at every path component and checking it is a regular file;
  it never writes over anything. What it refuses it records with the reason.

The host's own records (result, metrics, logs) are the caller's to write, outside the
folder handed to `copy_artifacts`: nothing a job writes can take their place.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from reprodesk.schemas import RunResult

MAX_ARTIFACTS = 100
MAX_ARTIFACT_BYTES = 128 * 1024 * 1024
"""Largest single artifact kept; larger files under out/ are left out."""
MAX_ARTIFACTS_TOTAL_BYTES = 512 * 1024 * 1024
OUT_PREFIX = "out/"
LOG_KEYS = {"stdout": "logs/stdout.log", "stderr": "logs/stderr.log"}
"""Artifact keys of the host's logs of the job's output (never a job's file: not under out/)."""
ARTIFACT_MODE = 0o644
_COPY_CHUNK = 1 << 20


class ArtifactReport(BaseModel):
    """What `copy_artifacts` did: relative paths copied, and (name, reason) refused."""

    copied: list[str] = Field(default_factory=list)
    refused: list[tuple[str, str]] = Field(default_factory=list)


def artifact_name_problem(name: str) -> str | None:
    """Why `name` is not a safe relative artifact path, or None when it is."""
    if not name:
        return "empty name"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in name):
        return "control, format or undecodable characters in the name"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "absolute path"
    if ".." in path.parts:
        return "'..' in the path"
    if str(path) != name or "." in path.parts:
        return "not a normalised relative path"
    return None


def shown(name: str) -> str:
    """`name` safe to print and to store as JSON: control and undecodable chars escaped."""
    return ascii(name)[1:-1] if artifact_name_problem(name) else name


def collect_artifacts(work: Path, logs: dict[str, Path]) -> tuple[dict[str, str], dict[str, str]]:
    """Regular files under `work`/out (no symlinks, capped) and the saved logs.

    Returns (artifacts, refused): artifacts by name (`out/<path>`, and the `LOG_KEYS`
    of the logs that are not empty) -> host path; refused: escaped name -> reason.
    """
    found: dict[str, str] = {}
    refused: dict[str, str] = {}
    total = 0
    out = work / "out"
    try:
        out_is_dir = stat.S_ISDIR(os.lstat(out).st_mode)
    except OSError:
        out_is_dir = False
    if out_is_dir:
        for dirpath, dirnames, filenames in os.walk(out):  # does not follow symlinks
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = path.relative_to(work).as_posix()
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue  # symlinks, FIFOs, sockets: not data
                problem = artifact_name_problem(rel)
                if problem is None and st.st_size > MAX_ARTIFACT_BYTES:
                    problem = f"larger than {MAX_ARTIFACT_BYTES >> 20} MB"
                elif problem is None and len(found) >= MAX_ARTIFACTS:
                    problem = f"more than {MAX_ARTIFACTS} artifacts"
                elif problem is None and total + st.st_size > MAX_ARTIFACTS_TOTAL_BYTES:
                    problem = f"artifacts over {MAX_ARTIFACTS_TOTAL_BYTES >> 20} MB in all"
                if problem is not None:
                    if len(refused) < MAX_ARTIFACTS:
                        refused[shown(rel)] = problem
                    continue
                total += st.st_size
                found[rel] = str(path)
    for stream, log in logs.items():
        try:
            if log.stat().st_size > 0:
                found[LOG_KEYS[stream]] = str(log)
        except OSError:
            continue
    return found, refused


@contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_dir_chain(base_fd: int, parts: tuple[str, ...], *, create: bool) -> int:
    """A dir fd for `parts` below `base_fd`, never through a symlink (mkdir 0755 if `create`)."""
    fd = os.dup(base_fd)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    for part in parts:
        try:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            next_fd = os.open(part, flags, dir_fd=fd)
        finally:
            os.close(fd)
        fd = next_fd
    return fd


def _copy_one(work_fd: int, dest_fd: int, rel: PurePosixPath) -> str | None:
    """Copy `out/<rel>` below `work_fd` to `<rel>` below `dest_fd`; why not, or None."""
    src_parts = ("out", *rel.parts)
    try:
        src_dir = _open_dir_chain(work_fd, src_parts[:-1], create=False)
    except OSError as err:
        return f"source folder cannot be opened without following a link: {err.strerror}"
    with _fd(src_dir):
        try:
            src = os.open(
                src_parts[-1],
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=src_dir,
            )
        except OSError as err:
            return f"source cannot be opened as a plain file: {err.strerror}"
    with _fd(src):
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > MAX_ARTIFACT_BYTES:
            return f"larger than {MAX_ARTIFACT_BYTES >> 20} MB"
        try:
            out_dir = _open_dir_chain(dest_fd, rel.parts[:-1], create=True)
        except OSError as err:
            return f"destination folder cannot be made: {err.strerror}"
        with _fd(out_dir):
            try:
                dst = os.open(
                    rel.parts[-1],
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    ARTIFACT_MODE,
                    dir_fd=out_dir,
                )
            except FileExistsError:
                return "destination exists; nothing is written over"
            except OSError as err:
                return f"destination cannot be created: {err.strerror}"
            with _fd(dst):
                os.fchmod(dst, ARTIFACT_MODE)  # whatever the umask: rw-r--r--, nothing more
                copied = 0
                while copied <= MAX_ARTIFACT_BYTES and (chunk := os.read(src, _COPY_CHUNK)):
                    os.write(dst, chunk)
                    copied += len(chunk)
    return None


def copy_artifacts(result: RunResult, dest: Path) -> ArtifactReport:
    """Copy the job's `out/` artifacts of `result` into `dest`/<path under out/>, as plain data.

    Regular files only, each written fresh with mode 0644 and owned by the caller;
    the path under out/ is kept after a check (no '..', no absolute path, no control
    characters); every component is opened without following a symlink, on the side
    of the job and of `dest`; nothing that exists is written over. The logs
    (`logs/...` keys) are not copied: the caller writes its own records. `dest` is
    created when missing; every refusal is in the report with its reason.
    """
    report = ArtifactReport()
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(result.workdir) / "job" if result.workdir else None
    with _fd(os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)) as dest_fd:
        work_fd = -1
        if work is not None:
            try:
                work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                work_fd = -1
        try:
            for name, src in sorted(result.artifacts.items()):
                if not name.startswith(OUT_PREFIX):
                    continue  # the host's logs: not the job's to publish
                problem = artifact_name_problem(name)
                if problem is not None:
                    report.refused.append((shown(name), problem))
                    continue
                rel = PurePosixPath(name[len(OUT_PREFIX) :])
                if work is None or work_fd < 0:
                    report.refused.append((name, "the job folder is gone or unknown"))
                elif Path(src) != work / name:
                    report.refused.append((name, "host path is not the job's out/ entry"))
                elif (why := _copy_one(work_fd, dest_fd, rel)) is not None:
                    report.refused.append((name, why))
                else:
                    report.copied.append(rel.as_posix())
        finally:
            if work_fd >= 0:
                os.close(work_fd)
    return report
