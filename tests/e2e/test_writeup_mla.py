"""A full offline run of the sample MLA note, then what a colleague does with the write-up:
verify it, export it (zh, HTML), show it. Real PyTorch jobs in the real sandbox; the
write-up must explain the latency it measured and carry a gotcha from this run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.test_pipeline import SAMPLE, cli, pytestmark  # noqa: F401  (the bwrap skip)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("home")
    cli(home, "run", str(SAMPLE), "--auto-approve", "--llm", "offline", "--run-id", "mla")
    return home, home / "runs" / "mla"


def test_the_published_writeup_verifies(run: tuple[Path, Path]) -> None:
    home, _ = run
    done = cli(home, "verify", "mla")
    assert "verifies" in done.stdout


def test_the_writeup_explains_the_latency_it_measured(run: tuple[Path, Path]) -> None:
    _, folder = run
    md = (folder / "writeup.md").read_text()
    shows = md.split("### What the measurements show", 1)[1].split("\n### ", 1)[0]
    ranking = re.search(r"fastest first: (\w+) ([\d.]+) ms < (\w+) ([\d.]+) ms", shows)
    assert ranking, shows
    # the numbers in the explanation are this run's: the main job's medians
    evidence = json.loads((folder / "evidence.json").read_text())["numbers"]
    fastest = ranking.group(1)
    item = next(e for e in evidence if e["id"] == f"mla.analysis.{fastest}.decode_ms_median")
    metrics = json.loads((folder / "results" / item["source"]["job"] / "metrics.json").read_text())
    assert item["display"] == ranking.group(2)
    assert metrics["variants"][fastest]["decode_ms_median"] == pytest.approx(item["value"])
    assert "recompute form" in shows and "cached_kv form" in shows and "Along the grid" in shows
    gotchas = md.split("### Gotchas", 1)[1].split("\n## ", 1)[0]
    assert "From this run:" in gotchas


def test_zh_and_html_exports_verify_and_show_lists_figures(run: tuple[Path, Path]) -> None:
    home, folder = run
    cli(home, "export", "mla", "--lang", "en,zh", "--html")
    for name in ("writeup.zh.md", "writeup.html", "writeup.zh.html"):
        assert (folder / name).is_file(), name
    cli(home, "verify", "mla")  # the zh write-up carries exactly the en numbers
    zh = folder / "writeup.zh.md"
    zh.write_text(zh.read_text().replace("## 摘要", "## 摘要\n\n快 9 倍。", 1))
    failed = cli(home, "verify", "mla", check=1)
    assert "writeup.zh.md" in failed.stderr and '"9"' in failed.stderr
    shown = cli(home, "show", "mla").stdout
    assert "figures/mla-grid.png" in shown and "evidence.json" in shown


def test_verify_fails_quoting_a_number_added_by_hand(run: tuple[Path, Path]) -> None:
    home, folder = run
    (folder / "writeup.zh.md").unlink(missing_ok=True)
    md = folder / "writeup.md"
    md.write_text(md.read_text() + "\nOn a 4070 MLA serves 37 users.\n")
    failed = cli(home, "verify", "mla", check=1)
    assert "On a 4070 MLA serves 37 users." in failed.stderr
