"""Arithmetic claims: computed from the paper's own stated values, with the formula, or
the row says which value the paper does not state. The real graph, Reader, Writer and
publish step on a small paper; a fake sandbox whose claims carry the recipe's formula."""

from __future__ import annotations

import json
from pathlib import Path

from agents.policies import offline_policies
from reprodesk.compose import build_app
from reprodesk.schemas import Job, Limits, RunResult
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore, canned_metrics
from tools.papers import load_paper
from tools.verify import verify_run

FORMULAS = {
    "mla_gqa_equivalent_groups": "(d_c + d_rope) / (2 * d_head)",
    "mla_vs_mha_cache_ratio": "(d_c + d_rope) / (2 * n_heads * d_head)",
}
PAPER = """# A note on Multi-head Latent Attention

We adopt Multi-head Latent Attention (MLA), which utilizes low-rank key-value joint
compression. A decoupled RoPE strategy carries the position.

The KV compression dimension d_c is set to 512 and the per-head dimension d_h is set to
128. The number of attention heads n_h is set to 128.{rope} The model has 60 layers.

MLA requires a much smaller KV cache than MHA, while its performance is stronger.
"""


def _with_formulas(job: Job, n: int) -> RunResult:
    metrics = canned_metrics(job.argv[1], job.argv)
    for c in metrics["claims"]:
        if c["id"] in FORMULAS:
            c["formula"] = FORMULAS[c["id"]]
            c["unit"] = "ratio" if "ratio" in c["id"] else "groups"
            c["paper_value"] = c["measured_value"] = 0.017578125 if "ratio" in c["id"] else 2.25
    return ok_result(metrics)


def ok_result(metrics: dict) -> RunResult:
    """A successful fake job that printed `metrics` (shared by the write-up tests)."""
    stdout = json.dumps(metrics) + "\n"
    return RunResult(
        status="ok",
        exit_code=0,
        message="exit code 0",
        stdout=stdout,
        duration_s=0.01,
        metrics=metrics,
        backend="fake",
    )


def _publish(tmp_path: Path, rope: str) -> Path:
    note = tmp_path / "note.md"
    note.write_text(PAPER.format(rope=rope))
    app = build_app(
        Settings(home=tmp_path / "home", gates=[]),  # type: ignore[arg-type]
        sandbox=FakeSandbox(respond=_with_formulas),
        policies=offline_policies(Limits()),
        store=ListStore(),
    )
    *_, last = app.runs.start(load_paper(str(note)), policy=app.policy(), run_id="a")
    assert last.view is not None and last.view.status == "published", last.view
    return tmp_path / "home" / "runs" / "a"


def test_a_claim_the_paper_does_not_state_is_computed_from_its_values(tmp_path: Path) -> None:
    folder = _publish(
        tmp_path, " For the decoupled queries and key, we set the per-head dimension d_h^R to 64."
    )
    md = (folder / "writeup.md").read_text()
    row = next(r for r in md.splitlines() if r.startswith("| MLA's KV cache equals GQA"))
    assert "| 2.25 | derived from the paper's stated values" in row
    assert "derived from the paper's stated values: `(d_c + d_rope) / (2 * d_head)`" in row
    assert "d_c = 512 (p.1)" in row and "d_rope = 64 (p.1)" in row
    ratio = next(r for r in md.splitlines() if r.startswith("| MLA caches (d_c + d_h^R) /"))
    assert "| 1.758% | derived from the paper's stated values" in ratio
    evidence = {e["id"]: e for e in json.loads((folder / "evidence.json").read_text())["numbers"]}
    derived = evidence["mla_gqa_equivalent_groups.derived"]
    assert derived["kind"] == "derived" and derived["value"] == 2.25
    assert "(d_c + d_rope) / (2 * d_head)" in derived["source"]["formula"]
    assert evidence["mla_gqa_equivalent_groups.input.d_c"]["kind"] == "paper"
    assert "512" in evidence["mla_gqa_equivalent_groups.input.d_c"]["source"]["quote"]
    assert verify_run(folder).ok


def test_a_missing_value_is_named(tmp_path: Path) -> None:
    folder = _publish(tmp_path, "")
    md = (folder / "writeup.md").read_text()
    row = next(r for r in md.splitlines() if r.startswith("| MLA caches (d_c + d_h^R) /"))
    assert "| not stated | — |" in row
    assert "it cannot be computed either: the paper does not state `d_rope`" in row
    assert verify_run(folder).ok
