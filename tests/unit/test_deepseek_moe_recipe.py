"""Invariants of recipes/deepseek_moe.py, not snapshots.

Loads must sum to tokens x k in every run; the three architectures must activate (and hold)
the same expert parameters for any config; the auxiliary-loss-free bias must move the
selection and never the gate weights; on the default seed it must lower MaxVio against no
balancing; the CLI ends in one JSON line, or fails in one stderr line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from recipes import deepseek_moe as moe

SCRIPT = Path(moe.__file__).resolve()
CONTRACT_KEYS = {"recipe", "config", "env", "claims", "variants", "curves", "wall_s"}
CLAIM_KEYS = {"id", "claim", "metric", "paper_value", "measured_value", "unit", "tolerance"}
VERDICTS = {"reproduced", "partial", "not reproduced", "not checkable"}


def small(**overrides: object) -> moe.Config:
    """A sub-second config: every architecture and balancing mode, few steps, few tokens."""
    base: dict[str, object] = dict(steps=12, batch=4, seq_len=8, val_seqs=8, log_every=4)
    return moe.Config(**{**base, **overrides})  # type: ignore[arg-type]


# Not the defaults: other counts, granularity 2, two shared experts, batch-wise aux loss.
OTHER = small(
    n_experts=6, top_k=3, granularity=2, n_shared=2, d_model=8, d_expert=12, aux_scope="batch"
)


@pytest.fixture(scope="module")
def small_run() -> dict:
    return moe.run(small())


def claim(metrics: dict, claim_id: str) -> dict:
    (found,) = [c for c in metrics["claims"] if c["id"] == claim_id]
    return found


@pytest.mark.parametrize("cfg", [small(), OTHER], ids=["default_layout", "other"])
def test_loads_sum_to_tokens_times_k_in_every_run(cfg: moe.Config) -> None:
    metrics = moe.run(cfg)
    assert len(metrics["variants"]) == len(moe.ARCHS) * len(moe.BALANCE)
    for name, v in metrics["variants"].items():
        lay = moe.layout(cfg, name.split("/")[0])
        assert (v["n_routed"], v["k_routed"], v["n_shared"]) == lay[:3]
        assert len(v["loads"]) == lay.n_routed
        assert sum(v["loads"]) == v["load_sum"] == cfg.val_seqs * cfg.seq_len * lay.k_routed
    assert claim(metrics, "loads_sum_exact")["verdict"] == "reproduced"


@pytest.mark.parametrize("cfg", [moe.Config(), OTHER], ids=["default", "other"])
def test_activated_and_total_expert_params_equal_across_architectures(cfg: moe.Config) -> None:
    counts = {}
    for arch in moe.ARCHS:
        with torch.device("meta"):  # counted from the modules' tensors, none allocated
            counts[arch] = moe.MoE(cfg.d_model, moe.layout(cfg, arch), cfg.score).expert_params()
    swiglu = 3 * cfg.d_model * cfg.d_expert  # one conventional expert
    assert set(counts.values()) == {(cfg.top_k * swiglu, cfg.n_experts * swiglu)}


def test_params_claims_reproduced(small_run: dict) -> None:
    for cid in ("activated_params_equal", "total_params_equal"):
        c = claim(small_run, cid)
        assert c["measured_value"] == 1.0 and c["verdict"] == "reproduced"
    v = small_run["variants"]
    assert v["topk/none"]["router_params"] < v["fine_grained/none"]["router_params"]


def test_bias_moves_selection_but_not_gate_weights() -> None:
    torch.manual_seed(0)
    cfg = moe.Config()
    layer = moe.MoE(cfg.d_model, moe.layout(cfg, "fine_grained_shared"), "sigmoid")
    x = torch.randn(64, cfg.d_model)
    with torch.no_grad():
        before = layer.route(x)
        target = int(moe.loads_of(before.idx, len(layer.bias)).argmin())  # least chosen
        layer.bias[target] = 10.0  # larger than any affinity gap: every token now picks it
        after = layer.route(x)
    assert (after.idx == target).any(dim=1).all()
    assert not torch.equal(after.idx, before.idx)
    torch.testing.assert_close(after.scores, before.scores)  # affinities untouched
    raw = after.scores.gather(1, after.idx)  # the gates come from the unbiased affinities
    torch.testing.assert_close(after.gates, raw / raw.sum(dim=1, keepdim=True))
    with torch.no_grad():  # a bias that changes no selection changes nothing at all
        layer.bias.fill_(3.0)
        shifted = layer(x)
        layer.bias.zero_()
        plain = layer(x)
    torch.testing.assert_close(shifted[0], plain[0])
    torch.testing.assert_close(shifted[1].gates, plain[1].gates)


def test_bias_update_lowers_busy_experts_and_raises_idle_ones() -> None:
    bias = torch.zeros(4)
    moe.update_bias(bias, torch.tensor([10, 2, 4, 0]), 0.5)  # mean load 4
    assert bias.tolist() == [-0.5, 0.5, 0.0, 0.5]


def test_bias_gets_no_gradient() -> None:
    cfg = small()
    model = moe.TinyLM(cfg, moe.layout(cfg, "topk"))
    assert "moe.bias" not in dict(model.named_parameters())
    assert "moe.bias" in dict(model.named_buffers())


def test_aux_loss_is_one_when_balanced_and_higher_when_not() -> None:
    T, E, k = 8, 4, 2
    scores = torch.full((T, E), 0.5)
    even = torch.tensor([[0, 1], [2, 3]] * (T // 2))  # every expert chosen T*k/E times
    skewed = torch.tensor([[0, 1]] * T)
    skew_scores = scores.clone()
    skew_scores[:, :2] = 0.9
    r_even = moe.Routing(scores, even, torch.full((T, k), 0.5))
    r_skew = moe.Routing(skew_scores, skewed, torch.full((T, k), 0.5))
    assert moe.aux_loss(r_even, group=T).item() == pytest.approx(1.0)
    assert moe.aux_loss(r_skew, group=T).item() == pytest.approx(2 * 2 * 0.9 / 2.8)


def test_max_vio_is_zero_for_even_loads() -> None:
    assert moe.max_vio(torch.tensor([5, 5, 5])) == 0.0
    assert moe.max_vio(torch.tensor([9, 3, 3, 1])) == pytest.approx(9 / 4 - 1)


def test_aux_loss_free_lowers_max_vio_on_the_default_seed() -> None:
    cfg = moe.Config(arch=("fine_grained_shared",), balance=("none", "bias"))
    metrics = moe.run(cfg)
    v = metrics["variants"]
    none, bias = v["fine_grained_shared/none"], v["fine_grained_shared/bias_1e-03"]
    assert bias["max_vio"] < 0.9 * none["max_vio"]
    c = claim(metrics, "bias_lowers_maxvio")
    assert (c["paper_value"], c["measured_value"]) == (none["max_vio"], bias["max_vio"])
    assert c["verdict"] == "reproduced"


def test_claims_follow_the_measurements(small_run: dict) -> None:
    for c in small_run["claims"]:
        assert set(c) >= CLAIM_KEYS and c["verdict"] in VERDICTS
    v = small_run["variants"]
    a = "fine_grained_shared"
    c = claim(small_run, "bias_vs_aux_loss")
    bias, aux = v[f"{a}/bias_1e-03"], v[f"{a}/aux_loss_1e-02"]
    held = (bias["val_loss"] <= aux["val_loss"]) + (bias["max_vio"] <= aux["max_vio"])
    assert c["verdict"] == ["not reproduced", "partial", "reproduced"][held]
    c = claim(small_run, "fine_grained_shared_beats_topk")
    runs = ("none", "aux_loss_1e-02", "bias_1e-03")
    wins = sum(v[f"{a}/{n}"]["val_loss"] < v[f"topk/{n}"]["val_loss"] for n in runs)
    assert c["verdict"] == ["not reproduced", "partial", "partial", "reproduced"][wins]


def test_sweep_adds_rates_and_the_tradeoff_claim() -> None:
    cfg, _ = moe.parse_args(["--sweep", "--bias-gamma", "0.002"])
    assert cfg.aux_alpha == moe.ALPHA_SWEEP and cfg.bias_gamma == (0.002,)  # explicit wins
    metrics = moe.run(small(arch=("fine_grained_shared",), aux_alpha=moe.ALPHA_SWEEP))
    aux = [metrics["variants"][f"fine_grained_shared/aux_loss_{a:.0e}"] for a in moe.ALPHA_SWEEP]
    vio_down = aux[0]["max_vio"] > aux[1]["max_vio"] > aux[2]["max_vio"]
    loss_up = aux[0]["val_loss"] < aux[1]["val_loss"] < aux[2]["val_loss"]
    c = claim(metrics, "aux_alpha_tradeoff")
    assert c["verdict"] == ["not reproduced", "partial", "reproduced"][vio_down + loss_up]
    assert (c["paper_value"], c["measured_value"]) == (aux[0]["val_loss"], aux[2]["val_loss"])


def test_cli_default_prints_one_json_line_with_the_contract(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(metrics) >= CONTRACT_KEYS and metrics["recipe"] == "deepseek_moe"
    assert set(metrics["config"]) == {f.name for f in fields(moe.Config)}
    assert set(metrics["env"]) == {"torch", "device", "gpu_name", "threads"}
    assert len(metrics["variants"]) == 9
    for v in metrics["variants"].values():
        assert {"val_loss", "max_vio", "load_entropy", "dropped_frac"} <= set(v)
    for curve in metrics["curves"].values():
        assert {"title", "xlabel", "ylabel", "series"} <= set(curve) and curve["series"]
    ids = {c["id"] for c in metrics["claims"]}
    assert {"activated_params_equal", "loads_sum_exact", "bias_lowers_maxvio"} <= ids
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--n-experts", "0"], "--n-experts"),
        (["--top-k", "9"], "--top-k"),  # > 8 experts
        (["--granularity", "3"], "--granularity"),  # does not divide d_expert 32
        (["--bias-gamma", "-0.01"], "--bias-gamma"),
        (["--aux-alpha", "0.01,-1"], "--aux-alpha"),
        (["--n-shared", "8"], "--n-shared"),  # = m*K: no routed expert left active
        (["--arch", "switch"], "--arch"),
        (["--capacity-factor", "0"], "--capacity-factor"),
    ],
)
def test_bad_config_exits_2_with_one_line_before_compute(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setattr(moe, "run", lambda cfg: pytest.fail("computed despite a bad config"))
    with pytest.raises(SystemExit) as exit_:
        moe.main(args)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], err


def test_bad_config_from_the_shell_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--granularity", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--granularity" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_refuses_a_bad_config() -> None:
    with pytest.raises(ValueError, match="--top-k"):
        moe.run(small(top_k=20))
