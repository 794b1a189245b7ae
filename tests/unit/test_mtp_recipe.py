"""Invariants of recipes/mtp.py, not snapshots.

Depth D must add exactly the targets and parameters its definition says, each depth must
see only the tokens it is allowed to, the MTP loss at lambda 0 must leave the main model's
gradients untouched, and the CLI ends in one JSON line or fails in one stderr line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipes import mtp

SCRIPT = Path(mtp.__file__).resolve()
VOCAB = 9


def small(**overrides: object) -> mtp.Config:
    """A config that trains in well under a second."""
    base: dict[str, object] = dict(
        d_model=32, n_layers=1, n_heads=2, seq_len=16, batch=4, steps=12, warmup=2,
        eval_every=6, eval_batches=2, n_letters=8, n_words=16, branch=2,
        corpus_chars=4000, accept_prompts=4,
    )  # fmt: skip
    return mtp.Config(**{**base, **overrides})  # type: ignore[arg-type]


def model(cfg: mtp.Config, depth: int, seed: int = 0) -> mtp.LM:
    torch.manual_seed(seed)
    return mtp.LM(cfg, VOCAB, depth)


def tokens(cfg: mtp.Config, batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, cfg.seq_len + 1), generator=g)  # (B, T+1)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_depth_d_adds_d_targets_per_position_minus_the_tail(depth: int) -> None:
    cfg = small()
    T, B = cfg.seq_len, 3
    _, extra, n = mtp.losses(model(cfg, depth), tokens(cfg, B))
    assert len(extra) == depth
    assert n == B * ((depth + 1) * T - depth * (depth + 1) // 2)  # depth k has T - k targets
    assert n / (B * T) == pytest.approx(depth + 1 - depth * (depth + 1) / (2 * T))
    _, _, n0 = mtp.losses(model(cfg, 0), tokens(cfg, B))
    assert n0 == B * T  # next-token only: one target per position


def test_depth_k_predicts_the_token_k_plus_1_ahead() -> None:
    cfg = small()
    seq = torch.arange(cfg.seq_len + 1)[None, :]  # token value = its position
    for k, labels in enumerate(mtp.targets(seq, 3)):
        positions = torch.arange(labels.shape[1])
        assert torch.equal(labels[0], positions + k + 1)


def test_logits_per_depth_are_one_position_shorter() -> None:
    cfg = small()
    x = tokens(cfg)[:, :-1]  # (B, T)
    shapes = [tuple(lg.shape) for lg in model(cfg, 3)(x)]
    assert shapes == [(3, cfg.seq_len - k, VOCAB) for k in range(4)]


def test_no_depth_sees_the_token_it_predicts() -> None:
    # Depth k at position i may read tokens up to i + k; its target is t_{i+k+1}. Changing
    # token j must leave every depth's logits at positions i < j - k unchanged.
    cfg = small()
    m = model(cfg, 2).eval()
    x = tokens(cfg)[:, :-1]
    j = 10
    y = x.clone()
    y[:, j] = (y[:, j] + 1) % VOCAB
    with torch.no_grad():
        before, after = m(x), m(y)
    for k, (a, b) in enumerate(zip(before, after, strict=True)):
        torch.testing.assert_close(a[:, : j - k], b[:, : j - k])
        assert not torch.allclose(a[:, j - k], b[:, j - k])  # the first that may see it does


def test_lambda_zero_leaves_the_main_gradients_identical() -> None:
    cfg = small()
    assert mtp.lambda0_grad_diff(cfg, VOCAB, tokens(cfg)) == 0.0
    # And with lambda > 0 the MTP loss does reach the main model (the check can fail).
    grads = []
    for depth in (0, 1):
        m = model(cfg, depth)
        main, extra, _ = mtp.losses(m, tokens(cfg))
        mtp.objective(main, extra, 0.3).backward()
        grad = dict(m.named_parameters())["blocks.0.qkv.weight"].grad
        assert grad is not None
        grads.append(grad)
    assert not torch.allclose(grads[0], grads[1])


def test_main_model_is_the_same_with_or_without_modules() -> None:
    # Built first under the same seed: equal initial main weights, and the modules change
    # nothing of the main model's output (they can be dropped at inference).
    cfg = small()
    x = tokens(cfg)[:, :-1]
    with torch.no_grad():
        plain, with_mtp = model(cfg, 0)(x)[0], model(cfg, 2)(x)[0]
    assert torch.equal(plain, with_mtp)


@pytest.mark.parametrize("d", [16, 32, 48])
def test_module_parameters_match_the_definition(d: int) -> None:
    cfg = small(d_model=d, n_heads=4)
    assert mtp.count_params(mtp.MTPModule(cfg)) == mtp.module_params_formula(d)
    added = mtp.count_params(model(cfg, 2)) - mtp.count_params(model(cfg, 0))
    assert added == 2 * mtp.module_params_formula(d)


def test_embedding_and_head_are_shared_not_copied() -> None:
    cfg = small()
    m = model(cfg, 2)
    for module in m.mtp:
        assert all(VOCAB not in p.shape for p in module.parameters())
    _, extra, _ = mtp.losses(m, tokens(cfg))
    torch.stack(extra).sum().backward()  # the MTP losses alone
    assert m.head.weight.grad is not None and m.head.weight.grad.abs().sum() > 0
    assert m.emb.weight.grad is not None and m.emb.weight.grad.abs().sum() > 0


def test_corpus_is_seeded_and_speaks_one_language() -> None:
    cfg = small()
    a, b = mtp.make_corpus(cfg, 1, 3000), mtp.make_corpus(cfg, 1, 3000)
    assert torch.equal(a, b) and a.shape == (3000,)
    assert int(a.min()) == 0 and int(a.max()) <= cfg.n_letters  # 0 is the space

    def words(stream: torch.Tensor) -> set[str]:
        text = "".join(chr(65 + int(t)) for t in stream)  # the space is "A"
        return set(text.split("A")[:-1])  # the last word may be cut short

    train, val = words(a), words(mtp.make_corpus(cfg, 2, 3000))
    assert len(train) <= cfg.n_words  # a fixed lexicon
    assert len(train & val) >= len(train) // 2  # validation speaks the same language


def test_hand_written_adamw_matches_torch_optim() -> None:
    cfg = small()
    ours, ref = model(cfg, 1), model(cfg, 1)
    opt, ref_opt = (
        mtp.AdamW(list(ours.parameters())),
        torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.0),
    )
    for seed in range(3):
        for m in (ours, ref):
            main, extra, _ = mtp.losses(m, tokens(cfg, seed=seed))
            mtp.objective(main, extra, 0.3).backward()
        opt.step(3e-3)
        ref_opt.step()
        ref_opt.zero_grad()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in ours.parameters())  # step() clears the gradients


def test_lambda_switches_at_the_given_fraction() -> None:
    cfg = small(steps=100, lambda_switch=0.68)
    assert [mtp.lam_at(cfg, s) for s in (0, 67, 68, 99)] == [0.3, 0.3, 0.1, 0.1]


def test_run_reports_what_it_measured() -> None:
    m = mtp.run(small())
    json.dumps(m, allow_nan=False)  # every number finite: strict JSON
    v = m["variants"]
    cfg = small()
    assert set(v) == {"next_token", "mtp"}
    assert v["mtp"]["params_added"] == mtp.module_params_formula(cfg.d_model)
    assert v["mtp"]["step_time_ratio"] > 1  # one more block per step
    assert 0 <= v["mtp"]["acceptance_rate"] <= 1
    assert v["mtp"]["acceptance_drafts"] == cfg.accept_prompts * (
        cfg.seq_len - cfg.seq_len // 2 - 1
    )
    series = m["curves"]["val_loss"]["series"]
    assert all(len(s) == cfg.steps // cfg.eval_every + 1 for s in series.values())
    first = [s[0][1] for s in series.values()][:2]
    assert first[0] == first[1]  # same initial main weights, same validation data
    assert m["lambda0_main_grad_max_abs_diff"] == 0.0
    by_id = {c["id"]: c for c in m["claims"]}
    assert by_id["mtp_targets_per_position"]["verdict"] == "reproduced"
    assert by_id["mtp_module_params"]["verdict"] == "reproduced"


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
    assert metrics["recipe"] == "mtp"
    assert metrics["config"] == {**vars(mtp.Config())}
    assert metrics["env"]["threads"] == 1 and metrics["env"]["device"] == "cpu"
    for c in metrics["claims"]:
        assert {"id", "claim", "metric", "paper_value", "measured_value", "unit"} <= set(c)
        assert c["verdict"] in ("reproduced", "partial", "not reproduced", "not checkable")
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--mtp-depth", "0"], "--mtp-depth"),
        (["--mtp-depth", "-2"], "--mtp-depth"),
        (["--mtp-lambda", "-0.1"], "--mtp-lambda"),
        (["--lambda-switch", "1.5"], "--lambda-switch"),
        (["--n-heads", "5"], "--n-heads"),
        (["--dtype", "float8"], "--dtype"),
        pytest.param(["--device", "cuda"], "--device", marks=NO_GPU),
    ],
)
def test_bad_config_exits_2_with_one_stderr_line(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        mtp.main(args)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], err


def test_bad_config_from_the_shell_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--mtp-depth", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--mtp-depth" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_error_runs_before_compute() -> None:
    with pytest.raises(ValueError, match="--mtp-lambda"):
        mtp.run(small(mtp_lambda=-1.0))
