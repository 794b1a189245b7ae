"""Moving a job's files to and from a remote engine (the "copy" transfer), as untrusted data.

With a remote engine the host's paths mean nothing there: the job's files go up into a
volume as a tar, and /job/out comes back as a tar that the job wrote, hence hostile:
regular files and dirs only, checked names, new files only, capped.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from reprodesk.schemas import Job
from sandbox.artifacts import MAX_ARTIFACT_BYTES, MAX_ARTIFACTS, MAX_ARTIFACTS_TOTAL_BYTES
from sandbox.base import JOB_UID, Refused, check_relpath


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks (the archive stream), counting what it read."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = memoryview(b"")  # a view: reading on does not copy the rest of a chunk
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.total += n
        return n


def _upload_tar(job: Job) -> bytes:
    """The job's files (root-owned, read-only to the job) and an out/ dir the job owns."""
    buf = io.BytesIO()
    made: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, uid: int) -> None:
            if name in made:
                return
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
            tar.addfile(info)
            made.add(name)

        add_dir("out", JOB_UID)  # first: a job file under out/ must not make it root's
        for name, text in sorted(job.files.items()):
            rel = check_relpath(name)
            for parent in reversed(rel.parents[:-1]):
                add_dir(str(parent), 0)
            data = text.encode("utf-8")
            info = tarfile.TarInfo(str(rel))
            info.mode, info.size = 0o644, len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _extract_out(chunks: Iterable[bytes], out: Path) -> None:
    """Unpack the archive of /job/out into `out`: regular files and dirs only, capped.

    The archive is the job's work, hence untrusted: no links, no absolute or `..`
    names, new files only (O_EXCL|O_NOFOLLOW), and we stop reading once it is clearly
    larger than what `collect_artifacts` would keep.
    """
    reader = _ChunkReader(chunks)
    kept = total = 0
    with tarfile.open(fileobj=io.BufferedReader(reader), mode="r|") as tar:
        for member in tar:
            if reader.total > 2 * MAX_ARTIFACTS_TOTAL_BYTES or kept >= MAX_ARTIFACTS:
                break
            path = PurePosixPath(member.name)
            if not path.parts or path.parts[0] != "out" or len(path.parts) == 1:
                continue
            try:
                rel = check_relpath(str(PurePosixPath(*path.parts[1:])))
            except Refused:
                continue
            target = out / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile() or member.size > MAX_ARTIFACT_BYTES:
                continue
            if total + member.size > MAX_ARTIFACTS_TOTAL_BYTES:
                continue
            data = tar.extractfile(member)
            if data is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            try:
                fd = os.open(target, flags, 0o644)
            except OSError:
                continue
            with os.fdopen(fd, "wb") as fh:
                while chunk := data.read(1 << 20):
                    fh.write(chunk)
            kept += 1
            total += member.size
