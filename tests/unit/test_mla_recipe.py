"""Invariants of recipes/mla.py, not snapshots.

Cache sizes read from the tensors the layers hold must match the paper's arithmetic for
any config; the absorbed MLA form must equal the naive one; decoding token by token must
equal a one-shot prefill; the CLI ends in one JSON line, or fails in one stderr line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes import mla

SCRIPT = Path(mla.__file__).resolve()


def small(**overrides: object) -> mla.Config:
    """A few-millisecond config at the paper's ratios: d_c = 4 d_h, d_rope = d_h / 2."""
    base: dict[str, object] = dict(
        n_heads=8, d_head=8, d_c=32, d_rope=4, n_layers=2, gqa_groups=2,
        prompt_len=8, steps=4, warmup=1, repeats=1,
    )  # fmt: skip
    return mla.Config(**{**base, **overrides})  # type: ignore[arg-type]


# Not the paper's ratios, three layers, batch 2: the counts must follow the config.
OTHER = small(n_heads=4, d_head=16, d_c=24, d_rope=6, n_layers=3, gqa_groups=4, batch=2)


@pytest.fixture(scope="module")
def paper_run() -> dict:
    return mla.run(small())


def claim(metrics: dict, claim_id: str) -> dict:
    (found,) = [c for c in metrics["claims"] if c["id"] == claim_id]
    return found


@pytest.mark.parametrize("cfg", [small(), OTHER], ids=["paper_ratios", "other"])
def test_measured_cache_matches_each_variants_formula(cfg: mla.Config) -> None:
    v = mla.run(cfg)["variants"]
    L, dh = cfg.n_layers, cfg.d_head
    assert v["mla"]["cache_elems_per_token"] == (cfg.d_c + cfg.d_rope) * L
    assert v["mla"]["cache_elems_per_token_by_layer"] == [cfg.d_c + cfg.d_rope] * L
    assert v["mha"]["cache_elems_per_token"] == 2 * cfg.n_heads * dh * L
    assert v["gqa"]["cache_elems_per_token"] == 2 * cfg.gqa_groups * dh * L
    assert v["mqa"]["cache_elems_per_token"] == 2 * dh * L
    assert v["mla"]["cache_bytes_per_token"] == 4 * v["mla"]["cache_elems_per_token"]  # fp32


def test_bytes_follow_the_cache_dtype() -> None:
    v = mla.run(small(dtype="bfloat16"))["variants"]
    assert v["mla"]["cache_bytes_per_token"] == 2 * v["mla"]["cache_elems_per_token"]


def test_gqa_equivalent_groups_is_2_25_at_the_papers_ratios(paper_run: dict) -> None:
    c = claim(paper_run, "mla_gqa_equivalent_groups")
    assert c["paper_value"] == 2.25
    assert c["measured_value"] == 2.25
    assert c["verdict"] == "reproduced"


def test_gqa_equivalent_groups_off_the_papers_ratios_says_so() -> None:
    c = claim(mla.run(OTHER), "mla_gqa_equivalent_groups")
    assert c["paper_value"] == pytest.approx((24 + 6) / (2 * 16))
    assert c["measured_value"] == pytest.approx(c["paper_value"])
    assert "not the paper's setting" in c["claim"]


def test_mla_to_mha_ratio_equals_formula(paper_run: dict) -> None:
    c = claim(paper_run, "mla_vs_mha_cache_ratio")
    assert c["measured_value"] == pytest.approx((32 + 4) / (2 * 8 * 8), abs=1e-12)
    assert c["verdict"] == "reproduced"


@pytest.mark.parametrize("cfg", [small(), OTHER], ids=["paper_ratios", "other"])
def test_absorbed_form_equals_naive_form(cfg: mla.Config) -> None:
    m = mla.run(cfg)
    assert m["absorbed_max_rel_diff"] < 1e-4
    assert claim(m, "mla_absorbed_equals_naive")["verdict"] == "reproduced"


def test_absorbed_form_never_rebuilds_keys_or_values() -> None:
    # Guards the check above against comparing a form with itself: the absorbed form may
    # read W_UK and W_UV as weights but must never apply them to the cached latent.
    cfg = small()
    torch.manual_seed(0)
    model = mla.Stack(cfg, "mla")

    def forbidden(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("per-head keys or values rebuilt from the latent")

    layers = [layer for layer in model.attn() if isinstance(layer, mla.MLAttention)]
    for layer in layers:
        layer.w_uk.forward = forbidden  # type: ignore[method-assign]
        layer.w_uv.forward = forbidden  # type: ignore[method-assign]
        layer.absorbed = True
    prompt, tokens = mla.randn(cfg, 6, 0), mla.randn(cfg, 3, 1)
    with torch.inference_mode():
        mla.decode(model, prompt, tokens, sync=False)  # absorbed: fine
        for layer in layers:
            layer.absorbed = False
        with pytest.raises(RuntimeError, match="rebuilt"):
            mla.decode(model, prompt, tokens, sync=False)


@pytest.mark.parametrize("variant", mla.VARIANTS)
def test_token_by_token_equals_one_shot_prefill(variant: str, monkeypatch) -> None:
    # The KV cache, causal mask and RoPE positions must make incremental decoding exact.
    cfg = small()
    torch.manual_seed(0)
    model = mla.Stack(cfg, variant)
    prompt = mla.randn(cfg, 12, 0)
    empty = prompt[:, :0]
    with torch.inference_mode():
        one_shot = mla.decode(model, prompt, empty, sync=False)[0]
        monkeypatch.setattr(mla, "PREFILL_CHUNK", 1)
        stepped = mla.decode(model, prompt, empty, sync=False)[0]
    torch.testing.assert_close(stepped, one_shot, rtol=1e-4, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position() -> None:
    cos, sin = mla.rope_tables(8, 32, "cpu", torch.float32)
    q, k = torch.randn(8), torch.randn(8)

    def score(m: int, n: int) -> float:
        return float(mla.apply_rope(q, cos[m], sin[m]) @ mla.apply_rope(k, cos[n], sin[n]))

    assert score(5, 2) == pytest.approx(score(20, 17), rel=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)


def test_cli_prints_one_json_line_with_all_claims_reproduced(tmp_path: Path) -> None:
    args = ["--n-heads", "8", "--d-head", "8", "--prompt-len", "8", "--steps", "4"]
    args += ["--warmup", "1", "--repeats", "1", "--seq-lens", "4,8", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["recipe"] == "mla"
    assert metrics["config"]["d_c"] == 32 and metrics["config"]["d_rope"] == 4  # derived
    assert set(metrics["variants"]) == {"mha", "gqa", "mqa", "mla"}
    assert metrics["variants"]["gqa"]["groups"] == 2  # n_heads // 4
    assert {c["id"]: c["verdict"] for c in metrics["claims"]} == {
        "mla_cache_formula": "reproduced",
        "mla_gqa_equivalent_groups": "reproduced",
        "mla_vs_mha_cache_ratio": "reproduced",
        "mla_absorbed_equals_naive": "reproduced",
    }
    assert {(g["variant"], g["seq_len"]) for g in metrics["grid"]} == {
        (v, s) for v in mla.VARIANTS for s in (4, 8)
    }
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--d-c", "300"], "--d-c"),  # 300 > n_heads * d_head = 256
        (["--d-rope", "3"], "--d-rope"),
        pytest.param(["--device", "cuda"], "--device", marks=NO_GPU),
        (["--steps", "0"], "--steps"),
    ],
)
def test_bad_config_exits_2_with_one_stderr_line(args: list[str], option: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_error_runs_before_compute() -> None:
    with pytest.raises(ValueError, match="--gqa-groups"):
        mla.run(small(gqa_groups=3))


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--steps", "x"], "mla.py: error: argument --steps: invalid int value"),  # argparse's
        (["--seq-lens", "4,a"], "mla.py: error: argument --seq-lens: not a comma list"),
        (["--out", "FILE"], "mla.py: error: --out: "),  # an existing file, not a directory
    ],
)
def test_harness_errors_are_one_line_before_compute(
    args: list[str],
    start: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mla, "run", lambda cfg: pytest.fail("computed despite a bad command"))
    (tmp_path / "FILE").write_text("")
    with pytest.raises(SystemExit) as exit_:
        mla.main([str(tmp_path / a) if a == "FILE" else a for a in args])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(start) and err.count("\n") == 1, err


def test_auto_device_and_preset_under_explicit_flags() -> None:
    cfg, out = mla.parse_args(["--preset", "cpu", "--seq-lens", "8", "--device", "auto"])
    assert cfg.seq_lens == (8,) and out is None  # the flag over the preset's 64,128,256
    assert cfg.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert mla.parse_args(["--preset", "cpu"])[0].seq_lens == (64, 128, 256)
