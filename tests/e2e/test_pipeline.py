"""The whole product, as a user drives it: the CLI in fresh processes, a temporary home,
the real graph and checkpointer, real PyTorch jobs in the real sandbox, a real Chroma store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox import backend_report

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "mla_note.md"

_bwrap = {name: (ok, why) for name, ok, why in backend_report()}.get("bwrap", (False, "unknown"))
pytestmark = pytest.mark.skipif(not _bwrap[0], reason=f"bubblewrap cannot run here: {_bwrap[1]}")


def cli(home: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    env["REPRODESK_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "reprodesk", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("home")
    cli(home, "run", str(SAMPLE), "--auto-approve", "--llm", "offline", "--run-id", "demo")
    return home, "demo"


def _evidence(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "evidence.json").read_text())


def test_run_publishes_a_writeup_with_the_measured_claims(published: tuple[Path, str]) -> None:
    home, run_id = published
    folder = home / "runs" / run_id
    for name in ("writeup.md", "evidence.json", "paper.json", "trace.jsonl", "code/mla/mla.py"):
        assert (folder / name).is_file(), name
    png = next((folder / "figures").glob("*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "writeup.md").read_text()
    for section in (
        "## TL;DR",
        "## Setup and scale-down record",
        "## Claims",
        "## Gotchas",
        "## Finance angle",
        "## Reproduce it",
    ):
        assert section in md
    ev = _evidence(folder)
    by_id = {n["id"]: n for n in ev["numbers"]}
    # The 2.25-group equivalence and the MLA/MHA ratio, measured, each traced to a job metric.
    groups = by_id["mla_gqa_equivalent_groups.measured"]
    assert groups["value"] == pytest.approx(2.25) and groups["kind"] == "measured"
    assert groups["source"]["metric"].startswith("claims.")
    ratio = by_id["mla_vs_mha_cache_ratio.measured"]
    assert ratio["value"] == pytest.approx((32 + 4) / (2 * 128 * 8))
    assert f"| {ratio['display']} |" in md and "2.25" in md
    # the metric path really leads to the value in the stored metrics
    metrics = json.loads((folder / "results" / ratio["source"]["job"] / "metrics.json").read_text())
    node: Any = metrics
    for part in ratio["source"]["metric"].split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert node == pytest.approx(ratio["value"])
    assert "**not checkable**" in md  # the throughput claim, honestly marked


def test_every_number_in_the_writeup_is_in_evidence(published: tuple[Path, str]) -> None:
    from reprodesk.schemas import EvidenceItem
    from tools.evidence import untraceable

    home, run_id = published
    folder = home / "runs" / run_id
    items = [EvidenceItem.model_validate(n) for n in _evidence(folder)["numbers"]]
    md = (folder / "writeup.md").read_text()
    assert untraceable(md, items) == []
    assert untraceable(md + "\nalso 123.4 ms\n", items) == ["123.4"]


def test_findings_search_finds_the_published_finding(published: tuple[Path, str]) -> None:
    home, run_id = published
    proc = cli(home, "findings", "search", "how much smaller is the KV cache", "-k", "3", "--json")
    hits = json.loads(proc.stdout)
    assert hits and hits[0]["mechanism"] == "mla" and hits[0]["run_id"] == run_id


def test_replay_lists_every_step(published: tuple[Path, str]) -> None:
    home, run_id = published
    steps = [json.loads(line) for line in cli(home, "replay", run_id, "--json").stdout.splitlines()]
    ran = [node for s in steps for node in s["ran"]]
    assert ran == [
        "reader",
        "plan_gate",
        "reproducer",
        "code_gate",
        "execute",
        "profiler",
        "writer",
        "finance_critic",
        "publish_gate",
        "publish",
    ]
    human = cli(home, "replay", run_id).stdout
    assert "finance_critic" in human and "approved" in human
    assert run_id in cli(home, "runs").stdout


def test_pause_at_code_gate_then_resume_from_new_processes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = cli(home, "run", str(SAMPLE), "--run-id", "gated", check=3)
    assert "reprodesk resume gated --approve" in first.stdout
    review = home / "review" / "gated" / "code" / "mla"
    assert (review / "mla.py").read_text() == (ROOT / "recipes" / "mla.py").read_text()
    assert "--n-heads 128" in (review / "command.txt").read_text()
    from sandbox.ledger import Ledger

    assert Ledger(home / "ledger.sqlite").launches("gated") == {}  # nothing ran before approval
    second = cli(home, "resume", "gated", "--approve", check=3)  # now waits at publish
    assert "publish gate" in second.stdout
    cli(home, "resume", "gated", "--approve", check=0)
    assert (home / "runs" / "gated" / "writeup.md").is_file()
    launches = Ledger(home / "ledger.sqlite").launches("gated")
    assert launches and set(launches.values()) == {1}
    again = cli(home, "resume", "gated", "--approve", check=2)
    assert "already ended" in again.stderr


def test_rejected_at_the_code_gate_runs_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli(home, "run", str(SAMPLE), "--run-id", "nope", check=3)
    proc = cli(home, "resume", "nope", "--reject", "not today", check=4)
    assert "rejected at the code gate: not today" in proc.stderr
    assert not (home / "runs" / "nope" / "writeup.md").exists()
    assert (home / "runs" / "nope" / "trace.jsonl").is_file()  # the run layer's record


def test_a_paper_the_catalog_does_not_know_ends_clearly(tmp_path: Path) -> None:
    paper = tmp_path / "cnn.md"
    paper.write_text("# Deeper convolutions\n\nWe train a ResNet on CIFAR-10 and gain 1.2%.\n")
    proc = cli(tmp_path / "home", "run", str(paper), "--auto-approve", check=4)
    assert "unsupported" in proc.stderr and "add a recipe under recipes/" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: str(d / "missing.pdf"), r"missing\.pdf"),
        (lambda d: "http://127.0.0.1:9/paper.pdf", r"127\.0\.0\.1:9"),
        (lambda d: _write(d / "fig.pdf", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), r"image"),
        (lambda d: _write(d / "empty.md", b""), r"empty"),
        (lambda d: _image_pdf(d / "scan.pdf"), r"no text"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, make: Any, reason: str) -> None:
    home = tmp_path / "home"
    proc = cli(home, "run", make(tmp_path), "--auto-approve", check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(reason, lines[0]), proc.stderr
    assert not (home / "runs.sqlite").exists() and not (home / "runs").exists()


def test_doctor_reports_the_backends(tmp_path: Path) -> None:
    proc = cli(tmp_path / "home", "doctor")
    assert "sandbox: bwrap" in proc.stdout and "torch" in proc.stdout


def test_unknown_run_id_is_one_line(tmp_path: Path) -> None:
    for args in (("resume", "ghost", "--approve"), ("replay", "ghost")):
        proc = cli(tmp_path / "home", *args, check=2)
        assert proc.stderr.strip().count("\n") == 0 and "ghost" in proc.stderr


def _image_pdf(path: Path) -> str:
    from tests.pdfgen import make_image_pdf

    make_image_pdf(path)
    return str(path)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)
