"""Group Relative Policy Optimization (DeepSeekMath) against PPO, with a verifiable reward.

The task: a prompt is K random digits in 0..V-1, the answer is the same digits sorted, written
one token at a time by a small autoregressive policy. The reward is checked by a rule, not
learned: by default 1 when the whole answer is right, else 0 (`--reward exact`), or the
fraction of answer positions that are right (`--reward partial`). A short supervised warm-up
(`--sft-steps`) gives the starting policy some right answers, as RL follows SFT in the paper.

Both methods start from the same policy, sample the same prompts and keep a frozen copy of
the starting policy as the reference.
- GRPO samples a group of G answers per prompt; each answer's advantage is its reward minus
  the group's mean, divided by the group's std (+ eps), broadcast to every token of the answer.
  The KL to the reference is added to the loss with the paper's estimator
  k3 = pi_ref/pi - log(pi_ref/pi) - 1. No value model.
- PPO trains a critic: the policy's network with a 1-wide value head (the paper's "model of
  comparable size"), initialised from the starting policy's body. Per-token rewards carry the
  KL penalty -beta * log(pi/pi_ref), the task reward lands on the last token, advantages come
  from GAE (gamma = 1) and are whitened over the batch.
Both use the clipped policy-ratio objective and one Adam optimizer each.
Measured: trainable parameters and Adam state bytes, read from the modules and the optimizer's
state tensors; reward over steps; reward, exact-match rate and KL to the reference (exact, over
the vocabulary, and the k3 estimate) on held-out prompts before and after; time per step.

Not covered: language models, learned reward models, long outputs, process supervision,
iterative GRPO (reference reset), any benchmark. Times are eager PyTorch on this machine.

    python recipes/grpo.py                  # a few seconds on 2 CPU cores
    python recipes/grpo.py --preset 4070    # a 12 GB GPU: the paper's G = 64, batch 1024

Imports only torch, the standard library and harness.py, which ships beside it: it runs
in a sandbox without the project. The last stdout line is one JSON object with every metric.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__:  # imported from the project, as recipes.grpo
    from . import harness
else:  # run as a script: harness.py lies beside it (in the job dir, or in recipes/)
    import harness  # type: ignore[no-redef]

# torch.optim.Adam's update (its state tensors are what the memory claims read), written
# out in the harness: building a torch.optim optimizer costs seconds of this run's budget.
Adam = harness.Adam

METHODS = ("grpo", "ppo")
REWARDS = ("partial", "exact")
NON_DEGENERATE_STD = 1e-6  # groups whose reward std is below this are "all rewards equal"

# The paper's claims this run checks: id -> (claim, metric, unit, tolerance).
# Reproduced when |measured - paper| <= tolerance * max(1, |paper|), except the reward gain,
# a direction: reproduced when the gain exceeds its tolerance (twice its standard error).
# fmt: off
CLAIMS = {
    "grpo_trainable_fraction": (
        "GRPO needs no critic: it trains the fraction policy / (policy + critic) of the "
        "parameters PPO trains, 0.5 when the critic is the size of the policy (ours is the "
        "policy's network with a 1-wide value head instead of the V-wide token head)",
        "variants.grpo.trainable_params / variants.ppo.trainable_params", "ratio", 0.05),
    "grpo_optimizer_state_fraction": (
        "The optimizer state shrinks in proportion: Adam keeps two moments per trained "
        "parameter, so GRPO holds about half of PPO's Adam state (read from the state tensors)",
        "variants.grpo.optimizer_state_bytes / variants.ppo.optimizer_state_bytes", "ratio", 0.05),
    "grpo_advantage_normalised": (
        "Group-relative advantages have zero mean and unit std within every group whose "
        "rewards differ (the largest distance of a group's mean from zero or of its std from "
        "one, over all groups and steps)",
        "advantages.max_deviation", "abs deviation", 1e-3),
    "grpo_reward_gain": (
        "GRPO raises the verifiable reward over the initial policy (a direction: reproduced "
        "when the held-out gain exceeds the tolerance, twice its standard error)",
        "variants.grpo.reward_gain", "reward", 0.0),
}
# fmt: on


@dataclass
class Config:
    seq_len: int = 4  # K digits per prompt and per answer
    vocab: int = 8  # V: digits 0..V-1; token V marks an answer slot not yet written
    reward: str = "exact"  # exact: 1 if the whole answer is right; partial: fraction right
    emb: int = 16
    hidden: int = 64
    group_size: int = 8  # G answers sampled per prompt
    prompts_per_step: int = 16  # batch = prompts_per_step * group_size answers
    steps: int = 100  # RL steps (sample a batch, then `inner_steps` updates)
    inner_steps: int = 1  # mu: updates per sampled batch; the paper's setting is 1
    lr: float = 3e-3
    beta: float = 0.04  # KL coefficient (the paper's value)
    clip: float = 0.2  # epsilon of the clipped ratio
    adv_eps: float = 1e-6  # added to the group std: equal rewards give 0, not 0/0
    gae_lambda: float = 1.0  # PPO only; gamma is 1
    vf_coef: float = 0.5  # PPO only: value loss weight
    sft_steps: int = 20  # supervised warm-up before RL, as RL follows SFT in the paper
    sft_lr: float = 3e-3
    eval_prompts: int = 512  # held-out prompts, one sampled answer each
    methods: tuple[str, ...] = METHODS
    device: str = "cpu"
    threads: int = 1  # CPU intra-op threads; 0 = torch's default
    preset: str = "none"
    seed: int = 0


# Explicit flags override a preset; a preset overrides the defaults.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "cpu": {},  # the defaults are CPU-sized
    # The paper's group of 64 and batch of 1024 answers (16 prompts), a longer task, a wider
    # network; a few MB of weights and activations: any 12 GB card. A 512-wide MLP needs a
    # smaller RL rate: at 3e-4 a CPU trial lost reward in its first steps, at 1e-4 it gained.
    "4070": dict(seq_len=8, vocab=16, emb=32, hidden=512, group_size=64, prompts_per_step=16,
                 steps=300, lr=1e-4, sft_steps=60, sft_lr=1e-3, eval_prompts=4096,
                 device="cuda"),
}
# fmt: on


# ---------------------------------------------------------------- task


def make_prompts(cfg: Config, n: int, g: torch.Generator) -> Tensor:
    return torch.randint(cfg.vocab, (n, cfg.seq_len), generator=g, device=g.device)  # (n, K)


def reward(prompts: Tensor, answers: Tensor, kind: str) -> Tensor:
    """The verifiable reward: compare with the sorted prompt. (N, K), (N, K) -> (N,)"""
    right = answers == prompts.sort(dim=-1).values  # (N, K)
    return right.float().mean(-1) if kind == "partial" else right.all(-1).float()


# ---------------------------------------------------------------- model


class Net(nn.Module):
    """Autoregressive MLP: the state at answer position t is (prompt, answer[:t], t).

    out = V gives the policy's next-token logits; out = 1 gives PPO's value V(state).
    """

    seen: Tensor  # (K_t, K_s) bool buffer: answer slot s is written before position t

    def __init__(self, cfg: Config, out: int):
        super().__init__()
        K, E, H = cfg.seq_len, cfg.emb, cfg.hidden
        self.blank = cfg.vocab
        self.tok = nn.Embedding(cfg.vocab + 1, E)  # digits and the blank slot
        self.pos = nn.Embedding(K, E)  # which answer position is being written
        self.body = nn.Sequential(
            nn.Linear((2 * K + 1) * E, H), nn.GELU(), nn.Linear(H, H), nn.GELU()
        )
        self.head = nn.Linear(H, out)
        t = torch.arange(K)
        self.register_buffer("seen", t[None, :] < t[:, None], persistent=False)

    def forward(self, prompts: Tensor, answers: Tensor, t: int | None = None) -> Tensor:
        """Every answer position (teacher forcing), or only position t when sampling.

        (N, K), (N, K) -> (N, T, out) with T = K, or T = 1 for a given t.
        """
        N = prompts.shape[0]
        seen = self.seen if t is None else self.seen[t : t + 1]  # (T, K)
        pos = self.pos.weight if t is None else self.pos.weight[t : t + 1]  # (T, E)
        T = seen.shape[0]
        # Position t sees answer slots s < t; the rest read as blank, so it cannot peek.
        prev = torch.where(seen, answers[:, None, :], self.blank)  # (N, T, K)
        x = torch.cat(
            [
                self.tok(prompts).flatten(1)[:, None].expand(N, T, -1),  # (N, T, K*E)
                self.tok(prev).flatten(2),  # (N, T, K*E)
                pos[None].expand(N, T, -1),  # (N, T, E)
            ],
            dim=-1,
        )
        return self.head(self.body(x))  # (N, T, out)


def make_critic(cfg: Config, policy: Net) -> Net:
    """The policy's network with a value head, its body copied from the starting policy."""
    critic = Net(cfg, out=1).to(next(policy.parameters()).device)
    body = {k: v for k, v in policy.state_dict().items() if not k.startswith("head.")}
    critic.load_state_dict(body, strict=False)
    nn.init.zeros_(critic.head.weight)
    nn.init.zeros_(critic.head.bias)
    return critic


@torch.no_grad()
def sample(policy: Net, prompts: Tensor, g: torch.Generator) -> Tensor:
    """One answer per prompt, token by token at temperature 1. (N, K) -> (N, K)"""
    answers = torch.full_like(prompts, policy.blank)
    for t in range(prompts.shape[1]):
        probs = policy(prompts, answers, t)[:, 0].softmax(-1)  # (N, V)
        answers[:, t] = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return answers


def token_logprobs(logits: Tensor, answers: Tensor) -> Tensor:
    """log pi(o_t | q, o_<t) of the tokens taken. (N, K, V), (N, K) -> (N, K)"""
    return logits.log_softmax(-1).gather(-1, answers[..., None]).squeeze(-1)


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """The paper's KL estimator: pi_ref/pi - log(pi_ref/pi) - 1, >= 0, 0 iff pi == pi_ref."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio  # expm1: exact 0 at pi == pi_ref, no cancellation


def exact_kl(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """KL(pi || pi_ref) over the whole vocabulary, per state. (N, K, V) x2 -> (N, K)"""
    logp, ref_logp = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def group_advantages(rewards: Tensor, eps: float) -> Tensor:
    """(r - mean(group)) / (std(group) + eps), groups along the last dim. (P, G) -> (P, G)

    std is torch's default (Bessel-corrected); a group of equal rewards gives 0 / eps = 0.
    """
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True)
    return (rewards - mean) / (std + eps)


def advantage_check(rewards: Tensor, adv: Tensor) -> dict[str, Any]:
    """How far each group's advantages are from mean 0, std 1; equal-reward groups apart."""
    varied = rewards.std(-1) > NON_DEGENERATE_STD  # (P,)
    a, same = adv[varied], adv[~varied]  # (P_varied, G), (P_equal, G)
    dev = torch.cat([a.mean(-1).abs(), (a.std(-1) - 1).abs()]) if a.numel() else a
    return {
        "max_deviation": dev.max().item() if dev.numel() else 0.0,
        "groups_checked": a.shape[0],
        "groups_all_equal": same.shape[0],
        "max_abs_advantage_equal_groups": same.abs().max().item() if same.numel() else 0.0,
    }


def gae(rewards: Tensor, values: Tensor, lam: float) -> Tensor:
    """Generalised advantage estimation with gamma = 1. (N, K) x2 -> (N, K)"""
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        last = rewards[:, t] + next_value - values[:, t] + lam * last
        adv[:, t] = last
    return adv


def clipped_objective(logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float):
    """min(ratio A, clip(ratio, 1-eps, 1+eps) A) per token, and the clipped fraction."""
    ratio = (logp - old_logp).exp()  # (N, K); 1 on the first update after sampling
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return surr, ((ratio - 1).abs() > clip).float().mean()


# ---------------------------------------------------------------- measurement


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


def optimizer_state_bytes(opt: Adam, params=None) -> int:
    """Bytes of the optimizer's state tensors (exp_avg, exp_avg_sq), all or some parameters'."""
    wanted = None if params is None else {id(p) for p in params}
    return sum(
        tensor_bytes(state.values())
        for p, state in opt.state.items()
        if wanted is None or id(p) in wanted
    )


@torch.no_grad()
def evaluate(cfg: Config, policy: Net, ref: Net, prompts: Tensor) -> dict[str, float]:
    """Reward, exact-match rate and KL to the reference on fixed held-out prompts."""
    g = torch.Generator(device=prompts.device).manual_seed(cfg.seed + 2)  # same draws each time
    answers = sample(policy, prompts, g)
    r = reward(prompts, answers, cfg.reward)
    logits, ref_logits = policy(prompts, answers), ref(prompts, answers)
    kl = exact_kl(logits, ref_logits)  # (N, K)
    est = k3(token_logprobs(logits, answers), token_logprobs(ref_logits, answers))  # (N, K)
    diff = (est - kl).flatten()  # paired: k3 at the sampled token minus the exact KL there
    return {
        "reward": r.mean().item(),
        "reward_se": (r.std() / math.sqrt(r.numel())).item(),
        "exact_match": reward(prompts, answers, "exact").mean().item(),
        "kl": kl.mean().item(),
        "k3": est.mean().item(),
        "k3_min": est.min().item(),
        "k3_minus_kl_se": (diff.std() / math.sqrt(diff.numel())).item(),
    }


def supervised_warmup(cfg: Config, policy: Net, g: torch.Generator) -> None:
    """A few steps of teacher-forced cross-entropy on sorted answers, so RL starts with signal."""
    if cfg.sft_steps == 0:
        return
    opt = Adam(policy.parameters(), lr=cfg.sft_lr)
    for _ in range(cfg.sft_steps):
        prompts = make_prompts(cfg, cfg.prompts_per_step * cfg.group_size, g)
        target = prompts.sort(-1).values  # (N, K)
        logits = policy(prompts, target)  # (N, K, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def train(cfg: Config, method: str, start: Net, eval_prompts: Tensor) -> dict[str, Any]:
    """One RL run from `start` (left untouched). Returns the variant row and its curves."""
    dev = eval_prompts.device
    policy = copy.deepcopy(start).train()
    ref = copy.deepcopy(start).eval().requires_grad_(False)  # frozen reference pi_ref
    critic = make_critic(cfg, policy) if method == "ppo" else None
    trained = [policy] if critic is None else [policy, critic]
    params = [p for m in trained for p in m.parameters() if p.requires_grad]
    opt = Adam(params, lr=cfg.lr)
    # Same prompt stream and sampling draws for every method: only the update differs.
    g = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    P, G, B = cfg.prompts_per_step, cfg.group_size, cfg.prompts_per_step * cfg.group_size
    cuda = dev.type == "cuda"

    curve_reward, curve_kl, step_ms, clip_fracs = [], [], [], []
    adv_dev, groups_checked, groups_equal, max_adv_equal = 0.0, 0, 0, 0.0
    value_loss = float("nan")
    state_bytes: dict[str, int] = {}
    for step in range(cfg.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        prompts = make_prompts(cfg, P, g).repeat_interleave(G, dim=0)  # (B, K), groups adjacent
        answers = sample(policy, prompts, g)  # (B, K)
        r = reward(prompts, answers, cfg.reward)  # (B,)
        # The first update's forward pass doubles as pi_old (and the critic's as V_old).
        logits = policy(prompts, answers)  # (B, K, V)
        logp = token_logprobs(logits, answers)  # (B, K)
        old_logp = logp.detach()  # pi_old: the policy that sampled the batch
        values = critic(prompts, answers).squeeze(-1) if critic is not None else None  # (B, K)
        with torch.no_grad():
            ref_logits = ref(prompts, answers)
            ref_logp = token_logprobs(ref_logits, answers)  # (B, K) pi_ref
            if method == "grpo":
                a = group_advantages(r.view(P, G), cfg.adv_eps)  # (P, G)
                adv = a.reshape(B, 1).expand(B, cfg.seq_len)  # one advantage per answer, per token
            else:
                assert values is not None
                token_r = -cfg.beta * (old_logp - ref_logp)  # the paper's eq. 2 KL penalty
                token_r[:, -1] += r  # the task reward arrives with the last token
                adv = gae(token_r, values.detach(), cfg.gae_lambda)
                returns = adv + values.detach()  # (B, K) value targets
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # whitened over the batch

        for i in range(cfg.inner_steps):
            if i > 0:
                logp = token_logprobs(policy(prompts, answers), answers)
                if critic is not None:
                    values = critic(prompts, answers).squeeze(-1)
            surr, clip_frac = clipped_objective(logp, old_logp, adv, cfg.clip)
            if method == "grpo":
                # All answers have K tokens, so the paper's (1/G) sum_i (1/|o_i|) sum_t is a mean.
                loss = -(surr - cfg.beta * k3(logp, ref_logp)).mean()
            else:
                assert values is not None
                v_loss = 0.5 * (values - returns).pow(2).mean()
                loss = -surr.mean() + cfg.vf_coef * v_loss
                value_loss = v_loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            clip_fracs.append(clip_frac.item())
        if not state_bytes:  # Adam creates its state on the first step: count it there
            grads = [p.grad for p in params if p.grad is not None]
            state_bytes = {"optimizer": optimizer_state_bytes(opt), "grads": tensor_bytes(grads)}
            if critic is not None:
                state_bytes["critic_optimizer"] = optimizer_state_bytes(opt, critic.parameters())
        if cuda:
            torch.cuda.synchronize()
        step_ms.append(1e3 * (time.perf_counter() - t0))
        curve_reward.append([step, r.mean().item()])
        curve_kl.append([step, exact_kl(logits.detach(), ref_logits).mean().item()])  # pi_old's
        if method == "grpo":  # bookkeeping, outside the timed step
            check = advantage_check(r.view(P, G), a)
            adv_dev = max(adv_dev, check["max_deviation"])
            max_adv_equal = max(max_adv_equal, check["max_abs_advantage_equal_groups"])
            groups_checked += check["groups_checked"]
            groups_equal += check["groups_all_equal"]

    policy.eval()
    final = evaluate(cfg, policy, ref, eval_prompts)
    n_trainable = sum(p.numel() for p in params)
    weight_bytes = tensor_bytes(p for m in (*trained, ref) for p in m.parameters())
    row: dict[str, Any] = {
        "trainable_params": n_trainable,
        "policy_params": sum(p.numel() for p in policy.parameters()),
        "critic_params": sum(p.numel() for p in critic.parameters()) if critic else 0,
        "reference_params": sum(p.numel() for p in ref.parameters()),
        "optimizer_state_bytes": state_bytes["optimizer"],
        "critic_optimizer_state_bytes": state_bytes.get("critic_optimizer", 0),
        "grad_bytes": state_bytes["grads"],
        "weight_bytes": weight_bytes,
        # What training holds besides activations: all weights, the gradients, Adam's state.
        "train_state_bytes": weight_bytes + state_bytes["grads"] + state_bytes["optimizer"],
        "reward_final": final["reward"],
        "reward_final_se": final["reward_se"],
        "exact_match_final": final["exact_match"],
        "kl_to_ref": final["kl"],
        "k3_to_ref": final["k3"],
        "step_ms_mean": statistics.fmean(step_ms),
        "step_ms_std": statistics.stdev(step_ms) if len(step_ms) > 1 else 0.0,
        "clip_frac": statistics.fmean(clip_fracs),
        "batch_mean_reward_last": curve_reward[-1][1],
    }
    if method == "grpo":
        row["equal_reward_groups_frac"] = groups_equal / (groups_equal + groups_checked)
    else:
        row["value_loss_final"] = value_loss
    extra = {
        "advantages": {
            "max_deviation": adv_dev,
            "groups_checked": groups_checked,
            "groups_all_equal": groups_equal,
            "max_abs_advantage_equal_groups": max_adv_equal,
            "eps": cfg.adv_eps,
        },
        "kl_check": {
            "k3_mean": final["k3"],
            "exact_kl_mean": final["kl"],
            "k3_min": final["k3_min"],
            "k3_minus_kl_se": final["k3_minus_kl_se"],
        },
    }
    return {"row": row, "reward": curve_reward, "kl": curve_kl, "extra": extra}


def run(cfg: Config) -> dict[str, Any]:
    return harness.run(cfg, config_error(cfg), measure)


def measure(cfg: Config, t_start: float) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.set_float32_matmul_precision("highest")
    with torch.device(dev):
        start = Net(cfg, out=cfg.vocab)  # seeded init; every method starts from this policy
    g_eval = torch.Generator(device=dev).manual_seed(cfg.seed + 3)
    eval_prompts = make_prompts(cfg, cfg.eval_prompts, g_eval)  # (n_eval, K), held out
    supervised_warmup(cfg, start, torch.Generator(device=dev).manual_seed(cfg.seed + 4))
    start.eval()
    initial = evaluate(cfg, start, start, eval_prompts)

    runs = {m: train(cfg, m, start, eval_prompts) for m in cfg.methods}
    variants: dict[str, dict[str, Any]] = {}
    for m, out in runs.items():
        row = out["row"]
        gain = row["reward_final"] - initial["reward"]
        variants[m] = {
            "reward_initial": initial["reward"],
            "reward_gain": gain,
            "exact_match_initial": initial["exact_match"],
            **row,
        }
    curves = {
        "reward": {
            "title": f"Mean reward of each step's sampled batch ({cfg.reward} reward)",
            "xlabel": "RL step",
            "ylabel": "mean reward",
            "series": {m: out["reward"] for m, out in runs.items()},
        },
        "kl": {
            "title": "KL(policy || reference) per token on each step's samples, exact",
            "xlabel": "RL step",
            "ylabel": "nats per token",
            "series": {m: out["kl"] for m, out in runs.items()},
        },
    }
    extra = runs["grpo"]["extra"] if "grpo" in runs else {}
    se_gain = math.hypot(initial["reward_se"], variants.get("grpo", {}).get("reward_final_se", 0))
    return {
        **harness.header("grpo", cfg),
        "variants": variants,
        **extra,
        "initial": initial,
        "claims": claims(variants, extra, 2 * se_gain),
        "curves": curves,
        "wall_s": time.perf_counter() - t_start,
    }


def claims(variants: dict[str, Any], extra: dict[str, Any], gain_tol: float) -> list[dict]:
    """The claims the methods run can check; a claim needing an absent method is left out."""
    out = []
    grpo, ppo = variants.get("grpo"), variants.get("ppo")
    if grpo and ppo:
        frac = grpo["trainable_params"] / ppo["trainable_params"]
        out.append(harness.claim(CLAIMS, "grpo_trainable_fraction", 0.5, frac))
        state = grpo["optimizer_state_bytes"] / ppo["optimizer_state_bytes"]
        out.append(harness.claim(CLAIMS, "grpo_optimizer_state_fraction", 0.5, state))
    if grpo:
        deviation = extra["advantages"]["max_deviation"]
        out.append(harness.claim(CLAIMS, "grpo_advantage_normalised", 0.0, deviation))
        gain = grpo["reward_gain"]
        verdict = harness.verdict(gain > gain_tol, partial=gain > 0)
        out.append(
            harness.claim(CLAIMS, "grpo_reward_gain", 0.0, gain, tol=gain_tol, verdict=verdict)
        )
    return out


# ---------------------------------------------------------------- CLI


def config_error(cfg: Config) -> str | None:
    """One line naming the option and the reason, or None. Runs before any compute."""
    if cfg.group_size < 2:
        return (
            f"--group-size: GRPO needs at least 2 answers per prompt to have a group std, "
            f"got {cfg.group_size}"
        )
    for name in ("seq_len", "emb", "hidden", "prompts_per_step", "steps", "inner_steps"):
        if getattr(cfg, name) <= 0:
            return f"--{name.replace('_', '-')}: must be positive, got {getattr(cfg, name)}"
    if cfg.vocab < 2:
        return f"--vocab: needs at least 2 digits to sort, got {cfg.vocab}"
    if cfg.eval_prompts < 2:
        return f"--eval-prompts: needs at least 2 for a standard error, got {cfg.eval_prompts}"
    for name in ("beta", "vf_coef", "sft_steps", "threads"):
        if getattr(cfg, name) < 0:
            return f"--{name.replace('_', '-')}: must be >= 0, got {getattr(cfg, name)}"
    for name in ("lr", "sft_lr"):
        if not getattr(cfg, name) > 0:
            return f"--{name.replace('_', '-')}: must be positive, got {getattr(cfg, name)}"
    if not 0 < cfg.clip < 1:
        return f"--clip: ratio clipped to [1 - clip, 1 + clip] needs 0 < clip < 1, got {cfg.clip}"
    if not cfg.adv_eps > 0:
        return f"--adv-eps: must be positive (equal rewards have std 0), got {cfg.adv_eps}"
    if not 0 <= cfg.gae_lambda <= 1:
        return f"--gae-lambda: must be in [0, 1], got {cfg.gae_lambda}"
    if cfg.reward not in REWARDS:
        return f"--reward: unknown {cfg.reward!r}, choose from {', '.join(REWARDS)}"
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods or len(set(cfg.methods)) != len(cfg.methods):
        got = ",".join(cfg.methods)
        return f"--methods: a comma list of distinct {'/'.join(METHODS)}, got {got!r}"
    if cfg.device not in ("cpu", "cuda"):
        return f"--device: unknown {cfg.device!r}"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        via = "" if cfg.preset == "none" else f" (preset {cfg.preset})"
        return f"--device: cuda requested{via} but torch.cuda.is_available() is False"
    return None


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None]:
    p = harness.Parser(__file__, __doc__)
    add = p.add_argument
    add("--seq-len", type=int, help="K, digits per prompt and per answer (default 4)")
    add("--vocab", type=int, help="V, digits are 0..V-1 (default 8)")
    add(
        "--reward",
        choices=REWARDS,
        help="exact = 1 only if the whole answer is right, sparse from a random policy, hence "
        "--sft-steps; partial = fraction of answer positions right (default exact)",
    )
    add("--emb", type=int, help="token and position embedding width (default 16)")
    add("--hidden", type=int, help="MLP width of the policy and of PPO's critic (default 64)")
    add("--group-size", type=int, help="G, answers sampled per prompt, >= 2 (default 8; paper 64)")
    add(
        "--prompts-per-step",
        type=int,
        help="prompts per RL step; batch = prompts * group size answers (default 16; paper 16: "
        "1024 / 64)",
    )
    add("--steps", type=int, help="RL steps, each samples one batch (default 100)")
    add(
        "--inner-steps",
        type=int,
        help="mu, optimizer updates per sampled batch; with 1 (the paper's) the ratio is 1 and "
        "the clip never binds (default 1)",
    )
    add("--lr", type=float, help="Adam learning rate for policy and critic (default 3e-3)")
    add("--beta", type=float, help="KL coefficient, >= 0 (default 0.04, the paper's)")
    add("--clip", type=float, help="epsilon of the clipped policy ratio (default 0.2)")
    add(
        "--adv-eps",
        type=float,
        help="added to the group std; too small blows up groups whose rewards differ only by "
        "rounding (default 1e-6)",
    )
    add("--gae-lambda", type=float, help="PPO's GAE lambda, gamma is 1 (default 1.0)")
    add("--vf-coef", type=float, help="PPO's value-loss weight (default 0.5)")
    add(
        "--sft-steps",
        type=int,
        help="supervised warm-up steps on sorted answers before RL; the warmed policy is the "
        "start and the reference of both methods, 0 = RL from a random policy (default 20)",
    )
    add("--sft-lr", type=float, help="Adam learning rate of the warm-up (default 3e-3)")
    add("--eval-prompts", type=int, help="held-out prompts for before/after reward (default 512)")
    add(
        "--methods",
        type=harness.str_list,
        help="comma list of grpo,ppo; the memory claims need both (default grpo,ppo)",
    )
    p.add_common(
        PRESETS,
        preset="none/cpu = the defaults; 4070 = 12 GB GPU: K 8, V 16, hidden 512, G 64, "
        "16 prompts (the paper's batch of 1024), 60 warm-up steps, 300 RL steps at lr 1e-4, "
        "cuda. Explicit flags override a preset",
        threads="CPU intra-op threads, 0 = torch's default (default 1: tensors this small are "
        "latency-bound, more threads only add sync overhead)",
        seed="weights, prompts and samples",
    )
    values, out = p.values(argv)
    return harness.make_config(Config, values), out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    harness.preflight(__file__, config_error(cfg), out)
    metrics = run(cfg)
    head = f"{'method':6} {'trainable':>10} {'adam bytes':>11} {'reward 0->end':>16} {'KL':>8}"
    print(head + f" {'ms/step':>8}")
    for m, v in metrics["variants"].items():
        rw = f"{v['reward_initial']:.3f}->{v['reward_final']:.3f}"
        print(
            f"{m:6} {v['trainable_params']:>10} {v['optimizer_state_bytes']:>11} {rw:>16} "
            f"{v['kl_to_ref']:>8.4f} {v['step_ms_mean']:>8.2f}"
        )
    harness.report(metrics, out, tolerance=True)


if __name__ == "__main__":
    main()
