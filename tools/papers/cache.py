"""The paper cache: the bytes that parsed and the parsed `Paper`, keyed by the source.

Under `cache_dir`, keyed by the source as given (an arXiv paper by its id):
`papers/<key>` holds the bytes that parsed and `parsed/<key>.json` the `Paper`, so a
second load reads JSON and parses nothing. Nothing is written before a source parsed:
failures are never cached. Entries are written to a temp file and renamed, so a crash
never leaves half an entry; a parse of an older `PARSER_VERSION` is redone from the
bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from reprodesk.schemas import Paper, UserError

PARSER_VERSION = 3  # bump when parsing changes: parsed/ entries of older versions are redone


def cached(
    cache: Path | None,
    key: str,
    refresh: bool,
    load: Callable[[], tuple[Paper, bytes]],
    reparse: Callable[[bytes], Paper] | None,
) -> Paper:
    """The parsed paper from the cache, else `load()` and store the bytes and the result."""
    if cache is None:
        return load()[0]
    name = hashlib.sha256(key.encode()).hexdigest()
    raw, parsed = cache / "papers" / name, cache / "parsed" / f"{name}.json"
    if not refresh:
        if (paper := _read_parsed(parsed, key)) is not None:
            return paper
        if reparse is not None and raw.is_file():
            paper = reparse(raw.read_bytes())
            _write_atomic(parsed, _parsed_json(paper, key))
            return paper
    paper, data = load()
    _write_atomic(raw, data)
    _write_atomic(parsed, _parsed_json(paper, key))
    return paper


def _parsed_json(paper: Paper, key: str) -> bytes:
    return json.dumps(
        {"version": PARSER_VERSION, "key": key, "paper": paper.model_dump(mode="json")}
    ).encode()


def _read_parsed(path: Path, key: str) -> Paper | None:
    """A cached parse of this parser version, or None (missing, older, unreadable)."""
    try:
        entry = json.loads(path.read_bytes())
        if entry.get("version") != PARSER_VERSION or entry.get("key") != key:
            return None
        return Paper.model_validate(entry["paper"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _write_atomic(target: Path, data: bytes) -> None:
    """Temp file + rename in the same directory: a crash never leaves a half-written entry."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the paper cache {str(target.parent)!r}: {exc}") from exc
