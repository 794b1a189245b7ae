"""`reprodesk findings search|list|show|export` as a user runs them: real processes, a
real embedded store, an 80-column terminal."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from memory.store import FindingStore
from reprodesk.schemas import Finding

ROOT = Path(__file__).resolve().parents[2]
RUN_A = "deepseek-v2-technical-r-3f2a9c1b"  # the shape of Runs.new_run_id: 24 + 9 chars
RUN_B = "deepseek-v3-technical-r-77aa01cd"


def _finding(run: str, cid: str, mechanism: str, claim: str, **extra: object) -> Finding:
    fields: dict[str, object] = {
        "id": f"{run}:{cid}",
        "paper": f"DeepSeek {mechanism} paper",
        "source": f"arxiv:{mechanism}",
        "mechanism": mechanism,
        "claim": claim,
        "metric": f"{mechanism}_metric",
        "verdict": "reproduced",
        "setup": "bwrap sandbox, cpu; d_model=64",
        "evidence": f"run {run}, job j1, metric claims.0.measured_value",
        "run_id": run,
        "date": "2025-03-04",
    }
    fields.update(extra)
    return Finding.model_validate(fields)


MLA = _finding(
    RUN_A,
    "kv",
    "mla",
    "Multi-head Latent Attention caches a compressed latent vector, so the KV cache per "
    "token is about 7% of standard multi-head attention's",
    paper_value=0.07,
    measured_value=0.071,
    unit="x",
    gotchas=["the decoupled RoPE key is cached too"],
)
MLA_AGAIN = _finding(
    RUN_B, "kv", "mla", MLA.claim, measured_value=0.069, unit="x", date="2025-04-01"
)
MOE = _finding(
    RUN_B,
    "balance",
    "moe",
    "Auxiliary-loss-free balancing keeps expert load even without an extra loss term",
    measured_value=0.4,
    verdict="partial",
    date="2025-04-01",
)
ALL = [MLA, MLA_AGAIN, MOE]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    with FindingStore.open(tmp_path / "home" / "memory") as store:
        store.add(ALL)
    return tmp_path / "home"


def python(home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """This venv's Python on ``argv`` with ``home`` as REPRODESK_HOME, 80 columns."""
    environ = {**os.environ, "REPRODESK_HOME": str(home), "COLUMNS": "80"}
    environ.pop("REPRODESK_CHROMA_URL", None)  # a server of the user's is not the test's
    environ.update(env)
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return python(home, "-m", "reprodesk", *args, **env)


def _words(text: str) -> str:
    """The text with table borders and line breaks taken out: what a reader reads."""
    return " ".join(" ".join(line.strip("│┃ ") for line in text.splitlines()).split())


def _fits_80_columns(text: str) -> None:
    for line in text.splitlines():
        assert len(line.rstrip()) <= 80, line


def test_search_table_fits_80_columns_with_full_run_ids_and_claims(home: Path) -> None:
    done = cli(home, "findings", "search", "memory held per generated token for attention")

    assert done.returncode == 0, done.stderr
    _fits_80_columns(done.stdout)
    assert RUN_A in done.stdout and RUN_B in done.stdout  # whole, not cut at the column
    assert "…" not in done.stdout
    assert "is about 7% of standard multi-head attention's" in _words(done.stdout)
    assert done.stdout.index("mla") < done.stdout.index("moe")  # the paraphrase ranks MLA


def test_search_json_carries_scores_and_every_field(home: Path) -> None:
    done = cli(home, "findings", "search", "KV cache per token", "-k", "2", "--json")

    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert {hit["id"] for hit in hits} == {MLA.id, MLA_AGAIN.id}
    assert hits[0]["score"] >= hits[1]["score"]
    assert Finding.model_validate({k: v for k, v in hits[0].items() if k != "score"}) in ALL


def test_list_filters_and_orders_newest_first(home: Path) -> None:
    listed = cli(home, "findings", "list", "--mechanism", "mla", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [f["id"] for f in json.loads(listed.stdout)] == [MLA_AGAIN.id, MLA.id]

    since = cli(home, "findings", "list", "--since", "2025-04-01", "--verdict", "partial")
    assert since.returncode == 0, since.stderr
    _fits_80_columns(since.stdout)
    assert RUN_B in since.stdout and "moe" in since.stdout and "mla" not in since.stdout

    by_paper = cli(home, "findings", "list", "--paper", "ARXIV:MOE", "--json")
    assert [f["id"] for f in json.loads(by_paper.stdout)] == [MOE.id]


def test_show_a_finding_or_a_run(home: Path) -> None:
    one = cli(home, "findings", "show", MLA.id)
    assert one.returncode == 0, one.stderr
    _fits_80_columns(one.stdout)
    for text in (MLA.id, MLA.evidence, "the decoupled RoPE key is cached too", "0.071 x"):
        assert text in _words(one.stdout)

    run = cli(home, "findings", "show", RUN_B, "--json")
    assert run.returncode == 0, run.stderr
    assert sorted(f["id"] for f in json.loads(run.stdout)) == sorted([MLA_AGAIN.id, MOE.id])

    missing = cli(home, "findings", "show", "no-such-run")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no finding or run 'no-such-run'" in missing.stderr


def test_export_csv_and_json_round_trip(home: Path, tmp_path: Path) -> None:
    as_csv = cli(home, "findings", "export", "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row["id"] for row in rows] == [MOE.id, MLA_AGAIN.id, MLA.id]  # date, run, id
    mla = next(row for row in rows if row["id"] == MLA.id)
    assert mla["run_id"] == RUN_A and mla["measured_value"] == "0.071"
    assert mla["gotchas"] == "the decoupled RoPE key is cached too"

    target = tmp_path / "out" / "findings.json"
    target.parent.mkdir()
    as_json = cli(home, "findings", "export", "--json", "--mechanism", "mla", "-o", str(target))
    assert as_json.returncode == 0, as_json.stderr
    assert [Finding.model_validate(f) for f in json.loads(target.read_text())] == [MLA_AGAIN, MLA]
    assert not list(target.parent.glob("*.partial"))

    both = cli(home, "findings", "export", "--json", "--csv")
    assert both.returncode == 2 and "choose one format" in both.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("list", "--since", "2025-02-30"), "since '2025-02-30': expected a date like"),
        (("search", "kv", "--verdict", "maybe"), "unknown verdict 'maybe'"),
        (("search", "   "), "search needs a query"),
        (("list", "--limit", "0"), "--limit 0: must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(home: Path, args: tuple[str, ...], message: str) -> None:
    done = cli(home, "findings", *args)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr


def test_a_fresh_home_has_no_findings_and_gets_no_store(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    done = cli(home, "findings", "search", "KV cache")

    assert done.returncode == 0, done.stderr
    assert "no findings yet: publish a run first" in done.stdout
    assert not (home / "memory").exists()


def test_filters_that_match_nothing_say_so(home: Path) -> None:
    done = cli(home, "findings", "list", "--mechanism", "rope")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no findings match these filters"


def test_a_chroma_server_that_is_down_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    done = cli(tmp_path / "home", "findings", "list", REPRODESK_CHROMA_URL=url)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"cannot reach the Chroma server at {url}" in done.stderr


def test_the_cli_search_imports_no_torch(home: Path) -> None:
    """The 7.5 s of the old search were torch, transformers and sentence-transformers."""
    script = (
        "import sys\n"
        "from reprodesk.cli import main\n"
        "try:\n"
        "    main(['findings', 'search', 'KV cache per token', '--json'])\n"
        "except SystemExit as done:\n"
        "    heavy = [m for m in ('torch', 'transformers', 'sentence_transformers')\n"
        "             if m in sys.modules]\n"
        "    sys.stderr.write(f'exit={done.code} heavy={heavy}\\n')\n"
    )
    done = python(home, "-c", script)

    assert done.stderr.strip().splitlines()[-1] == "exit=0 heavy=[]", done.stderr[-2000:]
    assert json.loads(done.stdout)[0]["mechanism"] == "mla"
