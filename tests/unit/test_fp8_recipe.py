"""Invariants of recipes/fp8_blockwise.py, not snapshots.

FP8 values must survive a round trip exactly, scales must have the shapes their groups
imply, an outlier must only touch its own tile, the chunked GEMM must equal dequantize-
then-multiply, and fine-grained scaling must win exactly where the arithmetic says it
should. The CLI ends in one JSON line, or fails in one stderr line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes import fp8_blockwise as fp8

SCRIPT = Path(fp8.__file__).resolve()
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def small(**overrides: object) -> fp8.Config:
    base: dict[str, object] = dict(tokens=64, in_features=256, out_features=256)
    return fp8.Config(**{**base, **overrides})  # type: ignore[arg-type]


def representable(fmt: torch.dtype) -> torch.Tensor:
    """Every finite value of an FP8 format, as float32 (1, n)."""
    values = torch.arange(256, dtype=torch.uint8).view(fmt).float()
    return values[values.isfinite()][None, :]


@pytest.mark.parametrize("fmt", [E4M3, E5M2], ids=["e4m3", "e5m2"])
def test_representable_values_round_trip_exactly_with_scale_1(fmt: torch.dtype) -> None:
    x = representable(fmt)  # holds +-max, so the per-tensor scale is exactly 1
    rows, cols = x.shape
    q, scale = fp8.quantize(x, rows, cols, fmt)
    assert q.dtype == fmt and scale.shape == (1, 1) and scale.item() == 1.0
    assert torch.equal(fp8.dequantize(q, scale), x)
    # A power-of-two multiple scales by a power of two: still exact.
    q, scale = fp8.quantize(x * 2.0**-20, rows, cols, fmt)
    assert torch.equal(fp8.dequantize(q, scale), x * 2.0**-20)


def test_values_between_grid_points_are_rounded_not_kept() -> None:
    x = torch.tensor([[448.0, 1.0 + 2**-5]])  # 1 + 2^-5 lies between 1 and 1 + 2^-3
    q, scale = fp8.quantize(x, 1, 2, E4M3)
    assert fp8.dequantize(q, scale)[0, 1].item() == 1.0


def test_scales_have_one_entry_per_group() -> None:
    x, w = torch.randn(64, 512), torch.randn(256, 512)
    assert fp8.quantize(x, 1, 128, E4M3)[1].shape == (64, 4)  # one per 128 elements of a row
    assert fp8.quantize(w, 128, 128, E4M3)[1].shape == (2, 4)  # 128x128 blocks
    assert fp8.quantize(x, 64, 512, E4M3)[1].shape == (1, 1)  # per tensor
    m = fp8.evaluate(*fp8.dataset(small(in_features=512), 1.0), True, small(in_features=512), E4M3)
    assert m["x_scales"] == 64 * 512 // 128 and m["w_scales"] == (256 // 128) * (512 // 128)
    assert m["x_scale_bytes_per_elem"] == 4 / 128
    assert m["w_scale_bytes_per_elem"] == 4 / (128 * 128)


def test_each_group_maps_its_largest_magnitude_to_the_format_max() -> None:
    x = torch.randn(8, 256) * torch.logspace(-3, 3, 8)[:, None]  # rows of very different size
    q, _ = fp8.quantize(x, 1, 128, E4M3)
    amax = q.float().abs().view(8, 2, 128).amax(-1)
    assert torch.equal(amax, torch.full((8, 2), 448.0))


def test_an_outlier_only_touches_its_own_tile() -> None:
    x = torch.randn(16, 512)
    y = x.clone()
    y[3, 200] *= 1e4  # row 3, tile 1 (elements 128..255)
    before = fp8.dequantize(*fp8.quantize(x, 1, 128, E4M3))
    after = fp8.dequantize(*fp8.quantize(y, 1, 128, E4M3))
    changed = (before != after).nonzero()
    assert changed.numel() > 0
    assert set(changed[:, 0].tolist()) == {3}
    assert all(128 <= c < 256 for c in changed[:, 1].tolist())
    # Per tensor, the same outlier changes elements everywhere.
    before = fp8.dequantize(*fp8.quantize(x, 16, 512, E4M3))
    after = fp8.dequantize(*fp8.quantize(y, 16, 512, E4M3))
    assert len(set((before != after).nonzero()[:, 0].tolist())) > 8


@pytest.mark.parametrize(
    "groups",
    [(1, 128, 128, 128), (1, 64, 128, 128), (32, 512, 256, 512)],
    ids=["deepseek", "narrow_tiles", "per_tensor"],
)
def test_chunked_gemm_equals_dequantize_then_matmul(groups: tuple[int, int, int, int]) -> None:
    x, w = torch.randn(32, 512), torch.randn(256, 512) / 512**0.5
    xr, xc, wr, wc = groups
    xq, sx = fp8.quantize(x, xr, xc, E4M3)
    wq, sw = fp8.quantize(w, wr, wc, E4M3)
    expected = fp8.dequantize(xq, sx) @ fp8.dequantize(wq, sw).T
    torch.testing.assert_close(fp8.gemm(xq, sx, wq, sw), expected, rtol=1e-5, atol=1e-5)


def ratio(metrics: dict, key: str) -> float:
    return metrics["fine_grained"][key] / metrics["per_tensor"][key]


def both(cfg: fp8.Config, outlier_scale: float, fmt: torch.dtype = E4M3) -> dict:
    data = fp8.dataset(cfg, outlier_scale)
    return {fp8.scheme(f): fp8.evaluate(*data, f, cfg, fmt) for f in (False, True)}


def test_fine_grained_error_is_below_per_tensor_on_outlier_data() -> None:
    cfg = small()
    moderate, huge = both(cfg, 100.0), both(cfg, 1e5)
    assert ratio(moderate, "x_rel_err") < 0.95
    assert ratio(moderate, "y_rel_err") < 1.0
    # At 1e5 the bulk falls below E4M3's normal range per tensor: fine-grained wins big.
    assert ratio(huge, "x_bulk_rel_err") < 0.5
    assert (
        huge["per_tensor"]["x_flushed_to_zero_frac"]
        > huge["fine_grained"]["x_flushed_to_zero_frac"]
    )


def test_without_outliers_both_scalings_are_close() -> None:
    clean = both(small(), 1.0)
    for key in ("x_rel_err", "x_bulk_rel_err", "y_rel_err"):
        assert 0.9 < ratio(clean, key) < 1.1, key
    assert clean["fine_grained"]["x_rel_err"] < 0.04  # 3 mantissa bits: a few percent


def test_e4m3_is_finer_than_e5m2_but_has_less_range() -> None:
    cfg = small()
    assert both(cfg, 1.0, E4M3)["fine_grained"]["x_rel_err"] < (
        0.7 * both(cfg, 1.0, E5M2)["fine_grained"]["x_rel_err"]
    )
    huge_e4, huge_e5 = both(cfg, 1e5, E4M3), both(cfg, 1e5, E5M2)
    assert huge_e5["per_tensor"]["x_bulk_rel_err"] < huge_e4["per_tensor"]["x_bulk_rel_err"]


def test_direction_verdicts() -> None:
    assert fp8.direction("fp8_fine_grained_lower_error", 0.5)["verdict"] == "reproduced"
    assert fp8.direction("fp8_fine_grained_lower_error", 0.99)["verdict"] == "partial"
    assert fp8.direction("fp8_fine_grained_lower_error", 1.2)["verdict"] == "not reproduced"


def test_run_reports_variants_grid_and_claims() -> None:
    m = fp8.run(small())
    json.dumps(m, allow_nan=False)  # every number finite: strict JSON
    assert set(m["variants"]) == {
        "per_tensor",
        "fine_grained",
        "per_tensor_clean",
        "fine_grained_clean",
    }
    assert len(m["grid"]) == len(fp8.SWEEP) * 4
    by_id = {c["id"]: c for c in m["claims"]}
    assert by_id["fp8_tile_scale_overhead"]["verdict"] == "reproduced"
    assert by_id["fp8_e4m3_beats_e5m2_fine_grained"]["measured_value"] < 1
    for c in m["claims"]:
        path = c["metric"]
        if " " not in path:  # a plain dotted path: it must lead to the measured value
            node = m
            for part in path.split("."):
                node = node[part]
            assert node == c["measured_value"]


def test_cli_default_prints_one_json_line_with_the_contract_keys(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"recipe", "config", "env", "claims", "variants", "curves", "wall_s"} <= set(metrics)
    assert metrics["recipe"] == "fp8_blockwise"
    assert metrics["config"] == {**vars(fp8.Config())}
    assert metrics["env"]["threads"] == 1 and metrics["env"]["device"] == "cpu"
    for c in metrics["claims"]:
        assert {"id", "claim", "metric", "paper_value", "measured_value", "unit"} <= set(c)
        assert c["verdict"] in ("reproduced", "partial", "not reproduced", "not checkable")
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--tile", "100"], "--tile"),  # does not divide 1024
        (["--block", "96"], "--block"),
        (["--in-features", "1000"], "--tile"),
        (["--dtype", "e3m4"], "--dtype"),
        (["--outlier-scale", "0"], "--outlier-scale"),
        (["--outlier-scale", "-5"], "--outlier-scale"),
        pytest.param(["--device", "cuda"], "--device", marks=NO_GPU),
    ],
)
def test_bad_config_exits_2_with_one_stderr_line(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        fp8.main(args)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], err


def test_bad_config_from_the_shell_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--block", "100"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--block" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_error_runs_before_compute() -> None:
    with pytest.raises(ValueError, match="--outlier-scale"):
        fp8.run(small(outlier_scale=0.0))
