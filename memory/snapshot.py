"""An exact read-side copy of the embedded findings collection, searched without chromadb.

Why it exists: a one-shot ``reprodesk findings search`` is mostly import time, and
``import chromadb`` alone costs 1.0-1.9 s on a 2-core machine (bench/memory.py prints it),
more than the whole 1.5 s a user waits before losing the thought. The query itself is
milliseconds. So every write through :class:`memory.store.FindingStore` to an *embedded*
store also writes this snapshot beside it, and reads answer from the snapshot with numpy
alone. Chroma stays the store of record: the snapshot is rebuilt from it whenever it is
missing or in doubt, and a Chroma server (shared by a team, written by others) is always
read through Chroma.

The search here is exact (every vector is scored), so it returns the true nearest
findings, which Chroma's HNSW index approximates; at 100k findings one query is a
100k x 384 matrix-vector product (milliseconds).

Files under ``<store>/snapshot/``::

    manifest.json   format, embedding, collection, generation, count (written last)
    <gen>.npy       float32 [count, 384] unit vectors, memory-mapped on read
    <gen>.npz       ids, day, the offsets of each finding's JSON, and the filter columns
                    (mechanism, verdict, run id, paper and source keys) as codes + vocab
    <gen>.jsonl     each finding as JSON, one per line, in row order
    PENDING         a write is in flight, or one died: readers do not trust the snapshot
    lock            held (flock) by whoever is writing the snapshot

A write takes the lock, creates PENDING (synced) and only then writes Chroma; afterwards
it writes a new generation (the old one plus the change, or, if PENDING was already there
or the snapshot was missing, all of Chroma afresh), replaces the manifest atomically and
removes PENDING. A writer killed at any point therefore leaves PENDING behind, never a
snapshot that disagrees with Chroma; the next write, or the next reader that finds the
lock free, rebuilds it. Writes that bypass FindingStore (chromadb used directly on the
directory) are not seen: do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import structlog
from numpy.typing import NDArray

from memory.records import Filters, _day
from reprodesk.schemas import UserError

FORMAT = 1
DIR = "snapshot"
MANIFEST = "manifest.json"
PENDING = "PENDING"
LOCK = "lock"
COLUMNS = ("mechanism", "verdict", "run_id", "paper_key", "source_key")
"""The metadata fields a filter compares exactly; ``day`` is a number column of its own."""

F32 = NDArray[np.float32]
Metadata = Mapping[str, Any]
Fetch = Callable[[], tuple[list[str], F32, list[Metadata]]]
"""Everything in Chroma: ids, vectors and metadatas, in one order."""

log = structlog.get_logger(__name__)


def directory(store: Path) -> Path:
    return store / DIR


# --------------------------------------------------------------------------- reading


class Snapshot:
    """One generation, opened for reading. Immutable; safe to share between threads."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.gen = str(manifest["gen"])
        self.count = int(manifest["count"])
        self._vectors: F32 = (
            np.load(root / f"{self.gen}.npy", mmap_mode="r")
            if self.count
            else np.zeros((0, 0), np.float32)
        )
        with np.load(root / f"{self.gen}.npz", allow_pickle=False) as columns:
            self._columns = {name: columns[name] for name in columns.files}
        # Mapped, not opened per read: a mapping stays valid after a later write unlinks
        # this generation's files, so a long-lived reader never reads half a generation.
        docs = root / f"{self.gen}.jsonl"
        self._docs: NDArray[np.uint8] = (
            np.memmap(docs, dtype=np.uint8, mode="r")
            if docs.stat().st_size
            else np.zeros(0, np.uint8)
        )

    def mask(self, filters: Filters) -> NDArray[np.bool_] | None:
        """Rows that pass ``filters`` (None: all). Same rules as ``Filters.where``."""
        filters.where()  # validates: an unknown verdict or a bad date is a UserError
        keep: NDArray[np.bool_] | None = None

        def both(rows: NDArray[np.bool_]) -> None:
            nonlocal keep
            keep = rows if keep is None else keep & rows

        if filters.paper is not None:
            key = filters.paper.strip().casefold()
            both(self._equal("paper_key", key) | self._equal("source_key", key))
        for name in ("mechanism", "verdict", "run_id"):
            value = getattr(filters, name)
            if value is not None:
                both(self._equal(name, value))
        day = self._columns["day"]
        if filters.since is not None:
            both(day >= _day(filters.since, "since"))
        if filters.until is not None:
            both(day <= _day(filters.until, "until"))
        return keep

    def _equal(self, column: str, value: str) -> NDArray[np.bool_]:
        vocab = self._columns[f"{column}_vocab"]
        codes = self._columns[f"{column}_codes"]
        found = np.flatnonzero(vocab == value)
        if not found.size:
            return np.zeros(self.count, dtype=bool)
        return np.asarray(codes == found[0], dtype=bool)

    def nearest(
        self, query: F32, k: int, keep: NDArray[np.bool_] | None
    ) -> list[tuple[int, float]]:
        """(row, cosine distance) of the ``k`` closest rows among ``keep``, closest first.

        Ties keep row order, so one snapshot always answers one query the same way.
        """
        if not self.count:
            return []
        similarity = np.asarray(self._vectors @ query.astype(np.float32), dtype=np.float32)
        rows = np.arange(self.count) if keep is None else np.flatnonzero(keep)
        if not rows.size:
            return []
        scores = similarity[rows]
        take = min(k, rows.size)
        if take < rows.size:
            best = np.argpartition(-scores, take - 1)[:take]
        else:
            best = np.arange(rows.size)
        best = best[np.lexsort((rows[best], -scores[best]))]
        return [(int(rows[i]), float(1.0 - scores[i])) for i in best]

    def rows(self, keep: NDArray[np.bool_] | None) -> list[int]:
        return list(range(self.count)) if keep is None else np.flatnonzero(keep).tolist()

    def row_of(self, finding_id: str) -> int | None:
        found = np.flatnonzero(self._columns["ids"] == finding_id)
        return int(found[0]) if found.size else None

    def documents(self, rows: Sequence[int]) -> list[str]:
        """The finding JSON of each row, read by offset (only these rows are parsed)."""
        offsets = self._columns["offsets"]
        return [
            self._docs[int(offsets[row]) : int(offsets[row + 1]) - 1].tobytes().decode()
            for row in rows
        ]


def load(store: Path, *, embedding: str, collection: str) -> Snapshot | None:
    """The store's current snapshot, or None when there is none to trust.

    None when: no snapshot, a write in flight or abandoned (PENDING), another format,
    embedding or collection, or files that vanished under a concurrent write.
    """
    root = directory(store)
    try:
        if (root / PENDING).exists():
            return None
        manifest = json.loads((root / MANIFEST).read_text())
        if (
            manifest.get("format") != FORMAT
            or manifest.get("embedding") != embedding
            or manifest.get("collection") != collection
        ):
            return None
        return Snapshot(root, manifest)
    except (OSError, ValueError, KeyError) as err:
        if not isinstance(err, FileNotFoundError):
            log.warning("memory.snapshot_unreadable", store=str(store), error=str(err))
        return None


def current_gen(store: Path) -> str | None:
    """The generation a reader would load now (cheap: one small file), or None."""
    root = directory(store)
    try:
        if (root / PENDING).exists():
            return None
        return str(json.loads((root / MANIFEST).read_text())["gen"])
    except (OSError, ValueError, KeyError):
        return None


# --------------------------------------------------------------------------- writing


@dataclass
class _Table:
    """A whole generation in memory, for merging a write into it."""

    ids: list[str]
    vectors: F32
    metadatas: list[Metadata]

    @classmethod
    def of(cls, ids: list[str], vectors: F32, metadatas: list[Metadata]) -> _Table:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        return cls(list(ids), vectors, list(metadatas))

    @classmethod
    def read(cls, snap: Snapshot) -> _Table:
        ids = [str(i) for i in snap._columns["ids"].tolist()]
        columns = snap._columns
        values = {
            name: columns[f"{name}_vocab"][columns[f"{name}_codes"]].tolist() for name in COLUMNS
        }
        days = columns["day"].tolist()
        metas: list[Metadata] = [
            {"json": doc, "day": days[row], **{name: values[name][row] for name in COLUMNS}}
            for row, doc in enumerate(snap.documents(range(snap.count)))
        ]
        return cls(ids, np.array(snap._vectors, dtype=np.float32), metas)

    def upsert(self, ids: Sequence[str], vectors: F32, metadatas: Sequence[Metadata]) -> None:
        where = {key: row for row, key in enumerate(self.ids)}
        extra: list[int] = []
        rows = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        for i, key in enumerate(ids):
            row = where.get(key)
            if row is None:
                where[key] = len(self.ids)
                self.ids.append(key)
                self.metadatas.append(metadatas[i])
                extra.append(i)
            else:
                if self.vectors.shape[0]:
                    self.vectors[row] = rows[i]
                self.metadatas[row] = metadatas[i]
        if extra:
            added = rows[extra]
            self.vectors = added if not self.vectors.size else np.concatenate([self.vectors, added])

    def delete(self, ids: Sequence[str]) -> None:
        gone = set(ids)
        keep = [row for row, key in enumerate(self.ids) if key not in gone]
        self.ids = [self.ids[row] for row in keep]
        self.metadatas = [self.metadatas[row] for row in keep]
        self.vectors = self.vectors[keep] if self.vectors.size else self.vectors

    def save(self, root: Path) -> str:
        """Write this table as a new generation; returns its name (files synced)."""
        gen = uuid.uuid4().hex[:12]
        vectors = self.vectors.reshape(len(self.ids), -1) if self.ids else np.zeros((0, 0))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True) if self.ids else vectors
        unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32) if self.ids else vectors
        docs = [str(meta["json"]).encode() + b"\n" for meta in self.metadatas]
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(doc) for doc in docs], out=offsets[1:])
        columns: dict[str, NDArray[Any]] = {
            "ids": np.array(self.ids, dtype=str),
            "offsets": offsets,
            "day": np.array([int(meta.get("day", 0)) for meta in self.metadatas], dtype=np.int32),
        }
        for name in COLUMNS:
            values = np.array([str(meta.get(name, "")) for meta in self.metadatas], dtype=str)
            vocab, codes = np.unique(values, return_inverse=True)
            columns[f"{name}_vocab"] = vocab
            columns[f"{name}_codes"] = codes.astype(np.int32)
        with _synced(root / f"{gen}.npy") as fh:
            np.save(fh, unit.astype(np.float32), allow_pickle=False)
        with _synced(root / f"{gen}.npz") as fh:
            np.savez(fh, **cast(dict[str, Any], columns))
        with _synced(root / f"{gen}.jsonl") as fh:
            fh.writelines(docs)
        return gen


@contextlib.contextmanager
def _synced(path: Path) -> Iterator[Any]:
    with path.open("wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def _sync_dir(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Writer:
    """What one write did to Chroma, to be carried into the next generation."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, Any]] = []

    def upserted(self, ids: Sequence[str], vectors: F32, metadatas: Sequence[Metadata]) -> None:
        self.changes.append(("upsert", (list(ids), vectors, list(metadatas))))

    def deleted(self, ids: Sequence[str]) -> None:
        self.changes.append(("delete", list(ids)))


@contextlib.contextmanager
def _locked(root: Path, *, wait: bool) -> Iterator[bool]:
    """Hold the snapshot lock; yields False (and holds nothing) when ``wait`` is False and
    another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def writing(store: Path, *, embedding: str, collection: str, fetch: Fetch) -> Iterator[Writer]:
    """Wrap one Chroma write: PENDING before it, a new generation after it.

    An OSError before the Chroma write (the directory cannot be written) is a UserError
    naming the store: the write is refused before anything changed. A failure *after* it
    (writing the new generation) is logged and leaves PENDING: Chroma has the data, and
    reads fall back to it.
    """
    root = directory(store)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(root, wait=True))
            before = load(store, embedding=embedding, collection=collection)
            (root / PENDING).touch()
            _sync_dir(root)
        except OSError as err:  # an unwritable directory: the user's to fix, named
            raise UserError(f"cannot write the findings store at {store}: {err}") from err
        writer = Writer()
        yield writer  # the Chroma write runs here; if it raises, PENDING stays
        try:
            if before is None:
                table = _Table.of(*fetch())  # no snapshot to build on: all of Chroma
            else:
                table = _Table.read(before)
                for kind, change in writer.changes:
                    if kind == "upsert":
                        table.upsert(*change)
                    else:
                        table.delete(change)
            _publish(root, table, embedding=embedding, collection=collection)
        except OSError as err:
            log.warning("memory.snapshot_not_written", store=str(store), error=str(err))


def rebuild_if_abandoned(store: Path, *, embedding: str, collection: str, fetch: Fetch) -> bool:
    """Rebuild a snapshot that is missing or whose writer died; False when a writer is at
    work (the lock is held) or the rebuild could not be written. For readers that have
    just answered from Chroma."""
    root = directory(store)
    try:
        with _locked(root, wait=False) as held:
            if not held or load(store, embedding=embedding, collection=collection) is not None:
                return False
            _publish(root, _Table.of(*fetch()), embedding=embedding, collection=collection)
            log.info("memory.snapshot_rebuilt", store=str(store))
            return True
    except OSError as err:
        log.warning("memory.snapshot_not_written", store=str(store), error=str(err))
        return False


def _publish(root: Path, table: _Table, *, embedding: str, collection: str) -> None:
    gen = table.save(root)
    manifest = {
        "format": FORMAT,
        "embedding": embedding,
        "collection": collection,
        "gen": gen,
        "count": len(table.ids),
    }
    tmp = root / f"{MANIFEST}.{gen}.tmp"
    with _synced(tmp) as fh:
        fh.write(json.dumps(manifest).encode())
    os.replace(tmp, root / MANIFEST)
    (root / PENDING).unlink(missing_ok=True)
    _sync_dir(root)
    for path in root.iterdir():  # earlier generations and temporary files of dead writers
        if path.name not in (MANIFEST, LOCK, PENDING) and not path.name.startswith(gen):
            path.unlink(missing_ok=True)
