"""FP8's catalog entry: the Reader finds it and its values, the scaler keeps tile and block."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from agents.offline.reproducer import recipe_argv
from recipes.catalog import CATALOG
from recipes.catalog.fp8_blockwise import RECIPE, scale
from reprodesk.schemas import Paper
from tools.digest import digest

ROOT = Path(__file__).resolve().parents[2]
NOTE = ROOT / "examples" / "fp8_note.md"

# The DeepSeek-V3 report's way of writing it: "×", spaces, N_C in math italic.
DEEPSEEK_V3 = (
    "(1) for activations, we group and scale elements on a 1 × 128 tile basis (i.e., per "
    "token per 128 channels); and (2) for weights, we group and scale elements on a 128 × 128 "
    "block basis (i.e., per 128 input channels per 128 output channels). In our case, we set "
    "𝑁𝐶 = 128 elements, equivalent to 4 WGMMAs, as the minimal accumulation interval. In "
    "contrast to the hybrid FP8 format adopted by prior work, we adopt the E4M3 format on all "
    "tensors for higher precision. We propose a fine-grained quantization method for FP8."
)
EXPECTED = {"tile": 128.0, "block": 128.0, "fp8_exponent_bits": 4.0, "promotion_interval": 128.0}


def pages() -> list[str]:
    """The note cut into pages at its section headings, so that pages can be checked."""
    return re.split(r"\n(?=## )", NOTE.read_text())


def paper(*texts: str) -> Paper:
    return Paper(source="n.md", kind="markdown", title="t", pages=list(texts), sha256="0")


def test_the_note_targets_fp8_with_every_hyperparameter_on_its_page() -> None:
    found = digest(paper(*pages()))
    assert found.mechanisms[0].name == "fp8_blockwise"
    assert found.mechanisms[0].score > 2 * max([0.0] + [m.score for m in found.mechanisms[1:]])
    ours = [h for h in found.hyperparameters if h.name in EXPECTED]
    assert {h.name: h.value for h in ours} == EXPECTED
    page = next(i for i, p in enumerate(pages(), start=1) if "## 2. The mechanism" in p)
    assert {h.quote.page for h in ours} == {page}


def test_the_real_paper_wording() -> None:
    found = digest(paper("Nothing here.", DEEPSEEK_V3))
    assert found.mechanisms[0].name == "fp8_blockwise"
    assert {h.name: h.value for h in found.hyperparameters if h.name in EXPECTED} == EXPECTED
    assert {h.quote.page for h in found.hyperparameters} == {2}


def test_other_formats_and_sizes_are_read_as_stated() -> None:
    text = (
        "Activations are scaled on a 1x64 tile basis and weights on a 64x64 block basis. "
        "We adopt the E5M2 format on all tensors. FP8 fine-grained quantization is used."
    )
    values = {h.name: h.value for h in digest(paper(text)).hyperparameters}
    assert values == {"tile": 64.0, "block": 64.0, "fp8_exponent_bits": 5.0}
    assert scale({k: (v, "paper p.1") for k, v in values.items()}).args["dtype"] == "e5m2"


def test_claims_it_cannot_check_are_found() -> None:
    claims = digest(paper(NOTE.read_text())).claims
    assert {"0.25%", "2%"} <= {n for c in claims for n in c.numbers}
    for pattern, why in RECIPE.not_checkable:
        assert any(re.search(pattern, c.text) for c in claims), pattern
        assert why


def test_scale_keeps_tile_block_and_format_with_sources() -> None:
    scaled = scale({"tile": (128.0, "paper p.3"), "block": (128.0, "paper p.3")})
    a = scaled.args
    assert (a["tile"], a["block"], a["dtype"]) == (128, 128, "e4m3")
    assert int(a["in_features"]) % 128 == 0 and int(a["out_features"]) % 128 == 0
    rows = {r.name: r for r in scaled.rows}
    assert rows["tile"].source == "paper p.3" and rows["tile"].ours == 128
    assert rows["fp8_exponent_bits"].source.startswith("not stated")
    assert all(r.source for r in scaled.rows)
    assert scaled.carries_over and scaled.does_not_carry_over


def test_scale_sizes_the_matrices_to_hold_whole_tiles_and_blocks() -> None:
    a = scale({"tile": (96.0, "paper p.1"), "block": (160.0, "paper p.1")}).args
    assert int(a["in_features"]) % 96 == 0 and int(a["in_features"]) % 160 == 0
    assert int(a["out_features"]) % 160 == 0


def test_the_scaled_command_runs(tmp_path: Path) -> None:
    recipe = CATALOG["fp8_blockwise"]
    assert recipe.script is not None and recipe.scale is not None
    found = digest(paper(*pages()))
    stated = {h.name: (h.value, f"paper p.{h.quote.page}") for h in found.hyperparameters}
    argv = recipe_argv(recipe.script, recipe.scale(stated).args)
    assert argv[:2] == ["python", "fp8_blockwise.py"] and argv[-2:] == ["--out", "out"]
    argv = [sys.executable, str(ROOT / "recipes" / argv[1]), *argv[2:-1], str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"] == "fp8_blockwise" and metrics["config"]["tile"] == 128
