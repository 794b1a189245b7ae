"""The embedded store's read-side snapshot: it answers as Chroma does, follows every
write, never lets a dead writer's half-done work be read, and keeps chromadb off the
search path (real Chroma, real MiniLM, real processes)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory import snapshot
from memory.store import COLLECTION, Filters, FindingStore
from reprodesk.schemas import Finding
from tests.memory_kit import ALL, FP8, MLA, MOE, ROOT, _finding

QUERIES = (
    "KV cache per token",
    "memory held per generated token for attention",
    "keeping experts evenly loaded",
    "low precision matrix multiply error",
    "no critic network",
)


def _more() -> list[Finding]:
    """Enough findings over several runs, papers, verdicts and dates for filters to bite."""
    extra = [
        _finding(
            f"run-{i % 4}:x{i}",
            mechanism,
            f"{mechanism} finding number {i}: {claim}",
            "metric",
            date=f"2025-0{1 + i % 3}-1{i % 10}",
            verdict=("reproduced", "partial", "not reproduced")[i % 3],
            paper=f"Paper {i % 2}",
        )
        for i, (mechanism, claim) in enumerate(
            [
                ("mla", "the latent cache is smaller than grouped-query attention's"),
                ("mla", "decoupled rotary keys add a few dimensions per token"),
                ("moe", "shared experts take the common knowledge"),
                ("moe", "bias-based balancing needs no auxiliary loss"),
                ("mtp", "predicting two tokens ahead densifies the signal"),
                ("fp8", "block-wise scaling bounds the quantisation error"),
                ("grpo", "group baselines replace the value model"),
                ("mla", "absorbing the up-projection into the query saves compute"),
            ]
        )
    ]
    return [*ALL, *extra]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FindingStore]:
    with FindingStore.open(tmp_path / "memory") as opened:
        opened.add(_more())
        yield opened


def _through_chroma(store: FindingStore) -> FindingStore:
    assert store.path is not None
    return FindingStore(store.path, read_snapshot=False)


def _gen(store: FindingStore) -> str | None:
    assert store.path is not None
    return snapshot.current_gen(store.path)


FILTERS = (
    {},
    {"mechanism": "mla"},
    {"verdict": "partial"},
    {"paper": "PAPER 1 "},
    {"paper": "arxiv:moe"},
    {"since": "2025-02-01", "until": "2025-02-28"},
    {"mechanism": "moe", "verdict": "reproduced"},
    {"mechanism": "nope"},
)


@pytest.mark.parametrize("where", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_snapshot_answers_exactly_as_chroma_does(
    store: FindingStore, where: dict[str, str]
) -> None:
    chroma = _through_chroma(store)
    for query in QUERIES:
        fast = store.search(query, k=5, **where)
        slow = chroma.search(query, k=5, **where)
        assert [h.finding.id for h in fast] == [h.finding.id for h in slow], query
        for a, b in zip(fast, slow, strict=True):
            assert a.finding == b.finding
            assert a.distance == pytest.approx(b.distance, abs=1e-5)
    assert store.findings(Filters(**where)) == chroma.findings(Filters(**where))
    assert store.findings(Filters(**where), limit=2) == chroma.findings(Filters(**where), limit=2)
    chroma.close()


def test_count_and_get_match_chroma(store: FindingStore) -> None:
    chroma = _through_chroma(store)
    assert store.count() == chroma.count() == len(_more())
    for finding in _more():
        assert store.get(finding.id) == chroma.get(finding.id) == finding
    assert store.get("no-such:id") is None
    chroma.close()


def test_every_write_makes_a_new_generation_that_reads_see(store: FindingStore) -> None:
    first = _gen(store)
    assert first is not None
    changed = MLA.model_copy(update={"measured_value": 0.5, "verdict": "partial"})
    store.add([changed])
    second = _gen(store)
    assert second not in (None, first)
    assert store.get(MLA.id) == changed
    assert store.count() == len(_more())  # upsert replaced, did not append
    assert changed in store.findings(Filters(verdict="partial", mechanism="mla"))

    assert store.delete_run("run-c") == 2  # GRPO and FP8
    assert _gen(store) not in (None, second)
    assert store.get(FP8.id) is None
    assert all(h.finding.run_id != "run-c" for h in store.search("FP8 error", k=50))
    assert store.count() == _through_chroma(store).count() == len(_more()) - 2
    # Only the live generation is left on disk.
    assert store.path is not None
    names = sorted(p.suffix for p in snapshot.directory(store.path).iterdir())
    assert names == ["", ".json", ".jsonl", ".npy", ".npz"]  # lock + manifest + one gen


def test_a_writer_that_dies_after_writing_chroma_leaves_nothing_wrong_to_read(
    tmp_path: Path,
) -> None:
    """kill -9 between the Chroma write and the new snapshot: PENDING stays behind; the
    next reader answers from Chroma (with the dead writer's finding), and rebuilds."""
    path = tmp_path / "memory"
    with FindingStore.open(path) as first:
        first.add([MLA])
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from memory import snapshot\n"
        "from memory.store import FindingStore\n"
        "from tests.memory_kit import MOE\n"
        "def die(*args, **kwargs):\n"
        "    os.kill(os.getpid(), 9)\n"
        "snapshot._publish = die\n"
        "FindingStore.open(Path(sys.argv[1])).add([MOE])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=ROOT, timeout=120, check=False
    )
    assert done.returncode == -9
    assert (snapshot.directory(path) / snapshot.PENDING).exists()
    assert snapshot.current_gen(path) is None

    with FindingStore.open(path) as reader:
        hits = reader.search("expert load balancing", k=2)
        assert {h.finding.id for h in hits} == {MLA.id, MOE.id}
        # The reader found the lock free, so it rebuilt the snapshot from Chroma.
        assert not (snapshot.directory(path) / snapshot.PENDING).exists()
        assert snapshot.current_gen(path) is not None
        assert reader.get(MOE.id) == MOE
        assert reader.count() == 2


def test_a_reader_leaves_the_snapshot_to_a_writer_that_holds_the_lock(store: FindingStore) -> None:
    assert store.path is not None
    root = snapshot.directory(store.path)
    (root / snapshot.PENDING).touch()  # a write in flight...
    fd = os.open(root / snapshot.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # ...by a writer that is alive
    try:
        reader = FindingStore(store.path)
        assert reader.search("KV cache per token", k=1)[0].finding == MLA  # via Chroma
        assert (root / snapshot.PENDING).exists()  # not rebuilt under the writer
        reader.close()
    finally:
        os.close(fd)


def test_a_store_written_before_snapshots_existed_gets_one_on_first_read(
    store: FindingStore,
) -> None:
    assert store.path is not None
    for path in snapshot.directory(store.path).iterdir():
        path.unlink()
    snapshot.directory(store.path).rmdir()
    reader = FindingStore(store.path)
    assert reader.findings(Filters(mechanism="moe"))[-1] == MOE
    assert snapshot.current_gen(store.path) is not None
    assert reader.search("KV cache per token", k=1)[0].finding == MLA
    reader.close()


def test_a_snapshot_of_another_embedding_or_collection_is_not_read(store: FindingStore) -> None:
    assert store.path is not None
    manifest = snapshot.directory(store.path) / snapshot.MANIFEST
    data = json.loads(manifest.read_text())
    for key, value in (("embedding", "another-model"), ("collection", "x"), ("format", 0)):
        manifest.write_text(json.dumps({**data, key: value}))
        assert snapshot.load(store.path, embedding=data["embedding"], collection=COLLECTION) is None
    manifest.write_text(json.dumps(data))
    assert snapshot.load(store.path, embedding=data["embedding"], collection=COLLECTION)


def test_a_search_in_a_new_process_never_imports_chromadb(store: FindingStore) -> None:
    """What makes one CLI search fast: chromadb's import alone is 1-2 s here."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from reprodesk.cli import main\n"
        "try:\n"
        "    main(['findings', 'search', 'KV cache per token', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('chromadb', 'torch', 'transformers') if m in sys.modules)\n"
        "print(json.dumps(heavy))\n"
    )
    assert store.path is not None
    env = {**os.environ, "REPRODESK_HOME": str(store.path.parent)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []
    hits = json.loads("\n".join(lines[:-1]))
    assert hits[0]["id"] == MLA.id


def test_deleting_every_finding_leaves_an_empty_snapshot_that_answers_nothing(
    tmp_path: Path,
) -> None:
    with FindingStore.open(tmp_path / "memory") as store:
        store.add([MLA, MOE])
        assert store.delete_run("run-a") == 1
        assert store.delete_run("run-b") == 1
        assert snapshot.current_gen(tmp_path / "memory") is not None
        assert store.count() == 0
        assert store.search("KV cache per token") == []
        assert store.findings() == []
        store.add([MLA])  # and grows again from empty
        assert store.search("KV cache per token", k=3)[0].finding == MLA
