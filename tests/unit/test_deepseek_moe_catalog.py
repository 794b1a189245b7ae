"""DeepSeekMoE's catalog entry: the Reader finds it and its values, the scaler keeps ratios."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents.offline.reproducer import recipe_argv
from recipes.catalog import CATALOG
from recipes.catalog.deepseek_moe import RECIPE, scale
from reprodesk.schemas import Paper
from tools.digest import digest

ROOT = Path(__file__).resolve().parents[2]
NOTE = ROOT / "examples" / "deepseek_moe_note.md"

EXPECTED = {
    "n_routed": 160.0,
    "n_shared": 2.0,
    "n_activated": 6.0,
    "d_expert_hidden": 1536.0,
    "d_model": 5120.0,
    "expert_fraction": 0.25,
    "aux_alpha": 0.003,
    "bias_gamma": 0.001,
}

# Sentences close to how pypdf extracts the DeepSeek-V2 and V3 reports (math italic letters).
DEEPSEEK_V2 = (
    "We set the number of Transformer layers to 60 and the hidden dimension to 5120. Each MoE "
    "layer consists of 2 shared experts and 160 routed experts, where the intermediate hidden "
    "dimension of each expert is 1536. Among the routed experts, 6 experts will be activated "
    "for each token. In addition, we set 𝛼1 to 0.003, 𝛼2 to 0.05, and 𝛼3 to 0.02."
)
DEEPSEEK_V3 = (
    "We set the number of Transformer layers to 61 and the hidden dimension to 7168. Each MoE "
    "layer consists of 1 shared expert and 256 routed experts, where the intermediate hidden "
    "dimension of each expert is 2048. Among the routed experts, 8 experts will be activated "
    "for each token, and each token will be ensured to be sent to at most 4 nodes. We set the "
    "bias update speed 𝛾 to 0.001 for the first 14.3T tokens, and to 0.0 for the remaining "
    "500B tokens. For the balance loss, we set 𝛼 to 0.0001, just to avoid extreme imbalance "
    "within any single sequence. We adopt the auxiliary-loss-free strategy for load balance."
)
DEEPSEEKMOE_16B = (
    "In DeepSeekMoE 16B, each MoE layer consisting of 2 shared experts and 64 routed experts. "
    "Each expert is 0.25 times the size of a standard FFN. Each token will be routed to these "
    "2 shared experts and 6 out of 64 routed experts."
)


def pages() -> list[str]:
    """The note cut into pages at its section headings, so that pages can be checked."""
    return re.split(r"\n(?=## )", NOTE.read_text())


def paper(*texts: str) -> Paper:
    return Paper(source="n.md", kind="markdown", title="t", pages=list(texts), sha256="0")


def values(text: str) -> dict[str, float]:
    return {h.name: h.value for h in digest(paper(text)).hyperparameters}


def test_the_note_targets_deepseek_moe_with_every_hyperparameter_on_its_page() -> None:
    found = digest(paper(*pages()))
    assert found.mechanisms[0].name == "deepseek_moe"
    assert found.mechanisms[0].score > 2 * max([0.0] + [m.score for m in found.mechanisms[1:]])
    ours = [h for h in found.hyperparameters if h.name in EXPECTED]
    assert {h.name: h.value for h in ours} == EXPECTED
    hp_page = next(i for i, p in enumerate(pages(), start=1) if "## 4. Hyperparameters" in p)
    assert {h.quote.page for h in ours} == {hp_page}
    for h in ours:
        assert h.quote.text in " ".join(pages()[hp_page - 1].split())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            DEEPSEEK_V2,
            {"n_routed": 160, "n_shared": 2, "n_activated": 6, "d_expert_hidden": 1536,
             "d_model": 5120, "aux_alpha": 0.003},
        ),
        (
            DEEPSEEK_V3,
            {"n_routed": 256, "n_shared": 1, "n_activated": 8, "d_expert_hidden": 2048,
             "d_model": 7168, "aux_alpha": 0.0001, "bias_gamma": 0.001, "max_nodes": 4,
             "seq_alpha": 0.0001},
        ),
        (
            DEEPSEEKMOE_16B,
            {"n_routed": 64, "n_shared": 2, "n_activated": 6, "expert_fraction": 0.25},
        ),
    ],
    ids=["v2", "v3", "deepseekmoe_16b"],
)  # fmt: skip
def test_the_real_papers_wording(text: str, expected: dict[str, float]) -> None:
    found = digest(paper("Nothing here.", text))
    assert found.mechanisms[0].name == "deepseek_moe"
    assert {h.name: h.value for h in found.hyperparameters} == expected
    assert {h.quote.page for h in found.hyperparameters} == {2}


def test_claims_the_run_cannot_check_are_found_in_the_note() -> None:
    claims = digest(paper(NOTE.read_text())).claims
    numbers = {n for c in claims for n in c.numbers}
    assert {"4426165368", "1.5", "40%", "42.5%"} <= numbers
    for pattern, why in RECIPE.not_checkable:
        assert any(re.search(pattern, c.text) for c in claims), pattern
        assert why


def test_the_note_states_no_small_number_a_claim_could_be_mistaken_for() -> None:
    # The Writer matches a claim's paper_value against numbers in the paper's claims;
    # 1.0 (equal parameters) must not find a stray "1".
    numbers = {n for c in digest(paper(*pages())).claims for n in c.numbers}
    assert "1" not in numbers and "0" not in numbers


def stated_from(text: str) -> dict[str, tuple[float, str]]:
    return {
        h.name: (h.value, f"paper p.{h.quote.page}") for h in digest(paper(text)).hyperparameters
    }


@pytest.mark.parametrize(
    ("text", "m", "shared_share"),
    [(DEEPSEEK_V2, 4, 2 / 8), (DEEPSEEK_V3, 4, 1 / 9), (DEEPSEEKMOE_16B, 4, 2 / 8)],
    ids=["v2", "v3", "deepseekmoe_16b"],
)
def test_scale_keeps_granularity_and_the_shared_share(
    text: str, m: int, shared_share: float
) -> None:
    scaled = scale(stated_from(text))
    g, n, k, shared, width = (
        int(scaled.args[k]) for k in ("granularity", "n_experts", "top_k", "n_shared", "d_expert")
    )
    assert (g, k) == (m, 2)
    assert width % g == 0
    assert shared < g * k  # a routed expert stays active
    fine, active = g * n, g * k
    assert fine <= 32  # the CPU budget
    rows = {r.name: r for r in scaled.rows}
    assert rows["shared_share"].paper == pytest.approx(shared_share)
    assert rows["shared_share"].ours == shared / active
    assert abs(rows["shared_share"].ours - shared_share) <= 1 / (2 * active) + 1e-9
    assert rows["active_share"].ours == active / fine
    assert "not kept" in rows["active_share"].description  # and says so
    assert all(r.source for r in scaled.rows)
    assert scaled.carries_over and scaled.does_not_carry_over


def test_scale_rows_name_their_sources_and_defaults() -> None:
    scaled = scale(stated_from(DEEPSEEK_V3))
    rows = {r.name: r for r in scaled.rows}
    assert rows["n_shared"].source == "paper p.1" and rows["n_shared"].paper == 1
    assert rows["n_experts"].paper == 257 and "capped" in rows["n_experts"].description
    assert rows["granularity"].source.startswith("not stated")
    assert rows["bias_gamma"].ours == scaled.args["bias_gamma"] == 0.001
    # V3's alpha 0.0001 does nothing in 100 steps: replaced, and the row says why.
    assert rows["aux_alpha"].paper == 0.0001 and scaled.args["aux_alpha"] == 0.01
    assert "outside" in rows["aux_alpha"].description
    assert "nearest" in rows["shared_share"].description  # 1 of 9 is not 1 of 8
    v2 = {r.name: r for r in scale(stated_from(DEEPSEEK_V2)).rows}
    assert "(kept)" in v2["shared_share"].description  # 2 of 8 is
    assert scale({}).args == scale(stated_from(DEEPSEEK_V2)).args  # defaults are V2's


def test_a_coarse_or_very_fine_granularity_is_bounded() -> None:
    fine = scale({"granularity": (16.0, "paper p.3")})
    assert fine.args["granularity"] == 8
    row = next(r for r in fine.rows if r.name == "granularity")
    assert row.paper == 16 and "at most 8" in row.description
    coarse = scale({"expert_fraction": (1.0, "paper p.2"), "n_shared": (0.0, "paper p.2")})
    assert coarse.args["granularity"] == 1 and coarse.args["n_shared"] == 0


def test_the_scaled_command_runs(tmp_path: Path) -> None:
    recipe = CATALOG["deepseek_moe"]
    assert recipe.script == "deepseek_moe.py" and recipe.scale is not None
    found = digest(paper(*pages()))
    stated = {h.name: (h.value, f"paper p.{h.quote.page}") for h in found.hyperparameters}
    args = recipe.scale(stated).args
    argv = recipe_argv(recipe.script, args)
    assert argv[:2] == ["python", "deepseek_moe.py"] and argv[-2:] == ["--out", "out"]
    argv = [sys.executable, str(ROOT / "recipes" / argv[1]), *argv[2:-1], str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["recipe"] == "deepseek_moe"
    assert metrics["config"]["n_shared"] == args["n_shared"] == 2
    assert metrics["config"]["aux_alpha"] == [0.003]
    table = {key for key, _ in recipe.table}
    for v in metrics["variants"].values():
        assert table <= set(v)
    verdicts = {c["id"]: c["verdict"] for c in metrics["claims"]}
    assert verdicts["activated_params_equal"] == verdicts["loads_sum_exact"] == "reproduced"
