"""Head+tail capture of a job's stdout/stderr, with the full stream logged (capped)."""

from __future__ import annotations

import os
from pathlib import Path

LOG_CAP_BYTES = 16 * 1024 * 1024
"""Most of one stream saved to stdout.log / stderr.log."""


class StreamCapture:
    """Keeps the first and last `limit // 2` bytes of a stream, and logs it (capped)."""

    def __init__(self, limit: int, log_path: Path | None = None, log_cap: int = LOG_CAP_BYTES):
        self.head_size = limit // 2
        self.tail_size = limit - self.head_size
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.log_cap = log_cap
        self.logged = 0
        # O_EXCL|O_NOFOLLOW: never write through something that was there before us.
        self._log = (
            os.fdopen(
                os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644),
                "wb",
            )
            if log_path is not None
            else None
        )

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self._log is not None and self.logged < self.log_cap:
            part = chunk[: self.log_cap - self.logged]
            self._log.write(part)
            self.logged += len(part)
        room = self.head_size - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self.tail_size > 0:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_size:
                del self.tail[: -self.tail_size]

    @property
    def truncated(self) -> bool:
        return self.total > self.head_size + self.tail_size

    def close(self) -> None:
        if self._log is None:
            return
        if self.total > self.logged:
            self._log.write(
                b"\n... [log capped; %d more bytes not saved] ...\n" % (self.total - self.logged)
            )
        self._log.close()
        self._log = None

    def text(self) -> str:
        if not self.truncated:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        tail = bytes(self.tail[-self.tail_size :]) if self.tail_size else b""
        cut = self.total - len(self.head) - len(tail)
        return (
            self.head.decode("utf-8", errors="replace")
            + f"\n... [truncated {cut} bytes] ...\n"
            + tail.decode("utf-8", errors="replace")
        )
