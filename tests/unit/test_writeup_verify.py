"""The verifier and the publish gate, in-process: the real graph, Writer, Critic and
publish step; a fake sandbox with canned results; no bubblewrap, no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agents.policies import offline_policies
from reprodesk.compose import App, build_app
from reprodesk.schemas import Job, Limits, RunResult
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore
from tools.export import export_html
from tools.papers import load_paper
from tools.verify import png_size, same_numbers, verify_markdown, verify_run
from tools.zh import translate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _app(tmp_path: Path, gates: tuple[str, ...] = ()) -> App:
    settings = Settings(home=tmp_path / "home", gates=list(gates))  # type: ignore[arg-type]
    return build_app(
        settings, sandbox=FakeSandbox(), policies=offline_policies(Limits()), store=ListStore()
    )


def _run(app: App) -> str:
    paper = load_paper(str(EXAMPLES / "mla_note.md"))
    *_, last = app.runs.start(paper, policy=app.policy(), run_id="r1")
    assert last.view is not None
    return last.view.status


@pytest.fixture
def published(tmp_path: Path) -> Path:
    assert _run(_app(tmp_path)) == "published"
    return tmp_path / "home" / "runs" / "r1"


def test_the_honest_writeup_verifies_and_its_figures_are_valid_pngs(published: Path) -> None:
    report = verify_run(published)
    assert report.ok, [str(p) for p in report.problems]
    assert report.numbers > 20 and report.figures >= 1
    for png in (published / "figures").glob("*.png"):
        width, height = png_size(png.read_bytes()) or (0, 0)
        assert width > 100 and height > 100, png.name
    critique = json.loads((published / "critique.json").read_text())
    assert critique["verdict"] in ("approve", "revise") and "points" in critique


def test_an_injected_number_is_caught_and_quoted(published: Path) -> None:
    md = (published / "writeup.md").read_text()
    (published / "writeup.md").write_text(
        md.replace("## TL;DR\n", "## TL;DR\n\nMLA is 7.3x faster.\n", 1)
    )
    report = verify_run(published)
    assert not report.ok
    assert [(p.kind, p.text) for p in report.problems] == [("number", "MLA is 7.3x faster.")]


def test_a_second_copy_of_a_traced_number_is_caught(published: Path) -> None:
    md = (published / "writeup.md").read_text()
    evidence = json.loads((published / "evidence.json").read_text())["numbers"]
    shown = next(e["display"] for e in evidence if e["kind"] == "measured" and "." in e["display"])
    (published / "writeup.md").write_text(md + f"\nAnd again: {shown} ms.\n")
    problems = verify_run(published).problems
    assert problems and all(p.kind == "number" for p in problems)
    assert problems[-1].text == f"And again: {shown} ms."


def test_missing_empty_or_broken_figures_are_named(published: Path) -> None:
    figures = sorted((published / "figures").glob("*.png"))
    figures[0].write_bytes(b"")
    report = verify_run(published)
    assert [(p.kind, p.message) for p in report.problems] == [("figure", "file is empty")]
    assert report.problems[0].text == f"figures/{figures[0].name}"
    figures[0].write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert verify_run(published).problems[0].message == "not a valid PNG"
    figures[0].unlink()
    assert verify_run(published).problems[0].message == "file is missing"


def test_zh_writeup_carries_exactly_the_english_numbers(published: Path) -> None:
    en = (published / "writeup.md").read_text()
    zh = translate(en)
    assert "## 摘要" in zh and "**已复现**" in zh and zh != en
    assert same_numbers(en, zh) == []
    (published / "writeup.zh.md").write_text(zh)
    assert verify_run(published).ok
    (published / "writeup.zh.md").write_text(zh.replace("## 摘要", "## 摘要\n\n快了 3 倍。", 1))
    problems = verify_run(published).problems
    assert [(p.kind, p.text) for p in problems] == [("translation", "3")]


def test_html_export_is_self_contained_with_evidence_anchors(published: Path) -> None:
    page = export_html(published).read_text()
    assert "data:image/png;base64," in page and 'src="figures/' not in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    anchors = set(re.findall(r'href="#(ev-[^"]+)"', page))
    ids = set(re.findall(r'<tr id="(ev-[^"]+)"', page))
    assert anchors and anchors <= ids


def test_publish_refuses_a_writeup_edited_at_the_gate_with_an_untraced_number(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path, gates=("publish",))
    assert _run(app) == "paused at the publish gate"
    review = tmp_path / "home" / "review" / "r1" / "publish" / "writeup.md"
    review.write_text(
        review.read_text().replace("## TL;DR\n", "## TL;DR\n\nMLA saves 61% of cost.\n", 1)
    )
    *_, last = app.runs.resume("r1", approve=True)
    assert last.view is not None and last.view.status != "published"
    assert last.view.outcome is not None
    assert "does not verify" in last.view.outcome.message
    assert "MLA saves 61% of cost." in last.view.outcome.message
    assert not (tmp_path / "home" / "runs" / "r1" / "writeup.md").exists()


def test_publish_refuses_a_pasted_key_and_publishes_an_honest_edit(tmp_path: Path) -> None:
    app = _app(tmp_path, gates=("publish",))
    assert _run(app) == "paused at the publish gate"
    review = tmp_path / "home" / "review" / "r1" / "publish" / "writeup.md"
    honest = review.read_text().replace("## TL;DR\n", "## TL;DR\n\nReviewed by the desk.\n", 1)
    review.write_text(honest + "\nkey: sk-live-abcdefghijklmnopqrstuvwxyz\n")
    *_, last = app.runs.resume("r1", approve=True)
    assert last.view is not None and last.view.outcome is not None
    assert "sk-live-abcdefghijklmnopqrstuvwxyz" in last.view.outcome.message

    app2 = _app(tmp_path / "second", gates=("publish",))
    assert _run(app2) == "paused at the publish gate"
    review2 = tmp_path / "second" / "home" / "review" / "r1" / "publish" / "writeup.md"
    review2.write_text(
        review2.read_text().replace("## TL;DR\n", "## TL;DR\n\nReviewed by the desk.\n", 1)
    )
    *_, done = app2.runs.resume("r1", approve=True)
    assert done.view is not None and done.view.status == "published"
    folder = tmp_path / "second" / "home" / "runs" / "r1"
    assert "Reviewed by the desk." in (folder / "writeup.md").read_text()
    assert verify_run(folder).ok


def test_verify_markdown_without_a_folder_skips_figures() -> None:
    report = verify_markdown("![f](figures/none.png) plain text", [])
    assert report.ok and report.figures == 0


def test_profile_csv_and_json_carry_every_job_with_its_environment(published: Path) -> None:
    from tools import profile_table

    csv_path, json_path = profile_table.write(published)
    table = json.loads(json_path.read_text())
    jobs = {p.name for p in (published / "results").iterdir() if (p / "metrics.json").is_file()}
    assert {row["job"] for row in table["rows"]} == jobs
    assert all(row["env.torch"] == "fake" and row["env.device"] == "cpu" for row in table["rows"])
    grid = [row for row in table["rows"] if row["source"].startswith("grid.")]
    assert grid and all("seq_len" in row for row in grid)
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header == table["columns"] and len(csv_path.read_text().splitlines()) == 1 + len(
        table["rows"]
    )


def test_the_writeup_says_which_repairs_the_run_needed(tmp_path: Path) -> None:
    def first_times_out(job: Job, n: int) -> RunResult | None:
        return RunResult(status="timeout", message="wall time 120 s exceeded") if n == 1 else None

    settings = Settings(home=tmp_path / "home", gates=[])  # type: ignore[arg-type]
    app = build_app(
        settings,
        sandbox=FakeSandbox(respond=first_times_out),
        policies=offline_policies(Limits()),
        store=ListStore(),
    )
    assert _run(app) == "published"
    folder = tmp_path / "home" / "runs" / "r1"
    md = (folder / "writeup.md").read_text()
    repair = [line for line in md.splitlines() if line.startswith("- Repair needed:")]
    assert (
        len(repair) == 1 and "`mla-attempt1` ended timeout: wall time 120 s exceeded" in repair[0]
    )
    assert "in 2 attempt(s)" in md
    assert verify_run(folder).ok
