"""What the MLA recipe's profile reports, checked against itself in-process: the medians
are those of the samples it reports, the three MLA forms agree, the latent is
RMS-normalised before it is cached (DeepSeek-V2, p.12), the baseline form caches
decompressed per-head keys and values, the profiler names operators and writes a trace.
No assertion is about how fast anything is."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from recipes import mla


@pytest.fixture(scope="module")
def metrics() -> dict:
    cfg = mla.Config(
        n_heads=8,
        d_head=8,
        d_c=32,
        d_rope=4,
        n_layers=2,
        gqa_groups=2,
        prompt_len=16,
        steps=10,
        warmup=2,
        repeats=2,
        seq_lens=(16, 32),
    )
    return mla.run(cfg)


def test_medians_come_from_the_repeats_it_reports(metrics: dict) -> None:
    for name, v in metrics["variants"].items():
        samples = v["decode_ms_samples"]
        assert len(samples) == 2 * (10 - 2), name  # repeats x timed steps, warm-up left out
        assert v["decode_ms_median"] == statistics.median(samples)
        q = statistics.quantiles(samples, n=4)
        assert v["decode_ms_iqr"] == pytest.approx(q[2] - q[0])
    for row in metrics["grid"]:
        assert row["decode_ms_median"] == statistics.median(row["decode_ms_samples"])


def test_the_three_mla_forms_agree_and_are_labelled(metrics: dict) -> None:
    mla_v = metrics["variants"]["mla"]
    assert set(mla_v["forms"]) == {"absorbed", "cached_kv", "recompute"}
    assert metrics["absorbed_max_abs_diff"] < 1e-4 and metrics["cached_kv_max_abs_diff"] < 1e-4
    # the paper's baseline caches per-head K and V (as MHA does) beside the latent
    mha_bytes = metrics["variants"]["mha"]["cache_bytes_per_token"]
    assert mla_v["cached_kv_cache_bytes_per_token"] == mha_bytes + mla_v["cache_bytes_per_token"]
    assert mla_v["recompute_cache_bytes_per_token"] == mla_v["cache_bytes_per_token"]


def test_the_cached_latent_is_rms_normalised() -> None:
    cfg = mla.Config(n_heads=4, d_head=8, d_c=32, d_rope=4, n_layers=1, gqa_groups=1)
    torch.manual_seed(0)
    model = mla.Stack(cfg, "mla").eval()
    with torch.inference_mode():
        x = torch.randn(1, 12, cfg.n_heads * cfg.d_head) * 7.0
        _, caches, _ = mla.decode(model, x[:, :8], x[:, 8:], sync=False)
    c = caches[0]["c_kv"]  # (B, S, d_c), weight of the norm is 1 at init
    rms = c.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)


def test_step_work_explains_the_arithmetic(metrics: dict) -> None:
    v = metrics["variants"]
    ratio = v["mla"]["attn_flops_per_step"] / v["mha"]["attn_flops_per_step"]
    assert ratio == pytest.approx(
        (2 * 32 + 4) / (2 * 8)
    )  # scores over d_c + d_h^R, values over d_c
    assert v["mla"]["cache_read_bytes_per_step"] < v["mha"]["cache_read_bytes_per_step"]


def test_profiler_names_operators_and_main_writes_the_trace(tmp_path: Path, metrics: dict) -> None:
    ops = metrics["profile"]["top_ops"]
    assert ops and all(op["name"] and op["calls"] > 0 for op in ops)
    assert 0 < sum(op["share"] for op in ops) <= 1 + 1e-9
    assert metrics["mem"]["rss_peak_mb"] > 0
    out = tmp_path / "out"
    mla.main(
        [
            "--n-heads",
            "4",
            "--d-head",
            "8",
            "--steps",
            "6",
            "--warmup",
            "2",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    written = json.loads((out / "metrics.json").read_text())
    trace = out / written["profile"]["trace"]
    assert "_trace_path" not in written["profile"]
    assert "traceEvents" in json.loads(trace.read_text())
