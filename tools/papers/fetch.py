"""Fetching a paper's bytes: one URL politely and boundedly, or one local file.

`Fetcher.fetch(url)` sends our User-Agent, follows a few redirects, retries what is
worth another try (network errors, timeouts, 5xx, 429 with its Retry-After, capped)
with tenacity, and bounds everything: the connect and per-read timeouts, the body
size (declared or streamed), and an overall deadline for the whole fetch, retries and
waits included. The per-read timeout alone is not enough: a server that sends a few
bytes every few seconds never trips it. No single wait is longer than the time left,
and at the deadline a timer shuts the fetch's sockets down (found through httpx's
`trace` extension), which ends a read blocked anywhere, in the headers or the body.
Every failure is one `UserError` naming the URL and the reason.

`read_file` is the local counterpart: a file refused by its size before it is read.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tenacity

from reprodesk.schemas import UserError

MB = 1024 * 1024
USER_AGENT = "reprodesk/0.1 (+https://github.com/reprodesk)"
DEFAULT_DEADLINE_S = 120.0


class _Transient(Exception):
    """A fetch failure worth another try (network, timeout, 5xx, 429)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Watchdog:
    """Shuts down every socket of one fetch when its deadline comes."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's trace hook: note each new connection's socket."""
        if event == "connection.connect_tcp.complete":
            found = info["return_value"].get_extra_info("socket")
            with self._lock:
                if found is not None:
                    self._sockets.append(found)
                if self.fired:  # connected just as the deadline came
                    self._shut(found)

    def _cut(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket | None) -> None:
        if sock is not None:
            with contextlib.suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


@dataclass(frozen=True)
class Fetcher:
    """Downloads one URL's bytes politely and boundedly; fields so tests can shrink limits."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_bytes: int = 64 * MB
    max_redirects: int = 5
    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0
    deadline_s: float = DEFAULT_DEADLINE_S  # the whole fetch, retries and waits included
    transport: httpx.BaseTransport | None = None

    def fetch(self, url: str) -> bytes:
        """The body of `url`; retries transient failures, then gives up with one UserError."""
        deadline = time.monotonic() + self.deadline_s
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=lambda state: min(self._wait(state), max(0.0, deadline - time.monotonic())),
            retry=tenacity.retry_if_exception_type(_Transient),
            reraise=True,
        )
        with (
            _Watchdog(self.deadline_s) as watchdog,
            httpx.Client(
                timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
                headers={"User-Agent": USER_AGENT},
                follow_redirects=True,
                max_redirects=self.max_redirects,
                transport=self.transport,
            ) as client,
        ):
            try:
                return retrying(self._get_once, client, url, deadline, watchdog)
            except _Transient as exc:
                msg = f"cannot fetch {url!r}: {exc} (gave up after {self.attempts} attempts)"
                raise UserError(msg) from exc

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """A server's numeric Retry-After wins (capped, so it cannot stall us); else backoff."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after_s)
        return float(tenacity.wait_exponential(self.backoff_s, self.max_backoff_s)(state))

    def _past_deadline(self, url: str) -> UserError:
        reason = f"not done within the {self.deadline_s:g} s deadline (the server is too slow)"
        return UserError(f"cannot fetch {url!r}: {reason}")

    def _get_once(
        self, client: httpx.Client, url: str, deadline: float, watchdog: _Watchdog
    ) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0 or watchdog.fired:  # a retry's wait used up the time
            raise self._past_deadline(url)
        # No wait for data may outlast the deadline: each timeout is cut to the time left.
        timeout = httpx.Timeout(
            min(self.read_timeout, left), connect=min(self.connect_timeout, left)
        )
        try:
            extensions = {"trace": watchdog.trace}
            with client.stream("GET", url, timeout=timeout, extensions=extensions) as resp:
                status = f"HTTP {resp.status_code} {resp.reason_phrase}".strip()
                if resp.status_code == 429 or resp.status_code >= 500:
                    after = resp.headers.get("Retry-After", "").strip()  # a date: our backoff
                    seconds = float(after) if re.fullmatch(r"\d+(\.\d*)?", after) else None
                    raise _Transient(status, seconds)
                if not resp.is_success:
                    raise UserError(f"cannot fetch {url!r}: {status}")
                body = self._read_capped(resp, url)
            if watchdog.fired:  # the cut may read as the end of a body without a length
                raise self._past_deadline(url)
            return body
        except httpx.TooManyRedirects as exc:
            msg = f"cannot fetch {url!r}: more than {self.max_redirects} redirects"
            raise UserError(msg) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise UserError(f"cannot fetch {url!r}: {exc}") from exc
        except httpx.TransportError as exc:
            if watchdog.fired or time.monotonic() >= deadline:  # cut, or a timeout cut short
                raise self._past_deadline(url) from exc
            if isinstance(exc, httpx.ConnectTimeout):
                raise _Transient(f"could not connect within {self.connect_timeout:g} s") from exc
            if isinstance(exc, httpx.TimeoutException):
                raise _Transient(f"no data for {self.read_timeout:g} s (read timeout)") from exc
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    def _read_capped(self, resp: httpx.Response, url: str) -> bytes:
        """Stream the body and stop past the cap: a wrong link must not fill memory."""
        too_big = UserError(
            f"cannot fetch {url!r}: the response is larger than {_size(self.max_bytes)}"
        )
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_big
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise too_big
        return bytes(body)


def read_file(path: Path, label: str, max_bytes: int) -> bytes:
    """The file's bytes, refusing by size before reading (a 2 GB file is not a paper)."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        if size > max_bytes:
            raise UserError(f"cannot read {label!r}: it is larger than {_size(max_bytes)}")
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grew since stat() is still capped
    except OSError as exc:  # missing, a directory, no permission: the OS names it best
        raise UserError(f"cannot read {label!r}: {(exc.strerror or str(exc)).lower()}") from exc
    if len(data) > max_bytes:
        raise UserError(f"cannot read {label!r}: it is larger than {_size(max_bytes)}")
    return data


def _size(n: int) -> str:
    return f"{n / MB:g} MB" if n >= MB else f"{n} bytes"
