"""Reaching a Chroma server: URL checks, a heartbeat with bounded retries, client settings.

Kept apart from ``memory.store`` so that the store's own file stays about findings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from reprodesk.schemas import UserError

HEARTBEAT = "/api/v2/heartbeat"

# A few quick tries: enough to ride over a server that is still binding its port or a
# dropped keep-alive connection, short enough that a wrong URL fails in about a second.
_ATTEMPTS = 3
_WAIT_MULTIPLIER_S = 0.1
_WAIT_MAX_S = 1.0
_HTTP_TIMEOUT_S = 5.0


def _settings() -> Any:
    from chromadb.config import Settings

    # Telemetry off: reprodesk runs offline, and findings are nobody else's business.
    return Settings(anonymized_telemetry=False)


def _retrying() -> Any:
    import httpx
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    return Retrying(
        retry=retry_if_exception_type(httpx.TransportError),
        stop=stop_after_attempt(_ATTEMPTS),
        wait=wait_exponential(multiplier=_WAIT_MULTIPLIER_S, max=_WAIT_MAX_S),
        reraise=False,
    )


def _parse_url(url: str) -> tuple[str, int, bool]:
    """``http(s)://host[:port]`` -> (host, port, ssl). A path, query or user is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UserError(f"bad Chroma server URL {url!r}: {err}") from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"bad Chroma server URL {url!r}: expected http://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UserError(f"bad Chroma server URL {url!r}: expected http://HOST:PORT, no path")
    ssl = parts.scheme == "https"
    return parts.hostname, port if port is not None else (443 if ssl else 80), ssl


def _heartbeat(url: str) -> None:
    """Raise a UserError naming ``url`` unless a server answers its heartbeat.

    chromadb's own constructor turns a refused connection into a bare ValueError with no
    URL in it; probing the heartbeat first lets us retry on the typed httpx error and
    name the URL in the message.
    """
    import httpx
    from tenacity import RetryError

    try:
        for attempt in _retrying():
            with attempt:
                httpx.get(url.rstrip("/") + HEARTBEAT, timeout=_HTTP_TIMEOUT_S).raise_for_status()
    except RetryError as err:
        cause = err.last_attempt.exception()
        raise UserError(f"cannot reach the Chroma server at {url}: {cause}") from cause
    except httpx.HTTPError as err:
        # HTTPStatusError: something answered but it is not a Chroma server (or a broken one).
        raise UserError(f"cannot reach the Chroma server at {url}: {err}") from err
