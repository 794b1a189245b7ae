"""Several mechanisms per paper, a contribution the catalog lacks, and one driver per run:
the real CLI in fresh processes, real PyTorch jobs in the real sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox import backend_report
from sandbox.ledger import Ledger
from tools.evidence import untraceable

ROOT = Path(__file__).resolve().parents[2]

_bwrap = {name: (ok, why) for name, ok, why in backend_report()}.get("bwrap", (False, "unknown"))
pytestmark = pytest.mark.skipif(not _bwrap[0], reason=f"bubblewrap cannot run here: {_bwrap[1]}")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    env.update(REPRODESK_HOME=str(home), **extra)
    return env


def cli(home: Path, *args: str, check: int | None = 0, **extra: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "reprodesk", *args],
        env=_env(home, **extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def _traced(folder: Path) -> dict[str, Any]:
    from reprodesk.schemas import EvidenceItem

    evidence = json.loads((folder / "evidence.json").read_text())
    items = [EvidenceItem.model_validate(n) for n in evidence["numbers"]]
    assert untraceable((folder / "writeup.md").read_text(), items) == []
    return evidence


def test_two_mechanism_note_publishes_one_writeup_with_both(tmp_path: Path) -> None:
    home = tmp_path / "home"
    note = ROOT / "examples" / "deepseek_v2_note.md"
    cli(home, "run", str(note), "--auto-approve", "--run-id", "v2")
    folder = home / "runs" / "v2"
    md = (folder / "writeup.md").read_text()
    assert md.count("## TL;DR") == 1
    assert "## DeepSeekMoE" in md and "## Multi-head Latent Attention" in md
    evidence = _traced(folder)
    mechanisms = {f["mechanism"] for f in evidence["findings"]}
    assert mechanisms == {"deepseek_moe", "mla"}
    for key in ("mla", "deepseek_moe"):
        assert (folder / "code" / key / "command.txt").is_file()
    assert list((folder / "figures").glob("mla-*.png"))
    # each claim's measured value follows its metric path into the stored metrics
    for item in evidence["numbers"]:
        if item["kind"] == "measured" and "metric" in item["source"]:
            metrics = json.loads((folder / item["source"]["artifact"]).read_text())
            node: Any = metrics
            for part in item["source"]["metric"].split("."):
                node = node[int(part)] if isinstance(node, list) else node[part]
            assert float(node) == pytest.approx(item["value"])
    assert set(Ledger(home / "ledger.sqlite").launches("v2").values()) == {1}
    assert not list((home / "cache" / "jobs").glob("job-*"))  # removed once published


def test_new_mechanism_built_on_a_catalog_one_says_it_was_not_reproduced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    note = ROOT / "examples" / "sparse_mla_note.md"
    proc = cli(home, "run", str(note), "--auto-approve", "--run-id", "trsa")
    assert "not reproduced: Token-Routed Sparse Attention (TRSA)" in proc.stderr
    md = (home / "runs" / "trsa" / "writeup.md").read_text()
    first = md.split("## TL;DR")[0]
    assert "Not reproduced: Token-Routed Sparse Attention (TRSA)" in first
    assert "not this paper's" in first  # MLA is what it builds on, not its result
    views = [json.loads(line) for line in cli(home, "runs", "--json").stdout.splitlines()]
    assert [(v["run_id"], v["status"]) for v in views] == [("trsa", "published")]
    assert views[0]["not_reproduced"] == ["Token-Routed Sparse Attention (TRSA)"]
    _traced(home / "runs" / "trsa")


def test_two_concurrent_resumes_launch_each_job_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    note = ROOT / "examples" / "mla_note.md"
    gates = '["code"]'
    cli(home, "run", str(note), "--run-id", "twice", check=3, REPRODESK_GATES=gates)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "reprodesk", "resume", "twice", "--approve"],
            env=_env(home, REPRODESK_GATES=gates),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "being driven by pid" in refused or "moved on" in refused or "already ended" in refused
    launches = Ledger(home / "ledger.sqlite").launches("twice")
    assert launches and set(launches.values()) == {1}, launches
    assert (home / "runs" / "twice" / "writeup.md").is_file()
