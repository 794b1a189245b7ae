"""DeepSeekMoE: fine-grained and shared experts, and three ways to balance their load.

A tiny language model is trained on a synthetic token stream and its one MoE FFN block is
measured. The stream is a mixture of second-order Markov chains, each on its own slice of
the vocabulary, drawn with Zipf frequencies: experts can specialise by chain, and a
balanced router has to work against skewed data. The model sees a two-token window (the
current and previous token embeddings, summed; no attention) and the next token depends on
the pair, so the interaction has to come from the experts: without the MoE block the loss
stays far above the chains' own entropy. Three architectures with the same activated and
total expert parameters (DeepSeekMoE, arXiv:2401.06066):

    topk                 N experts of width d_expert, top-K (GShard-style)
    fine_grained         m*N experts of width d_expert/m, top-m*K
    fine_grained_shared  S of those m*N always active (shared), top-(m*K - S) of the rest

and three ways to balance the routed experts' load:

    none       nothing: the router may pile tokens onto a few experts
    aux_loss   alpha * sum_i f_i P_i added to the loss (DeepSeekMoE's expert-level loss,
               per sequence by default)
    bias       auxiliary-loss-free (DeepSeek-V3): a per-expert bias b_i is added to the
               affinities for top-k SELECTION only, gate weights use the raw affinities;
               after each step b_i += gamma * sign(mean_load - load_i)

Affinities are DeepSeek-V3's by default: s_i = sigmoid(u . e_i), gates = the selected s_i
normalised to sum to 1 (--score softmax: DeepSeekMoE's and V2's softmax, unnormalised).
Routed experts are SwiGLU FFNs computed densely (every expert on every token, unselected
gates zero): the same outputs and gradients as a sparse dispatch and, at this size, cheaper
than a Python loop over experts. FLOPs are therefore not measured; activated and total
parameters are counted from the modules.

Measured per (architecture, balancing) run, on held-out sequences: validation loss,
per-expert load, MaxVio = max_load / mean_load - 1 (the metric of the auxiliary-loss-free
paper behind DeepSeek-V3, Wang et al., arXiv:2408.15664; over the whole set and per
sequence), normalised load entropy, experts that get no token, and the tokens
a capacity factor would drop (counted only: nothing is dropped, as in DeepSeek-V3).

What DeepSeek-V2/V3 add on top, each a flag: group-limited routing (--groups G
--topk-groups M: the routed experts split into G groups, as V3's nodes or V2's devices;
each token first picks the M groups with the highest sum of their best k/M affinities, then
its top-k inside them; the groups a token reached are counted), the routed-gate scaling
factor (--route-scale: routed outputs scaled after the gate normalisation), and V3's small
sequence-wise balance loss next to the bias (--seq-alpha: alpha * sum f_i P_i per sequence,
added in the bias runs; V3 sets alpha to 0.0001).

Not covered: attention, depth, scale, expert parallelism and its all-to-all (groups are
counted, not placed on devices), real text. Small-scale losses carry over as directions at
most.

    python recipes/deepseek_moe.py                  # about 4 s on 2 CPU cores, import included
    python recipes/deepseek_moe.py --sweep          # alpha and gamma sweeps, ~2x longer
    python recipes/deepseek_moe.py --preset 4070    # a 12 GB GPU, wider model, longer runs

Imports only torch, the standard library and harness.py, which ships beside it: it runs
in a sandbox without the project. The last stdout line is one JSON object with every metric.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if __package__:  # imported from the project, as recipes.deepseek_moe
    from . import harness
else:  # run as a script: harness.py lies beside it (in the job dir, or in recipes/)
    import harness  # type: ignore[no-redef]

ARCHS = ("topk", "fine_grained", "fine_grained_shared")
BALANCE = ("none", "aux_loss", "bias")
SCORES = ("sigmoid", "softmax")
ALPHA_SWEEP = (0.001, 0.01, 0.1)  # --sweep: aux-loss weights
GAMMA_SWEEP = (0.0001, 0.001, 0.01)  # --sweep: bias update rates
BRANCH = 3  # successors per context in each Markov chain
REF_ARCH = "fine_grained_shared"  # the DeepSeek architecture: balancing curves and claims

# The claims this run checks: id -> (claim, metric, unit, tolerance). Exact claims are
# reproduced when |measured - paper| <= tolerance * max(1, |paper|). Direction claims
# compare two measured runs, the baseline in paper_value; each one's rule is in its text.
# fmt: off
CLAIMS = {
    "activated_params_equal": (
        "topk, fine_grained and fine_grained_shared activate the same expert parameters "
        "per token (max/min across architectures, counted from the modules)",
        "variants.*.activated_expert_params (max / min)", "x", 1e-9),
    "total_params_equal": (
        "fine-grained segmentation and shared experts keep the total expert parameters "
        "(max/min across architectures)",
        "variants.*.total_expert_params (max / min)", "x", 1e-9),
    "loads_sum_exact": (
        "routed expert loads sum to tokens x routed top-k in every run (largest deviation)",
        "variants.*.load_sum - variants.*.tokens * variants.*.k_routed", "tokens", 0.0),
    "bias_lowers_maxvio": (
        "auxiliary-loss-free balancing ends with a lower MaxVio than no balancing",
        "variants.{arch}/bias_*.max_vio (worst gamma) vs variants.{arch}/none.max_vio",
        "MaxVio", 0.1),
    "bias_vs_aux_loss": (
        "auxiliary-loss-free balancing balances at least as well as the strongest aux loss "
        "without its cost in loss",
        "variants.{arch}/bias_*.val_loss vs variants.{arch}/aux_loss_*.val_loss",
        "nats", 0.0),
    "fine_grained_shared_beats_topk": (
        "fine-grained plus shared experts reach a lower validation loss than conventional "
        "top-k at equal activated parameters",
        "variants.fine_grained_shared/*.val_loss vs variants.topk/*.val_loss", "nats", 0.0),
    "aux_alpha_tradeoff": (
        "a larger aux-loss weight lowers MaxVio and raises the validation loss",
        "variants.{arch}/aux_loss_*.max_vio and .val_loss along alpha", "nats", 0.0),
}
# fmt: on
# Claims whose "paper_value" is a baseline this run measured, not a number the paper states.
MEASURED_BASELINE = {
    "bias_lowers_maxvio",
    "bias_vs_aux_loss",
    "fine_grained_shared_beats_topk",
    "aux_alpha_tradeoff",
}


@dataclass
class Config:
    arch: tuple[str, ...] = ARCHS
    balance: tuple[str, ...] = BALANCE
    n_experts: int = 8  # N conventional experts (topk); fine-grained: m*N
    top_k: int = 2  # K conventional experts per token; fine-grained: m*K
    granularity: int = 4  # m: each conventional expert split into m narrower ones
    n_shared: int = 1  # S fine-grained experts always active in fine_grained_shared
    d_model: int = 16
    d_expert: int = 32  # hidden width of a conventional expert; fine-grained: d_expert/m
    vocab: int = 32
    n_chains: int = 4  # Markov chains, each on vocab/n_chains tokens
    steps: int = 100
    batch: int = 16  # sequences per step
    seq_len: int = 32  # predicted tokens per sequence
    val_seqs: int = 256
    lr: float = 0.01
    score: str = "sigmoid"  # affinities: sigmoid (DeepSeek-V3) or softmax (DeepSeekMoE, V2)
    aux_alpha: tuple[float, ...] = (0.01,)
    aux_scope: str = "sequence"  # f_i, P_i per sequence (DeepSeekMoE, V3) or per batch
    bias_gamma: tuple[float, ...] = (0.001,)
    sweep: bool = False
    capacity_factor: float = 1.25
    groups: int = 1  # routed experts split into G groups (V3: nodes; V2: devices)
    topk_groups: int = 0  # M: a token's experts come from at most M groups; 0 = no limit
    route_scale: float = 1.0  # routed-gate scaling factor, after gate normalisation
    seq_alpha: float = 0.0  # V3's sequence-wise balance loss weight, in the bias runs
    log_every: int = 10
    device: str = "cpu"
    threads: int = 1  # CPU intra-op threads; 0 = torch's default
    preset: str = "none"
    seed: int = 0


# Explicit flags override a preset; a preset overrides the defaults.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # 16 conventional experts of width 512, top-2, split m=4: DeepSeekMoE 2B's layout (64
    # fine-grained experts, 1 shared, 7 routed active), d_model 256, 4k tokens a step.
    "4070": dict(n_experts=16, top_k=2, granularity=4, n_shared=1, d_model=256,
                 d_expert=512, vocab=512, n_chains=8, steps=1000, batch=32, seq_len=128,
                 val_seqs=256, lr=0.003, log_every=25, device="cuda", sweep=True),
}
# fmt: on


class Layout(NamedTuple):
    """One architecture's experts: routed count, routed top-k, shared count, width."""

    n_routed: int
    k_routed: int
    n_shared: int
    d_hidden: int


def layout(cfg: Config, arch: str) -> Layout:
    m, N, K = cfg.granularity, cfg.n_experts, cfg.top_k
    if arch == "topk":
        return Layout(N, K, 0, cfg.d_expert)
    if arch == "fine_grained":
        return Layout(m * N, m * K, 0, cfg.d_expert // m)
    # DeepSeekMoE: the shared experts come out of the m*N and out of the m*K activated.
    S = cfg.n_shared
    return Layout(m * N - S, m * K - S, S, cfg.d_expert // m)


def runs(cfg: Config) -> list[tuple[str, float]]:
    """(balancing mode, its rate) for every run of one architecture, repeats dropped."""
    rates = {"none": (0.0,), "aux_loss": cfg.aux_alpha, "bias": cfg.bias_gamma}
    return [
        (mode, rate) for mode in dict.fromkeys(cfg.balance) for rate in dict.fromkeys(rates[mode])
    ]


def label(mode: str, rate: float) -> str:
    """The run's name in `variants`: no dots, which would split a metric path."""
    if mode == "none":
        return mode
    text = f"{rate:.0e}"  # 0.001 -> 1e-03
    return f"{mode}_{text if float(text) == rate else f'{rate:g}'.replace('.', 'p')}"


def ref_arch(cfg: Config) -> str:
    """The architecture the balancing claims and curves use: DeepSeek's when it ran."""
    return REF_ARCH if REF_ARCH in cfg.arch else cfg.arch[-1]


# ---------------------------------------------------------------- data


class Chains(NamedTuple):
    """A mixture of second-order Markov chains, each on its own slice of the vocabulary."""

    succ: Tensor  # (V, V, BRANCH) successors of the context (prev, cur), in cur's slice
    probs: Tensor  # (V, V, BRANCH) their probabilities
    freq: Tensor  # (C,) chain frequencies, Zipf: chain 0 is C times as common as chain C-1


def make_chains(cfg: Config, g: torch.Generator) -> Chains:
    V, C = cfg.vocab, cfg.n_chains
    size = V // C
    lo = (torch.arange(V) // size) * size  # (V,) first token of each token's slice
    succ = lo[None, :, None] + torch.randint(size, (V, V, BRANCH), generator=g)
    probs = (1.5 * torch.randn(V, V, BRANCH, generator=g)).softmax(dim=-1)
    freq = 1.0 / torch.arange(1, C + 1, dtype=torch.float)
    return Chains(succ, probs, freq / freq.sum())


def sample(cfg: Config, ch: Chains, n: int, g: torch.Generator) -> Tensor:
    """n sequences (n, seq_len + 2), each from one chain chosen by frequency."""
    size = cfg.vocab // cfg.n_chains
    chain = torch.multinomial(ch.freq, n, replacement=True, generator=g)  # (n,)
    out = [chain * size + torch.randint(size, (n,), generator=g) for _ in range(2)]
    rows = torch.arange(n)
    for _ in range(cfg.seq_len):
        prev, cur = out[-2], out[-1]
        pick = torch.multinomial(ch.probs[prev, cur], 1, generator=g).squeeze(1)  # (n,)
        out.append(ch.succ[prev, cur][rows, pick])
    return torch.stack(out, dim=1)


def true_loss(ch: Chains, seqs: Tensor) -> float:
    """The floor: the generating chains' own cross-entropy on these sequences."""
    prev, cur, nxt = seqs[:, :-2], seqs[:, 1:-1], seqs[:, 2:]
    hit = ch.succ[prev, cur] == nxt[..., None]  # (n, L, BRANCH): a successor can repeat
    return -(ch.probs[prev, cur] * hit).sum(dim=-1).log().mean().item()


# ---------------------------------------------------------------- model


class Routing(NamedTuple):
    scores: Tensor  # (T, E) affinities s_i
    idx: Tensor  # (T, k) selected experts
    gates: Tensor  # (T, k) the weights on the selected experts' outputs


class SwiGLU(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.gate = nn.Linear(d, h, bias=False)
        self.up = nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """S shared experts (fused into one SwiGLU of width S*h) plus E routed SwiGLU experts."""

    bias: Tensor
    group_of: Tensor

    def __init__(
        self,
        d: int,
        lay: Layout,
        score: str,
        groups: int = 1,
        topk_groups: int = 0,
        route_scale: float = 1.0,
    ):
        super().__init__()
        E, h = lay.n_routed, lay.d_hidden
        self.k, self.score = lay.k_routed, score
        self.route_scale = route_scale
        # Group g holds experts [g*E//G, (g+1)*E//G): sizes differ by one at most, so every
        # architecture can be grouped (31 routed experts in 4 groups: 7, 8, 8, 8).
        self.groups = max(1, min(groups, E))
        self.topk_groups = topk_groups if 0 < topk_groups < self.groups else 0
        self.register_buffer("group_of", torch.arange(E) * self.groups // E, persistent=False)
        self.router = nn.Linear(d, E, bias=False)  # rows are the centroids e_i
        # Routed expert e is w_gate[:, e], w_up[:, e] (d, h) and w_down[e] (h, d), laid out
        # so that all experts run as one (T, d) @ (d, E*h) matmul.
        self.w_gate = nn.Parameter(torch.randn(d, E, h) * d**-0.5)
        self.w_up = nn.Parameter(torch.randn(d, E, h) * d**-0.5)
        self.w_down = nn.Parameter(torch.randn(E, h, d) * h**-0.5)
        # S experts of width h, summed, are one SwiGLU of width S*h: same parameters.
        self.shared = SwiGLU(d, lay.n_shared * h) if lay.n_shared else None
        # A buffer, not a parameter: no gradient reaches it, only the balancing update.
        self.register_buffer("bias", torch.zeros(E))

    def route(self, x: Tensor) -> Routing:
        logits = self.router(x)  # (T, E)
        scores = logits.softmax(dim=-1) if self.score == "softmax" else logits.sigmoid()
        choice = scores + self.bias  # (T, E): the bias SELECTS only
        if self.topk_groups:
            # V3's node-limited routing: rank groups by the sum of their best k/M affinities,
            # keep the top M, and choose the k experts among those groups only.
            per = max(1, self.k // self.topk_groups)
            group_score = torch.stack(
                [
                    choice[:, self.group_of == g]
                    .topk(min(per, int((self.group_of == g).sum())), dim=-1)
                    .values.sum(dim=-1)
                    for g in range(self.groups)
                ],
                dim=-1,
            )  # (T, G)
            keep = group_score.topk(self.topk_groups, dim=-1).indices  # (T, M)
            allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, keep, True)
            choice = choice.masked_fill(~allowed[:, self.group_of], float("-inf"))
        idx = choice.topk(self.k, dim=-1).indices  # (T, k)
        s = scores.gather(1, idx)  # (T, k) the unbiased affinities of the selected experts
        if self.score == "softmax":  # DeepSeekMoE and V2 weight by the softmax values as is
            return Routing(scores, idx, s * self.route_scale)
        gates = s / s.sum(dim=-1, keepdim=True)  # V3: normalised over the selected experts
        return Routing(scores, idx, gates * self.route_scale)

    def forward(self, x: Tensor) -> tuple[Tensor, Routing]:
        r = self.route(x)  # x (T, d)
        T, (E, h) = x.shape[0], self.w_down.shape[:2]
        dense = torch.zeros_like(r.scores).scatter(1, r.idx, r.gates)  # (T, E), k nonzero
        a = x @ self.w_gate.view(-1, E * h)  # (T, E*h): every expert on every token
        b = x @ self.w_up.view(-1, E * h)  # (T, E*h)
        hid = (F.silu(a) * b).view(T, E, h) * dense[:, :, None]  # gating before w_down: same
        y = hid.view(T, E * h) @ self.w_down.view(E * h, -1)  # (T, d)
        if self.shared is not None:
            y = y + self.shared(x)  # always active, no gate
        return y, r

    def routed_params_per_expert(self) -> int:
        return sum(p.numel() for p in (self.w_gate, self.w_up, self.w_down)) // len(self.bias)

    def expert_params(self) -> tuple[int, int]:
        """(activated per token, total) expert parameters, from the tensors held."""
        shared = sum(p.numel() for p in self.shared.parameters()) if self.shared else 0
        per = self.routed_params_per_expert()
        return shared + self.k * per, shared + len(self.bias) * per


class TinyLM(nn.Module):
    def __init__(self, cfg: Config, lay: Layout):
        super().__init__()
        self.emb = nn.Embedding(cfg.vocab, cfg.d_model)
        self.emb_prev = nn.Embedding(cfg.vocab, cfg.d_model)  # a two-token window
        self.norm_in = nn.RMSNorm(cfg.d_model)
        self.moe = MoE(cfg.d_model, lay, cfg.score, cfg.groups, cfg.topk_groups, cfg.route_scale)
        self.norm_out = nn.RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def forward(self, seqs: Tensor) -> tuple[Tensor, Routing]:
        # seqs (B, L+2): predict token t+1 from tokens t-1 and t, for t = 1 .. L.
        x = self.emb(seqs[:, 1:-1]) + self.emb_prev(seqs[:, :-2])  # (B, L, d)
        x = x.flatten(0, 1)  # (T, d), T = B * L
        y, r = self.moe(self.norm_in(x))
        return self.head(self.norm_out(x + y)), r  # (T, V) logits


# ---------------------------------------------------------------- balancing


def loads_of(idx: Tensor, n_experts: int) -> Tensor:
    return torch.bincount(idx.flatten(), minlength=n_experts)  # (E,) tokens routed to each


def aux_loss(r: Routing, group: int) -> Tensor:
    """sum_i f_i P_i per group of `group` tokens, averaged over groups; 1 when balanced.

    f_i = E / (k T) * (tokens choosing i), a count with no gradient; P_i = the mean over
    tokens of s_i / sum_j s_j, through which the gradient reaches the router.
    """
    T, E = r.scores.shape
    k = r.idx.shape[1]
    chosen = torch.zeros_like(r.scores).scatter(1, r.idx, 1.0).view(T // group, group, E)
    f = chosen.sum(dim=1) * E / (k * group)  # (G, E)
    p = (r.scores / r.scores.sum(dim=-1, keepdim=True)).view(T // group, group, E).mean(dim=1)
    return (f * p).sum(dim=-1).mean()


@torch.no_grad()
def update_bias(bias: Tensor, loads: Tensor, gamma: float) -> None:
    """DeepSeek-V3: lower the bias of overloaded experts, raise it for underloaded ones."""
    bias += gamma * torch.sign(loads.float().mean() - loads)


def max_vio(loads: Tensor) -> float:
    """MaxVio (Wang et al., 2024): how far the busiest expert is above the mean load."""
    return (loads.max() / loads.float().mean() - 1).item()


# ---------------------------------------------------------------- one run


def train(cfg: Config, arch: str, mode: str, rate: float, data: Tensor, val: Tensor) -> dict:
    lay = layout(cfg, arch)
    torch.manual_seed(cfg.seed)  # the same init for every balancing mode of an architecture
    model = TinyLM(cfg, lay).to(cfg.device)
    opt = harness.Adam(model.parameters(), lr=cfg.lr)  # torch.optim's import costs ~1.5 s
    group = cfg.seq_len if cfg.aux_scope == "sequence" else cfg.batch * cfg.seq_len
    curve_vio: list[list[float]] = []
    curve_loss: list[list[float]] = []
    window_vio: list[float] = []
    window_loss: list[float] = []
    for step in range(cfg.steps):
        batch = data[step * cfg.batch : (step + 1) * cfg.batch]  # (B, L+2)
        logits, r = model(batch)
        loss = F.cross_entropy(logits, batch[:, 2:].flatten())
        total = loss + rate * aux_loss(r, group) if mode == "aux_loss" else loss
        if mode == "bias" and cfg.seq_alpha:  # V3: a tiny sequence-wise term next to the bias
            total = total + cfg.seq_alpha * aux_loss(r, cfg.seq_len)
        opt.zero_grad()
        total.backward()
        opt.step()
        loads = loads_of(r.idx, lay.n_routed)
        if mode == "bias":
            update_bias(model.moe.bias, loads, rate)
        window_vio.append(max_vio(loads))
        window_loss.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            curve_vio.append([step + 1, sum(window_vio) / len(window_vio)])
            curve_loss.append([step + 1, sum(window_loss) / len(window_loss)])
            window_vio, window_loss = [], []
    return {
        **evaluate(cfg, model, lay, val),
        "train_loss": curve_loss[-1][1],
        "curve_max_vio": curve_vio,
        "curve_loss": curve_loss,
    }


@torch.no_grad()
def evaluate(cfg: Config, model: TinyLM, lay: Layout, val: Tensor) -> dict[str, Any]:
    n, L = val.shape[0], cfg.seq_len
    E, k = lay.n_routed, lay.k_routed
    logits, r = model(val)
    loads = loads_of(r.idx, E)
    per_seq = torch.zeros(n, E, device=val.device)  # (n, E) loads within each sequence
    per_seq.scatter_add_(1, r.idx.view(n, L * k), torch.ones(n, L * k, device=val.device))
    vio_seq = per_seq.max(dim=1).values / (L * k / E) - 1  # (n,)
    # Capacity per batch of cfg.batch sequences, as a training step would see it.
    cap = math.ceil(cfg.capacity_factor * cfg.batch * L * k / E)
    per_batch = torch.stack([c.sum(dim=0) for c in per_seq.split(cfg.batch)])  # (n/B, E)
    dropped = (per_batch - cap).clamp(min=0).sum().item()
    p = loads[loads > 0].double() / loads.sum()
    entropy = -(p * p.log()).sum().item() / math.log(E) if E > 1 else 1.0
    act, tot = model.moe.expert_params()
    all_params = sum(p.numel() for p in model.parameters())
    idle = (E - k) * model.moe.routed_params_per_expert()  # routed experts a token skips
    return {
        "val_loss": F.cross_entropy(logits, val[:, 2:].flatten()).item(),
        "max_vio": max_vio(loads),
        "max_vio_seq": vio_seq.mean().item(),
        "load_entropy": entropy,
        "dead_experts": int((loads == 0).sum().item()),
        "dropped_frac": dropped / (n * L * k),
        "activated_expert_params": act,
        "total_expert_params": tot,
        "router_params": model.moe.router.weight.numel(),
        "activated_params": all_params - idle,
        "total_params": all_params,
        "n_routed": E,
        "k_routed": k,
        "n_shared": lay.n_shared,
        "d_hidden": lay.d_hidden,
        "tokens": n * L,
        "load_sum": int(loads.sum().item()),
        "loads": loads.tolist(),
        "groups": model.moe.groups,
        "topk_groups": model.moe.topk_groups,
        # the most groups any token's experts came from: <= topk_groups when limited
        "max_groups_per_token": int(
            torch.zeros(r.idx.shape[0], model.moe.groups, device=val.device)
            .scatter(1, model.moe.group_of[r.idx], 1.0)
            .sum(dim=1)
            .max()
            .item()
        ),
    }


# ---------------------------------------------------------------- claims


def claim(
    id_: str,
    paper: float,
    measured: float,
    verdict: str | None = None,
    text: str = "",
    arch: str = REF_ARCH,
) -> dict:
    """No verdict: an exact claim, judged by its tolerance."""
    return harness.claim(
        CLAIMS,
        id_,
        paper,
        measured,
        verdict=verdict,
        text=text,
        metric=CLAIMS[id_][1].format(arch=arch),
        reference="baseline" if id_ in MEASURED_BASELINE else "paper",
    )


def of_count(hits: int, n: int) -> str:
    return harness.verdict(hits == n, partial=hits > 0)


def make_claims(cfg: Config, v: dict[str, dict[str, Any]]) -> list[dict]:
    """Every claim the runs made can check; a claim whose runs were left out is skipped."""
    rows = list(v.values())
    act = [r["activated_expert_params"] for r in rows]
    tot = [r["total_expert_params"] for r in rows]
    worst = max(abs(r["load_sum"] - r["tokens"] * r["k_routed"]) for r in rows)
    claims = [
        claim("activated_params_equal", 1.0, max(act) / min(act)),
        claim("total_params_equal", 1.0, max(tot) / min(tot)),
        claim("loads_sum_exact", 0.0, worst),
    ]
    a = ref_arch(cfg)
    gammas = sorted(set(cfg.bias_gamma)) if "bias" in cfg.balance else []
    alphas = sorted(set(cfg.aux_alpha)) if "aux_loss" in cfg.balance else []
    bias = [v[f"{a}/{label('bias', g)}"] for g in gammas if f"{a}/{label('bias', g)}" in v]
    aux = [v[f"{a}/{label('aux_loss', x)}"] for x in alphas if f"{a}/{label('aux_loss', x)}" in v]
    none = v.get(f"{a}/none")

    if none and bias:
        tol = CLAIMS["bias_lowers_maxvio"][3]
        vios = [b["max_vio"] for b in bias]
        hits = sum(x <= (1 - tol) * none["max_vio"] for x in vios)
        text = (
            f"Auxiliary-loss-free balancing (gamma in {gammas}) ends with a MaxVio at least "
            f"{tol:.0%} below no balancing on {a}, in {hits} of {len(vios)} gamma values "
            "(paper_value: the no-balancing run's MaxVio; measured: the worst gamma's; "
            "partial when some gammas are lower)"
        )
        verdict = of_count(hits, len(vios))
        claims.append(claim("bias_lowers_maxvio", none["max_vio"], max(vios), verdict, text, a))

    g_ref = gammas[len(gammas) // 2] if gammas else 0.0  # the middle rate: the sweep's default
    if bias and aux:
        b, strong = bias[len(bias) // 2], aux[-1]
        loss_ok = b["val_loss"] <= strong["val_loss"]
        vio_ok = b["max_vio"] <= strong["max_vio"]
        text = (
            f"Auxiliary-loss-free balancing (gamma {g_ref:g}) against the strongest aux loss "
            f"(alpha {alphas[-1]:g}) on {a}: validation loss no higher "
            f"({b['val_loss']:.4f} vs {strong['val_loss']:.4f}: {'yes' if loss_ok else 'no'}) "
            f"and MaxVio no higher ({b['max_vio']:.3f} vs {strong['max_vio']:.3f}: "
            f"{'yes' if vio_ok else 'no'}); paper_value: the aux-loss run's validation loss; "
            "partial when only one holds"
        )
        verdict = of_count(loss_ok + vio_ok, 2)
        claims.append(
            claim("bias_vs_aux_loss", strong["val_loss"], b["val_loss"], verdict, text, a)
        )

    names = [label(mode, rate) for mode, rate in runs(cfg)]
    deep = "fine_grained_shared"  # this claim is about DeepSeek's layout, whatever else ran
    pairs = [
        (v[f"topk/{n}"], v[f"{deep}/{n}"], n)
        for n in names
        if f"topk/{n}" in v and f"{deep}/{n}" in v
    ]
    if pairs:
        hits = sum(fgs["val_loss"] < top["val_loss"] for top, fgs, _ in pairs)
        top, fgs, shown = next((p for p in pairs if p[2] == label("bias", g_ref)), pairs[0])
        text = (
            "Fine-grained plus shared experts reach a lower validation loss than conventional "
            f"top-k at equal activated parameters in {hits} of {len(pairs)} balancing runs "
            f"(values shown: {shown}; partial when mixed)"
        )
        verdict = of_count(hits, len(pairs))
        claims.append(
            claim("fine_grained_shared_beats_topk", top["val_loss"], fgs["val_loss"], verdict, text)
        )

    if len(aux) >= 2:
        vio = [r["max_vio"] for r in aux]
        loss = [r["val_loss"] for r in aux]
        vio_down = all(x > y for x, y in itertools.pairwise(vio))
        loss_up = all(x < y for x, y in itertools.pairwise(loss))
        text = (
            f"Along alpha {alphas} on {a}, MaxVio falls ({'yes' if vio_down else 'no'}: "
            f"{', '.join(f'{x:.3f}' for x in vio)}) and the validation loss rises "
            f"({'yes' if loss_up else 'no'}: {', '.join(f'{x:.4f}' for x in loss)}); "
            "paper_value/measured: the loss at the smallest/largest alpha; partial when one "
            "of the two holds"
        )
        verdict = of_count(vio_down + loss_up, 2)
        claims.append(claim("aux_alpha_tradeoff", loss[0], loss[-1], verdict, text, a))
    return claims


# ---------------------------------------------------------------- run


def run(cfg: Config) -> dict[str, Any]:
    return harness.run(cfg, config_error(cfg), measure)


def curve(title: str, ylabel: str) -> dict[str, Any]:
    return {"title": title, "xlabel": "step", "ylabel": ylabel, "series": {}}


def measure(cfg: Config, t_start: float) -> dict[str, Any]:
    g = torch.Generator().manual_seed(cfg.seed)  # CPU generator: the same data on any device
    chains = make_chains(cfg, g)
    data = sample(cfg, chains, cfg.steps * cfg.batch, g).to(cfg.device)  # (steps*B, L+2)
    val = sample(cfg, chains, cfg.val_seqs, g)  # (n_val, L+2)
    floor = true_loss(chains, val)
    val = val.to(cfg.device)

    ref = ref_arch(cfg)
    curves = {
        "max_vio": curve(f"MaxVio of training batches, {ref} (window mean)", "MaxVio"),
        "train_loss": curve(f"Training loss, {ref} (window mean)", "cross-entropy (nats)"),
        "train_loss_by_arch": curve(
            f"Training loss by architecture, balancing {label(*runs(cfg)[0])} (window mean)",
            "cross-entropy (nats)",
        ),
    }
    variants: dict[str, dict[str, Any]] = {}
    for arch in cfg.arch:
        for i, (mode, rate) in enumerate(runs(cfg)):
            name = label(mode, rate)
            m = train(cfg, arch, mode, rate, data, val)
            vio, loss = m.pop("curve_max_vio"), m.pop("curve_loss")
            if arch == ref:
                curves["max_vio"]["series"][name] = vio
                curves["train_loss"]["series"][name] = loss
            if i == 0:
                curves["train_loss_by_arch"]["series"][arch] = loss
            variants[f"{arch}/{name}"] = {
                "balance": mode,
                "aux_alpha": rate if mode == "aux_loss" else 0.0,
                "bias_gamma": rate if mode == "bias" else 0.0,
                **m,
            }

    return {
        **harness.header("deepseek_moe", cfg),
        "floor_loss": floor,
        "variants": variants,
        "claims": make_claims(cfg, variants),
        "curves": curves,
        "wall_s": time.perf_counter() - t_start,
    }


# ---------------------------------------------------------------- CLI


def config_error(cfg: Config) -> str | None:
    """One line naming the option and the reason, or None. Runs before any compute."""
    sizes = "n_experts top_k granularity d_model d_expert vocab n_chains steps batch seq_len"
    for name in (*sizes.split(), "val_seqs", "log_every"):
        if getattr(cfg, name) <= 0:
            return f"--{name.replace('_', '-')}: must be positive, got {getattr(cfg, name)}"
    for name in ("n_shared", "threads"):
        if getattr(cfg, name) < 0:
            return f"--{name.replace('_', '-')}: must be >= 0, got {getattr(cfg, name)}"
    for name in ("lr", "capacity_factor"):
        value = getattr(cfg, name)
        if not (value > 0 and math.isfinite(value)):
            return f"--{name.replace('_', '-')}: must be positive, got {value}"
    for name in ("aux_alpha", "bias_gamma"):
        rates = getattr(cfg, name)
        if not rates or any(not (r >= 0 and math.isfinite(r)) for r in rates):
            return f"--{name.replace('_', '-')}: rates must be >= 0, got {list(rates)}"
    if not cfg.arch or set(cfg.arch) - set(ARCHS):
        return f"--arch: choose from {','.join(ARCHS)}, got {','.join(cfg.arch) or 'nothing'}"
    if not cfg.balance or set(cfg.balance) - set(BALANCE):
        return f"--balance: choose from {','.join(BALANCE)}, got {','.join(cfg.balance)}"
    if cfg.groups < 1 or cfg.topk_groups < 0 or cfg.topk_groups > cfg.groups:
        return (
            f"--groups/--topk-groups: need groups >= 1 and 0 <= topk-groups <= groups, got "
            f"{cfg.groups}/{cfg.topk_groups}"
        )
    if not (cfg.route_scale > 0 and math.isfinite(cfg.route_scale)) or not (
        cfg.seq_alpha >= 0 and math.isfinite(cfg.seq_alpha)
    ):
        return f"--route-scale/--seq-alpha: got {cfg.route_scale}/{cfg.seq_alpha}"
    if cfg.top_k > cfg.n_experts:
        return f"--top-k: {cfg.top_k} exceeds --n-experts {cfg.n_experts}"
    if cfg.d_expert % cfg.granularity:
        return f"--granularity: {cfg.granularity} does not divide --d-expert {cfg.d_expert}"
    if "fine_grained_shared" in cfg.arch and cfg.n_shared >= cfg.granularity * cfg.top_k:
        return (
            f"--n-shared: {cfg.n_shared} leaves no routed expert active "
            f"(granularity * top_k = {cfg.granularity * cfg.top_k})"
        )
    if cfg.vocab % cfg.n_chains or cfg.vocab // cfg.n_chains < BRANCH:
        return f"--n-chains: {cfg.n_chains} must divide --vocab {cfg.vocab} into >= {BRANCH}"
    if cfg.score not in SCORES or cfg.aux_scope not in ("sequence", "batch"):
        return f"--score/--aux-scope: unknown {cfg.score!r}/{cfg.aux_scope!r}"
    if cfg.device not in ("cpu", "cuda"):
        return f"--device: unknown {cfg.device!r}"
    if cfg.device == "cuda":
        via = "" if cfg.preset == "none" else f" (preset {cfg.preset})"
        if not torch.cuda.is_available():
            return f"--device: cuda requested{via} but torch.cuda.is_available() is False"
        need, free = estimate_bytes(cfg), torch.cuda.mem_get_info()[0]
        if need > free:
            return f"--device: cuda{via}: estimated {need / 2**30:.1f} GiB exceeds free memory"
    return None


def estimate_bytes(cfg: Config) -> int:
    """Rough peak: the dense expert activations (T, E*h), several of them, dominate."""
    width = cfg.n_experts * cfg.d_expert  # E * h, the same for every architecture
    train = 10 * cfg.batch * cfg.seq_len * (width + cfg.vocab) * 4
    val = 4 * cfg.val_seqs * cfg.seq_len * (width + cfg.vocab) * 4
    data = cfg.steps * cfg.batch * (cfg.seq_len + 2) * 8 + 2 * cfg.vocab**2 * BRANCH * 8
    params = 16 * (3 * cfg.d_model * width + 3 * cfg.vocab * cfg.d_model)  # + AdamW state
    return train + val + data + params


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None]:
    p = harness.Parser(__file__, __doc__)
    add = p.add_argument
    add(
        "--arch",
        type=harness.str_list,
        help=f"comma list of architectures (default {','.join(ARCHS)})",
    )
    add(
        "--balance",
        type=harness.str_list,
        help=f"comma list of balancing modes (default {','.join(BALANCE)})",
    )
    add("--n-experts", type=int, help="N conventional experts; fine-grained: m*N (default 8)")
    add("--top-k", type=int, help="K experts per token, <= N; fine-grained: m*K (default 2)")
    add("--granularity", type=int, help="m: each expert split in m; divides d_expert (default 4)")
    add(
        "--n-shared",
        type=int,
        help="S always-active experts in fine_grained_shared, taken out of the m*N experts "
        "and out of the m*K active ones, so that parameters stay equal (default 1)",
    )
    add("--d-model", type=int, help="model width (default 16)")
    add("--d-expert", type=int, help="hidden width of a conventional expert (default 32)")
    add("--vocab", type=int, help="tokens in the synthetic stream (default 32)")
    add("--n-chains", type=int, help="Markov chains, Zipf frequencies; divides vocab (default 4)")
    add("--steps", type=int, help="training steps per run (default 100)")
    add("--batch", type=int, help="sequences per step (default 16)")
    add("--seq-len", type=int, help="predicted tokens per sequence (default 32)")
    add("--val-seqs", type=int, help="held-out sequences for the metrics (default 256)")
    add("--lr", type=float, help="Adam learning rate, constant (default 0.01)")
    add(
        "--score",
        choices=SCORES,
        help="affinity: sigmoid with gates normalised over the selected experts (DeepSeek-V3) "
        "or softmax used as is (DeepSeekMoE, V2) (default sigmoid)",
    )
    add(
        "--aux-alpha",
        type=harness.float_list,
        help="aux-loss weight(s) alpha, comma list, >= 0 (default 0.01; --sweep: 0.001,0.01,0.1)",
    )
    add(
        "--aux-scope",
        choices=["sequence", "batch"],
        help="where the aux loss counts f_i and P_i: each sequence (DeepSeekMoE, V3) or the "
        "whole batch (default sequence)",
    )
    add(
        "--bias-gamma",
        type=harness.float_list,
        help="bias update rate(s) gamma, comma list, >= 0 "
        "(default 0.001, DeepSeek-V3's; --sweep: 0.0001,0.001,0.01)",
    )
    add(
        "--sweep",
        action="store_true",
        default=None,
        help="run the alpha and gamma sweeps; an explicit --aux-alpha or --bias-gamma wins",
    )
    add(
        "--capacity-factor",
        type=float,
        help="an expert takes at most ceil(cf * tokens * k / E) tokens of a batch; the "
        "overflow is counted as dropped, not dropped (default 1.25)",
    )
    add("--log-every", type=int, help="training steps per point on the curves (default 10)")
    add("--groups", type=int, help="routed experts split into G groups, V3's nodes (default 1)")
    add(
        "--topk-groups",
        type=int,
        help="M: each token's experts come from at most M groups, chosen by the sum of "
        "their best k/M affinities (DeepSeek-V3's node-limited routing; default 0: no limit)",
    )
    add("--route-scale", type=float, help="routed-gate scaling factor (default 1.0)")
    add(
        "--seq-alpha",
        type=float,
        help="weight of DeepSeek-V3's sequence-wise balance loss in the bias runs "
        "(V3: 0.0001; default 0: the bias alone)",
    )
    p.add_common(
        PRESETS,
        preset="none; 4070 = 12 GB GPU: N 16, K 2, m 4, S 1 (DeepSeekMoE 2B's expert layout), "
        "d_model 256, d_expert 512, vocab 512 in 8 chains, 1000 steps of 32 x 128 tokens, "
        "sweeps on, cuda. Explicit flags override a preset",
        seed="the data and the weights",
    )
    values, out = p.values(argv)
    if values.get("sweep"):
        values.setdefault("aux_alpha", ALPHA_SWEEP)
        values.setdefault("bias_gamma", GAMMA_SWEEP)
    return harness.make_config(Config, values), out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    harness.preflight(__file__, config_error(cfg), out)
    metrics = run(cfg)
    print(
        f"{'variant':36} {'val loss':>8} {'MaxVio':>7} {'per seq':>7} {'entropy':>7} {'drop%':>6}"
    )
    for name, m in metrics["variants"].items():
        print(
            f"{name:36} {m['val_loss']:8.4f} {m['max_vio']:7.3f} {m['max_vio_seq']:7.3f} "
            f"{m['load_entropy']:7.3f} {100 * m['dropped_frac']:6.2f}"
        )
    print(f"floor (the chains' own cross-entropy): {metrics['floor_loss']:.4f}")
    harness.report(metrics, out)


if __name__ == "__main__":
    main()
