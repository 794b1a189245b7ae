"""Safe unpacking of a LaTeX source archive, in memory, never on disk.

A tarball (gzip or plain) is streamed member by member, and only the text files a
paper needs (.tex, .ltx, .bbl) are kept. The archive is refused as a whole, with one
UserError, when a member's path is absolute or climbs out with `..`, when a link
points outside the archive, when a member is a device, or when it unpacks to more
bytes or members than the limits allow (a decompression bomb is stopped while it
inflates, not after). A gzipped single file (a .tex, a PDF) comes back as its bytes.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from typing import IO, BinaryIO

from reprodesk.schemas import UserError

MB = 1024 * 1024
_TEXT_SUFFIXES = (".tex", ".ltx", ".bbl")
_SINGLE_FILE_CAP = 64 * MB  # a gzipped single file (a .tex or a PDF) is held whole


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an archive may unpack to; fields so that tests can shrink them."""

    max_unpacked_bytes: int = 512 * MB  # the whole decompressed stream, figures included
    max_members: int = 5000
    max_text_bytes: int = 16 * MB  # one .tex/.bbl file, and all inlined text together
    max_depth: int = 8  # nested \input


class _TooBig(Exception):
    pass


class _Capped(io.RawIOBase):
    """A read-only stream that counts what passes through and stops past a cap."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, cap: int) -> None:
        self.inner, self.cap, self.count = inner, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.cap:
            raise _TooBig
        buffer[: len(data)] = data
        return len(data)


def is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def unpack(
    data: bytes, label: str, limits: ArchiveLimits | None = None
) -> bytes | dict[str, bytes]:
    """A gzip file's content, or a tarball's text files by path; refuses unsafe archives."""
    limits = limits or ArchiveLimits()
    cap = limits.max_unpacked_bytes
    try:
        stream: IO[bytes] | gzip.GzipFile
        if data[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                head = gz.read(512)
            if not is_tar(head):  # one compressed file: held whole, so a tighter cap
                cap = min(cap, _SINGLE_FILE_CAP)
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                    return io.BufferedReader(_Capped(gz, cap)).read()
            stream = gzip.GzipFile(fileobj=io.BytesIO(data))
        else:
            stream = io.BytesIO(data)
        return _read_tar(io.BufferedReader(_Capped(stream, cap)), label, limits)
    except _TooBig as exc:
        reason = f"it unpacks to more than {cap / MB:g} MB (a decompression bomb?)"
        raise UserError(f"cannot read {label!r}: {reason}") from exc
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        reason = f"the archive is damaged or truncated ({type(exc).__name__}: {exc})"
        raise UserError(f"cannot read {label!r}: {reason}") from exc


def _read_tar(stream: BinaryIO, label: str, limits: ArchiveLimits) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for count, member in enumerate(tar, start=1):
            if count > limits.max_members:
                reason = f"the archive has more than {limits.max_members} members"
                raise UserError(f"cannot read {label!r}: {reason}")
            name = _inside(member.name, "", label, member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(name) if member.issym() else ""
                links[name] = _inside(member.linkname, base, label, member.name)
            elif member.isdev() or member.isfifo():
                raise UserError(f"cannot read {label!r}: member {member.name!r} is a device file")
            elif member.isfile() and name.lower().endswith(_TEXT_SUFFIXES):
                if member.size > limits.max_text_bytes:
                    reason = f"{member.name!r} is larger than {limits.max_text_bytes / MB:g} MB"
                    raise UserError(f"cannot read {label!r}: {reason}")
                handle = tar.extractfile(member)
                files[name] = handle.read() if handle else b""
    for name, target in links.items():  # links within the archive read as their target
        for _ in range(8):
            target = links.get(target, target)
        if name.lower().endswith(_TEXT_SUFFIXES) and target in files:
            files[name] = files[target]
    return files


def _inside(path: str, base: str, label: str, member: str) -> str:
    """`path` (relative to `base`) normalised, or a UserError if it leaves the archive."""
    if "\0" in path or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        raise UserError(f"cannot read {label!r}: member {member!r} has an absolute path")
    joined = posixpath.normpath(posixpath.join(base, path.replace("\\", "/")))
    if joined == ".." or joined.startswith("../"):
        raise UserError(f"cannot read {label!r}: member {member!r} points outside the archive")
    return joined
