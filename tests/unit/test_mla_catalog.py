"""MLA's catalog entry: the Reader finds it, the scaler keeps the ratios the claims need."""

from __future__ import annotations

from pathlib import Path

from recipes.catalog import CATALOG
from recipes.catalog.mla import scale
from reprodesk.schemas import Paper
from tools.digest import digest

ROOT = Path(__file__).resolve().parents[2]


def test_scale_keeps_the_ratios_and_cites_the_paper() -> None:
    stated = {
        "n_heads": (128.0, "paper p.4"),
        "d_head": (128.0, "paper p.4"),
        "d_c": (512.0, "paper p.4"),
        "d_rope": (64.0, "paper p.5"),
    }
    scaled = scale(stated)
    a = scaled.args
    assert int(a["d_c"]) / int(a["d_head"]) == 512 / 128
    assert int(a["d_rope"]) / int(a["d_head"]) == 64 / 128
    assert a["n_heads"] == 128 and int(a["d_rope"]) % 2 == 0
    rows = {r.name: r for r in scaled.rows}
    assert rows["d_rope"].source == "paper p.5"
    assert rows["n_layers"].source.startswith("not stated")  # and says which default


def test_scale_with_ratios_that_need_a_larger_head() -> None:
    # d_h^R = d_h / 8: at d_h = 8 the RoPE key would be 1 wide (odd); 16 keeps it exact and even.
    scaled = scale({"d_head": (64.0, "p"), "d_c": (224.0, "p"), "d_rope": (8.0, "p")})
    assert scaled.args["d_head"] == 16 and scaled.args["d_c"] == 56 and scaled.args["d_rope"] == 2


def test_the_sample_note_targets_mla() -> None:
    text = (ROOT / "examples" / "mla_note.md").read_text()
    paper = Paper(source="n.md", kind="markdown", title="t", pages=[text], sha256="0")
    found = digest(paper)
    assert found.mechanisms[0].name == "mla"
    recipe = CATALOG["mla"]
    assert recipe.script is not None and (ROOT / "recipes" / recipe.script).is_file()
