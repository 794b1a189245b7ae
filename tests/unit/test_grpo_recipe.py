"""Invariants of recipes/grpo.py, not snapshots.

Group-relative advantages are standardised per group; GRPO trains no critic, so its
parameters and optimizer state are PPO's minus exactly the critic's; the KL estimator is
non-negative, zero at the reference and unbiased; the policy cannot see answer tokens it has
not written; the hand-written Adam is torch's; the CLI ends in one JSON line with every
contract key, or fails in one stderr line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from recipes import grpo

SCRIPT = Path(grpo.__file__).resolve()


def small(**overrides: object) -> grpo.Config:
    """A run of a few hundred milliseconds: a handful of steps, few held-out prompts.

    Partial reward, so that even a barely warmed policy sees rewards that differ.
    """
    base: dict[str, object] = dict(
        steps=4, sft_steps=2, eval_prompts=32, prompts_per_step=4, reward="partial"
    )
    return grpo.Config(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def both() -> dict:
    return grpo.run(small())


def claim(metrics: dict, claim_id: str) -> dict:
    (found,) = [c for c in metrics["claims"] if c["id"] == claim_id]
    return found


# ---------------------------------------------------------------- advantages


def test_group_advantages_have_zero_mean_and_unit_std_per_group() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(32, 8, generator=g) * 5 - 2  # (P, G), any scale and offset
    adv = grpo.group_advantages(rewards, eps=1e-6)
    torch.testing.assert_close(adv.mean(-1), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv.std(-1), torch.ones(32), atol=1e-5, rtol=0)
    # Group-relative: shifting or scaling one group's rewards leaves its advantages alone.
    shifted = rewards.clone()
    shifted[3] = 10 * shifted[3] + 7
    torch.testing.assert_close(grpo.group_advantages(shifted, 1e-6)[3], adv[3], atol=1e-4, rtol=0)


def test_a_group_of_equal_rewards_gets_zero_advantage_not_nan() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    adv = grpo.group_advantages(rewards, eps=1e-6)
    assert torch.equal(adv[0], torch.zeros(4)) and torch.equal(adv[2], torch.zeros(4))
    check = grpo.advantage_check(rewards, adv)
    assert check["groups_checked"] == 1 and check["groups_all_equal"] == 2
    assert check["max_abs_advantage_equal_groups"] == 0.0
    assert check["max_deviation"] < 1e-5


def test_when_every_reward_is_equal_grpo_does_not_move_the_policy() -> None:
    # Exact reward, no warm-up, 16^6 possible answers: every group scores all zeros, every
    # advantage is 0 and the KL gradient is 0 at the reference, so nothing changes.
    m = grpo.run(small(reward="exact", sft_steps=0, vocab=16, seq_len=6, methods=("grpo",)))
    assert m["advantages"]["groups_checked"] == 0
    assert m["variants"]["grpo"]["equal_reward_groups_frac"] == 1.0
    assert m["variants"]["grpo"]["kl_to_ref"] == 0.0


def test_the_run_checks_the_advantages_of_every_group(both: dict) -> None:
    a = both["advantages"]
    cfg = small()
    assert a["groups_checked"] + a["groups_all_equal"] == cfg.steps * cfg.prompts_per_step
    assert a["max_deviation"] < 1e-3
    assert claim(both, "grpo_advantage_normalised")["verdict"] == "reproduced"


# ---------------------------------------------------------------- memory


def test_grpo_trains_no_critic_and_ppo_trains_exactly_one_more_model(both: dict) -> None:
    g, p = both["variants"]["grpo"], both["variants"]["ppo"]
    cfg = small()
    with torch.device("meta"):  # counts from fresh modules, nothing allocated
        policy = sum(x.numel() for x in grpo.Net(cfg, out=cfg.vocab).parameters())
        critic = sum(x.numel() for x in grpo.Net(cfg, out=1).parameters())
    assert g["critic_params"] == 0
    assert g["trainable_params"] == g["policy_params"] == p["policy_params"] == policy
    assert p["critic_params"] == critic
    assert p["trainable_params"] - g["trainable_params"] == critic
    # Adam holds two fp32 moments per trained parameter, for the critic's too.
    assert g["optimizer_state_bytes"] == 2 * 4 * policy
    assert p["critic_optimizer_state_bytes"] == 2 * 4 * critic
    assert p["optimizer_state_bytes"] - g["optimizer_state_bytes"] == 2 * 4 * critic
    assert p["grad_bytes"] - g["grad_bytes"] == 4 * critic
    # Both keep a frozen reference the size of the policy; only PPO holds a critic.
    assert g["reference_params"] == p["reference_params"] == policy
    assert p["weight_bytes"] - g["weight_bytes"] == 4 * critic


def test_memory_claims_compare_policy_to_policy_plus_critic(both: dict) -> None:
    p = both["variants"]["ppo"]
    fraction = p["policy_params"] / (p["policy_params"] + p["critic_params"])
    c = claim(both, "grpo_trainable_fraction")
    assert c["paper_value"] == 0.5
    assert c["measured_value"] == pytest.approx(fraction, abs=1e-12)
    assert c["verdict"] == "reproduced"  # the critic differs from the policy only by its head
    s = claim(both, "grpo_optimizer_state_fraction")
    assert s["measured_value"] == pytest.approx(fraction, abs=1e-12)  # Adam state follows params


def test_critic_is_the_policy_body_with_a_value_head() -> None:
    cfg = small()
    policy = grpo.Net(cfg, out=cfg.vocab)
    critic = grpo.make_critic(cfg, policy)
    for name, value in critic.state_dict().items():
        if name.startswith("head."):
            assert value.shape[0] == 1 and not value.any()
        else:
            assert torch.equal(value, policy.state_dict()[name])


def test_grpo_alone_leaves_out_the_claims_that_need_ppo() -> None:
    m = grpo.run(small(methods=("grpo",)))
    assert set(m["variants"]) == {"grpo"}
    assert {c["id"] for c in m["claims"]} == {"grpo_advantage_normalised", "grpo_reward_gain"}


# ---------------------------------------------------------------- KL


def test_k3_is_non_negative_and_zero_at_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(1000, generator=g) * 3 - 2
    ref_logp = torch.randn(1000, generator=g) * 3 - 2
    assert (grpo.k3(logp, ref_logp) >= 0).all()
    assert torch.equal(grpo.k3(logp, logp), torch.zeros(1000))


def test_k3_is_an_unbiased_estimate_of_the_exact_kl() -> None:
    # E_{a ~ pi}[k3(a)] = sum_a pi_ref(a) - 1 + KL(pi || pi_ref) = KL, computed exactly.
    g = torch.Generator().manual_seed(1)
    logits, ref_logits = torch.randn(64, 8, generator=g) * 2, torch.randn(64, 8, generator=g)
    logp, ref_logp = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    expected_k3 = (logp.exp() * grpo.k3(logp, ref_logp)).sum(-1)
    torch.testing.assert_close(expected_k3, grpo.exact_kl(logits, ref_logits), atol=1e-5, rtol=0)


def test_kl_is_zero_before_training_and_positive_after(both: dict) -> None:
    assert both["initial"]["kl"] == 0.0 and both["initial"]["k3"] == 0.0
    for v in both["variants"].values():
        assert v["kl_to_ref"] > 0 and v["k3_to_ref"] >= 0


# ---------------------------------------------------------------- model and optimizer


def test_a_position_cannot_see_answer_tokens_not_yet_written() -> None:
    cfg = small()
    torch.manual_seed(0)
    net = grpo.Net(cfg, out=cfg.vocab)
    prompts = torch.randint(cfg.vocab, (5, cfg.seq_len))
    answers = torch.randint(cfg.vocab, (5, cfg.seq_len))
    base = net(prompts, answers)
    for t in range(cfg.seq_len):
        changed = answers.clone()
        changed[:, t:] = (changed[:, t:] + 1) % cfg.vocab  # rewrite position t and later
        torch.testing.assert_close(net(prompts, changed)[:, : t + 1], base[:, : t + 1])
        # Sampling computes one position at a time: the same logits.
        torch.testing.assert_close(net(prompts, answers, t)[:, 0], base[:, t])


def test_reward_is_checked_against_the_sorted_prompt() -> None:
    prompts = torch.tensor([[3, 1, 2, 1], [0, 0, 5, 4]])
    answers = torch.tensor([[1, 1, 2, 3], [0, 4, 0, 5]])
    assert grpo.reward(prompts, answers, "exact").tolist() == [1.0, 0.0]
    assert grpo.reward(prompts, answers, "partial").tolist() == [1.0, 0.5]


def test_gae_with_lambda_one_is_return_to_go_minus_value() -> None:
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    to_go = rewards.flip(-1).cumsum(-1).flip(-1)  # gamma = 1
    torch.testing.assert_close(grpo.gae(rewards, values, 1.0), to_go - values)


def test_hand_written_adam_matches_torch_adam() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    ours, theirs = grpo.Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    for _ in range(5):
        x = torch.randn(4, 6)
        for model, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            (model(x) ** 2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert grpo.optimizer_state_bytes(ours) == 2 * 4 * sum(p.numel() for p in a.parameters())


# ---------------------------------------------------------------- CLI

CONTRACT_KEYS = {"recipe", "config", "env", "claims", "variants", "curves", "wall_s"}
CLAIM_KEYS = {"id", "claim", "metric", "paper_value", "measured_value", "unit", "tolerance"}


def test_cli_default_prints_one_json_line_with_every_contract_key(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(metrics) >= CONTRACT_KEYS
    assert metrics["recipe"] == "grpo"
    assert set(metrics["config"]) == {f.name for f in fields(grpo.Config)}
    assert set(metrics["env"]) == {"torch", "device", "gpu_name", "threads"}
    assert set(metrics["variants"]) == {"grpo", "ppo"}
    for c in metrics["claims"]:
        assert CLAIM_KEYS | {"verdict"} == set(c)
        assert c["verdict"] in {"reproduced", "partial", "not reproduced", "not checkable"}
    # The default run reproduces all four: memory arithmetic, standardisation, reward gain.
    assert {c["id"]: c["verdict"] for c in metrics["claims"]} == {
        "grpo_trainable_fraction": "reproduced",
        "grpo_optimizer_state_fraction": "reproduced",
        "grpo_advantage_normalised": "reproduced",
        "grpo_reward_gain": "reproduced",
    }
    gain = claim(metrics, "grpo_reward_gain")
    assert gain["measured_value"] > gain["tolerance"] > 0
    steps = metrics["config"]["steps"]
    for curve in metrics["curves"].values():
        assert set(curve["series"]) == {"grpo", "ppo"}
        assert all(len(points) == steps for points in curve["series"].values())
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--group-size", "1"], "--group-size"),
        (["--steps", "0"], "--steps"),
        (["--beta", "-0.1"], "--beta"),
        (["--methods", "grpo,dpo"], "--methods"),
        (["--clip", "0"], "--clip"),
        (["--adv-eps", "0"], "--adv-eps"),
        (["--reward", "typo"], "--reward"),
    ],
)
def test_bad_config_fails_in_one_line_naming_the_option(
    args: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        grpo.main(args)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], err


def test_group_size_one_exits_2_with_no_traceback_in_a_real_process() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--group-size", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--group-size" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_error_runs_before_compute() -> None:
    with pytest.raises(ValueError, match="--group-size"):
        grpo.run(small(group_size=1))
