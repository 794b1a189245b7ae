"""MTP's catalog entry: the Reader finds it and its values, the scaler keeps what claims need."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from agents.offline.reproducer import recipe_argv
from recipes.catalog import CATALOG
from recipes.catalog.mtp import RECIPE, scale
from reprodesk.schemas import Paper
from tools.digest import digest

ROOT = Path(__file__).resolve().parents[2]
NOTE = ROOT / "examples" / "mtp_note.md"

# Sentences as pypdf might extract them from the DeepSeek-V3 report (math italic letters).
DEEPSEEK_V3 = (
    "We set the number of Transformer layers to 61 and the hidden dimension to 7168. "
    "We set the MTP depth 𝐷 to 1, i.e., besides the exact next token, each token will "
    "predict one additional token. The MTP loss weight 𝜆 is set to 0.3 for the first 10T "
    "tokens, and to 0.1 for the remaining 4.8T tokens. We pre-train DeepSeek-V3 on 14.8T "
    "high-quality and diverse tokens. We adopt a Multi-Token Prediction (MTP) objective."
)
EXPECTED = {
    "mtp_depth": 1.0,
    "mtp_lambda": 0.3,
    "mtp_lambda_late": 0.1,
    "lambda_first_tokens": 10.0,
    "lambda_remaining_tokens": 4.8,
    "train_tokens": 14.8,
    "d_model": 7168.0,
    "n_layers": 61.0,
}


def pages() -> list[str]:
    """The note cut into pages at its section headings, so that pages can be checked."""
    return re.split(r"\n(?=## )", NOTE.read_text())


def paper(*texts: str) -> Paper:
    return Paper(source="n.md", kind="markdown", title="t", pages=list(texts), sha256="0")


def test_the_note_targets_mtp_with_every_hyperparameter_on_its_page() -> None:
    found = digest(paper(*pages()))
    assert found.mechanisms[0].name == "mtp"
    assert found.mechanisms[0].score > 2 * max([0.0] + [m.score for m in found.mechanisms[1:]])
    ours = [h for h in found.hyperparameters if h.name in EXPECTED]
    assert {h.name: h.value for h in ours} == EXPECTED
    hp_page = next(i for i, p in enumerate(pages(), start=1) if "## 3. Hyperparameters" in p)
    assert {h.quote.page for h in ours} == {hp_page}
    for h in ours:
        assert h.quote.text in " ".join(pages()[hp_page - 1].split())


def test_the_real_paper_wording() -> None:
    found = digest(paper("Nothing here.", DEEPSEEK_V3))
    assert found.mechanisms[0].name == "mtp"
    assert {h.name: h.value for h in found.hyperparameters if h.name in EXPECTED} == EXPECTED
    assert {h.quote.page for h in found.hyperparameters} == {2}


def test_claims_the_run_checks_and_those_it_cannot_are_found() -> None:
    claims = digest(paper(NOTE.read_text())).claims
    numbers = {n for c in claims for n in c.numbers}
    assert {"85%", "90%", "1.8", "14"} <= numbers
    for pattern, why in RECIPE.not_checkable:
        assert any(re.search(pattern, c.text) for c in claims), pattern
        assert why


def test_scale_keeps_depth_lambdas_and_the_switch_point_with_sources() -> None:
    stated = {
        "mtp_depth": (1.0, "paper p.4"),
        "mtp_lambda": (0.3, "paper p.4"),
        "mtp_lambda_late": (0.1, "paper p.4"),
        "lambda_first_tokens": (10.0, "paper p.4"),
        "lambda_remaining_tokens": (4.8, "paper p.4"),
    }
    scaled = scale(stated)
    a = scaled.args
    assert (a["mtp_depth"], a["mtp_lambda"], a["mtp_lambda_late"]) == (1, 0.3, 0.1)
    assert a["lambda_switch"] == round(10 / 14.8, 4)
    rows = {r.name: r for r in scaled.rows}
    assert rows["mtp_depth"].source == "paper p.4" and rows["mtp_depth"].ours == 1
    assert rows["lambda_switch"].source == "paper p.4 / paper p.4"
    assert rows["d_model"].source.startswith("not stated")  # and says which default
    assert rows["d_model"].paper == 7168 and rows["d_model"].ours == a["d_model"]
    assert all(r.source for r in scaled.rows)
    assert scaled.carries_over and scaled.does_not_carry_over


def test_scale_caps_a_deep_chain_and_says_so() -> None:
    scaled = scale({"mtp_depth": (8.0, "paper p.2"), "train_tokens": (20.0, "paper p.1")})
    assert scaled.args["mtp_depth"] == 3
    row = next(r for r in scaled.rows if r.name == "mtp_depth")
    assert "capped" in row.description and row.paper == 8
    assert scaled.args["lambda_switch"] == 0.5  # 10T of 20T: the default first phase


def test_the_scaled_command_runs(tmp_path: Path) -> None:
    recipe = CATALOG["mtp"]
    assert recipe.script is not None and recipe.scale is not None
    found = digest(paper(*pages()))
    stated = {h.name: (h.value, f"paper p.{h.quote.page}") for h in found.hyperparameters}
    argv = recipe_argv(recipe.script, recipe.scale(stated).args)
    assert argv[:2] == ["python", "mtp.py"] and argv[-2:] == ["--out", "out"]
    argv = [sys.executable, str(ROOT / "recipes" / argv[1]), *argv[2:-1], str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"] == "mtp" and metrics["config"]["lambda_switch"] == round(10 / 14.8, 4)
