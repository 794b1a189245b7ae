"""structlog, configured once by the CLI. Logs go to stderr; results go to stdout."""

from __future__ import annotations

import logging
import sys

import structlog


class _Stderr:
    """Whatever sys.stderr is at write time (tests and tools swap it; a bound file closes)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(verbose: bool = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries underneath (httpx, chromadb) log through the stdlib.
    logging.basicConfig(level=logging.WARNING if not verbose else logging.INFO, stream=sys.stderr)
    # pypdf warns about every oddity of a PDF it still reads; the loader reports real failures.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
