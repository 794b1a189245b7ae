"""DeepSeekMoE (fine-grained and shared experts) and its load balancing: catalog entry."""

from __future__ import annotations

from recipes.catalog import (
    SET,
    Args,
    ClaimSpec,
    HyperparameterSpec,
    Recipe,
    Row,
    Scaled,
    Signature,
    Stated,
)

# DeepSeek-V2's values (arXiv:2405.04434), used only when a paper does not state its own.
# Granularity is DeepSeekMoE's (experts 0.25 times a standard FFN); gamma is DeepSeek-V3's.
DEFAULTS: dict[str, float] = {
    "n_routed": 160,
    "n_shared": 2,
    "n_activated": 6,  # routed experts per token, shared ones not counted
    "d_expert_hidden": 1536,
    "d_model": 5120,
    "granularity": 4,
    "aux_alpha": 0.003,
    "bias_gamma": 0.001,
}
_K = 2  # conventional top-k of the baseline: DeepSeekMoE compares against GShard's top-2
_MAX_FINE = 32  # fine-grained experts at most: the recipe's CPU default, 9 runs in ~4 s
_WIDTH = 256  # total expert width N * d_expert, the CPU default's
_D_MODEL = 16
_MAX_M = 8  # finer than 8 leaves fine-grained experts a few units wide at this width
_GROUPS = 4  # expert groups when the paper limits the nodes a token reaches
_ALPHA_RANGE = (0.001, 0.1)  # where an aux loss does something in 100 steps, and no harm
_GAMMA_MAX = 0.01  # beyond it the sign update overshoots at this scale
_NUM = r"(\d+(?:\.\d+)?)"
_ALPHA = r"(?: ?(?:α|alpha)_?1?)?"


def _granularity(stated: Stated) -> tuple[float, int, str]:
    """(the paper's m, ours, source): a stated granularity, or 1 / a stated expert size."""
    if "granularity" in stated:
        m, src = stated["granularity"]
    elif "expert_fraction" in stated and stated["expert_fraction"][0] > 0:
        frac, where = stated["expert_fraction"]
        m, src = 1 / frac, f"1 / expert size as a fraction of an FFN ({where})"
    else:
        m, src = DEFAULTS["granularity"], "not stated; DeepSeekMoE's 0.25-size experts"
    return m, int(min(_MAX_M, max(1, round(m)))), src


def scale(stated: Stated) -> Scaled:
    """Keep the granularity and the shared share of the active experts; cap the expert count.

    The paper's fine-grained layout (R routed + S shared experts, k routed active) becomes
    ours as m*N experts with m*K active, K = 2, S' shared: S'/(m*K) keeps S/(k+S). The total
    count is capped at 32 fine-grained experts for the CPU, so the activated share of all
    experts is not kept (a row says so); the claims checked do not depend on it.
    """
    paper: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, default in DEFAULTS.items():
        paper[name], source[name] = stated.get(name, (default, "not stated; DeepSeek-V2 value"))
    paper["granularity"], m, source["granularity"] = _granularity(stated)
    if "bias_gamma" not in stated:
        source["bias_gamma"] = "not stated; DeepSeek-V3 value"

    R, S, k = (max(0, round(paper[n])) for n in ("n_routed", "n_shared", "n_activated"))
    k = max(1, min(k, R)) if R else 1
    total, active = R + S, k + S  # fine-grained experts, all and per token, in the paper
    n_experts = max(_K, min(round(_K * total / active), _MAX_FINE // m))
    share = S / active
    n_shared = min(m * _K - 1, max(1 if S else 0, round(m * _K * share)))
    d_expert = max(m, (_WIDTH // n_experts) // m * m)

    alpha, alpha_note = paper["aux_alpha"], "kept"
    if not _ALPHA_RANGE[0] <= alpha <= _ALPHA_RANGE[1]:
        alpha, alpha_note = 0.01, "outside 0.001..0.1, where 100 steps feel it: 0.01"
    # DeepSeek-V3's node-limited routing: experts on G nodes, a token's on at most M. Ours
    # groups the routed experts in _GROUPS and keeps M/G; applied only when both are stated.
    groups, topk_groups, group_note = 1, 0, "not applied: the paper states no node limit"
    if "max_nodes" in stated and "n_nodes" in stated:
        M, G = stated["max_nodes"][0], stated["n_nodes"][0]
        if 0 < M < G:
            groups, topk_groups = _GROUPS, max(1, round(_GROUPS * M / G))
            group_note = "M/G kept" if topk_groups / groups == M / G else "M/G rounded"
    seq_alpha = stated["seq_alpha"][0] if "seq_alpha" in stated else 0.0
    gamma, gamma_note = paper["bias_gamma"], "kept"
    if not 0 < gamma <= _GAMMA_MAX:
        gamma, gamma_note = 0.001, "outside (0, 0.01]: DeepSeek-V3's 0.001"

    args: Args = {
        "n_experts": n_experts,
        "top_k": _K,
        "granularity": m,
        "n_shared": n_shared,
        "d_model": _D_MODEL,
        "d_expert": d_expert,
        "aux_alpha": alpha,
        "bias_gamma": gamma,
        "groups": groups,
        "topk_groups": topk_groups,
        "seq_alpha": seq_alpha,
        "steps": 100,
        "batch": 16,
        "seq_len": 32,
        "device": "cpu",
        "seed": 0,
    }
    fine, fine_active = m * n_experts, m * _K
    m_note = "kept" if m == paper["granularity"] else f"rounded, at most {_MAX_M}"
    counts_src = f"{source['n_routed']}; {source['n_shared']}; {source['n_activated']}"
    capped = "" if fine >= total else f", capped at {_MAX_FINE} for the CPU"
    exact = n_shared / fine_active == share
    share_note = "kept" if exact else f"the nearest in m*K = {fine_active}"
    active_note = "kept" if fine_active / fine == active / total else "not kept: fewer experts"
    rows = [
        Row("granularity", f"granularity m: an expert split in m ({m_note})",
            paper["granularity"], m, source["granularity"]),
        Row("n_experts", f"fine-grained experts m*N, shared included{capped}",
            total, fine, f"{source['n_routed']}; {source['n_shared']}"),
        Row("n_activated", "experts active per token m*K, shared included (K = 2, GShard's)",
            active, fine_active, f"{source['n_activated']}; {source['n_shared']}"),
        Row("n_shared", f"shared experts S ({share_note})", S, n_shared, source["n_shared"]),
        Row("shared_share", f"shared experts / active experts ({share_note})", share,
            n_shared / fine_active, counts_src),
        Row("active_share", f"active / all fine-grained experts ({active_note})",
            active / total, fine_active / fine, counts_src),
        Row("d_expert_hidden", "width of one fine-grained expert (shrunk)",
            paper["d_expert_hidden"], d_expert // m, source["d_expert_hidden"]),
        Row("d_model", "hidden dimension (shrunk)", paper["d_model"], _D_MODEL,
            source["d_model"]),
        Row("aux_alpha", f"aux-loss weight alpha ({alpha_note})", paper["aux_alpha"], alpha,
            source["aux_alpha"]),
        Row("bias_gamma", f"bias update speed gamma ({gamma_note})", paper["bias_gamma"],
            gamma, source["bias_gamma"]),
    ]  # fmt: skip
    if "max_nodes" in stated or "n_nodes" in stated:
        rows.append(
            Row(
                "topk_groups",
                f"node-limited routing: groups a token may reach ({group_note})",
                stated.get("max_nodes", (None, ""))[0],
                topk_groups,
                "; ".join(stated[n][1] for n in ("max_nodes", "n_nodes") if n in stated),
            )
        )
        rows.append(
            Row(
                "groups",
                "expert groups (the paper's nodes)",
                stated.get("n_nodes", (None, ""))[0],
                groups,
                stated["n_nodes"][1] if "n_nodes" in stated else "not stated",
            )
        )
    if "seq_alpha" in stated:
        rows.append(
            Row(
                "seq_alpha",
                "sequence-wise balance loss weight next to the bias (kept)",
                stated["seq_alpha"][0],
                seq_alpha,
                stated["seq_alpha"][1],
            )
        )
    return Scaled(
        args,
        rows,
        carries_over=[
            "equal activated and total expert parameters across the three architectures "
            "(counted from the modules)",
            "the mechanics of each balancing mode: loads, MaxVio, capacity overflow, and that "
            "the bias moves selection but not the gate weights",
            "the direction of MaxVio between no balancing, an aux loss and the bias update, on "
            "this task and scale",
        ],
        does_not_carry_over=[
            "model quality: a one-block model on synthetic Markov chains, 100 steps",
            "MaxVio magnitudes: they grow with the number of experts and shrink with the batch",
            "the activated share of all experts, capped here at the CPU's 32 experts",
            "expert-parallel effects: all-to-all traffic and stragglers (node-limited routing "
            "is modelled as expert groups a token may reach, not as devices)",
        ],
    )


RECIPE = Recipe(
    key="deepseek_moe",
    title="DeepSeekMoE (fine-grained and shared experts) and its load balancing",
    script="deepseek_moe.py",
    scale=scale,
    shrink=("steps", "val_seqs"),
    summary=(
        "Each conventional FFN expert is split into m narrower ones and m times as many are "
        "activated (fine-grained segmentation), so activated and total parameters stay the "
        "same while the combinations of experts multiply; a few experts are always active "
        "(shared experts) to hold common knowledge. The routed experts' load is balanced by "
        "an auxiliary loss alpha * sum f_i P_i (DeepSeekMoE, V2) or, in DeepSeek-V3, by a "
        "per-expert bias added to the affinities for top-k selection only and moved by gamma "
        "against each expert's load after every step (auxiliary-loss-free)."
    ),
    signatures=(
        Signature(r"deepseekmoe", 3.0),
        Signature(r"shared experts?|shared expert isolation", 1.5),
        Signature(r"fine-grained experts?|fine-grained expert segmentation", 2.0),
        Signature(r"routed experts?", 1.0),
        Signature(r"auxiliary-loss-free|loss-free load balancing", 2.0),
        Signature(r"bias update speed|bias term for each expert", 1.5),
        Signature(r"expert-level balance|balance factor|load balance", 1.0),
        Signature(r"routing collapse", 1.0),
        Signature(r"mixture-of-experts|\bmoe\b", 0.5),
    ),
    hyperparameters=(
        HyperparameterSpec(
            "max_nodes",
            "nodes a token's routed experts may sit on (node-limited routing, M)",
            (
                r"(?:sent|dispatched) to at most (\d+) nodes",
                r"node-limited routing,.{0,40}at most (\d+) nodes",
            ),
        ),
        HyperparameterSpec(
            "n_nodes",
            "nodes the routed experts of a layer are deployed on",
            (
                r"gpus belonging to (\d+) nodes",
                r"expert parallelism \(ep\).{0,40}spanning (\d+) nodes",
            ),
        ),
        HyperparameterSpec(
            "seq_alpha",
            "weight of the sequence-wise balance loss kept next to the bias",
            (r"for the (?:sequence-wise )?balance loss,? we set (?:α|alpha)" + SET,),
        ),
        HyperparameterSpec(
            "n_routed",
            "routed experts per MoE layer",
            (r"(\d+) routed experts", r"number of routed experts" + SET),
        ),
        HyperparameterSpec(
            "n_shared",
            "shared experts per MoE layer",
            (r"(\d+) shared experts?", r"number of shared experts" + SET),
        ),
        HyperparameterSpec(
            "n_activated",
            "routed experts activated per token",
            (
                r"(\d+) (?:experts )?(?:will be|are|is) activated",
                r"(\d+) (?:routed )?experts (?:will be|are) activated",
                r"(\d+) out of \d+ routed experts",
                r"number of activated (?:routed )?experts" + SET,
            ),
        ),
        HyperparameterSpec(
            "d_expert_hidden",
            "intermediate hidden dimension of each expert",
            (
                r"intermediate hidden dimension of each expert" + SET,
                r"expert (?:intermediate|hidden) dimension" + SET,
            ),
        ),
        HyperparameterSpec(
            "d_model",
            "hidden dimension",
            (r"(?<!intermediate )(?<!expert )hidden dimension" + SET,),
        ),
        HyperparameterSpec(
            "granularity",
            "expert segmentation granularity m",
            (
                r"granularity(?: m)?" + SET,
                r"(?:segment|split)s? each (?:expert|ffn) into (\d+)",
            ),
        ),
        HyperparameterSpec(
            "expert_fraction",
            "size of one expert as a fraction of a standard FFN",
            (r"each expert is " + _NUM + r" times the size of a standard ffn",),
        ),
        HyperparameterSpec(
            "aux_alpha",
            "expert-level balance factor alpha (aux-loss weight)",
            (
                r"expert-level balance factor" + _ALPHA + SET,
                r"balance loss,? we set (?:α|alpha)" + SET,
                r"\bα_?1" + SET,
            ),
        ),
        HyperparameterSpec(
            "bias_gamma",
            "bias update speed gamma (auxiliary-loss-free balancing)",
            (r"bias update speed(?: γ| gamma)?" + SET,),
        ),
    ),
    table=(
        ("val_loss", "val loss (nats)"),
        ("max_vio", "MaxVio"),
        ("max_vio_seq", "MaxVio per sequence"),
        ("dropped_frac", "over capacity 1.25"),
        ("activated_expert_params", "activated expert params"),
    ),
    gotchas=(
        "The bias of auxiliary-loss-free balancing enters the top-k selection only: the gate "
        "weights still come from the raw affinities. Adding it to the gates too turns it "
        "into a learned-looking term that shifts every expert's output scale.",
        "The aux-loss weight trades balance for quality: large enough to balance, it pulls "
        "the router away from what the task needs; DeepSeek-V3 keeps only a tiny "
        "sequence-wise term (alpha 0.0001) next to the bias for that reason.",
        "Balance over a batch is not balance within a sequence: the bias update evens out "
        "batch loads, while a single sequence can still pile onto a few experts (MaxVio per "
        "sequence stays high). Sequence-wise aux losses target the latter.",
        "Without balancing the router can collapse onto a few experts; they then train "
        "faster and are chosen more. In a short run this shows as a high MaxVio rather than "
        "as dead experts.",
        "Under a capacity factor an overloaded expert drops tokens (they skip the layer); "
        "DeepSeek-V2 drops at training time only, V3 drops none. Imbalance then costs "
        "quality, not just time.",
        "Gamma must fit the scale of the affinities: 0.001 is gentle against sigmoid scores "
        "near 0.5 but overshoots softmax scores near 1/E, and it needs many steps to move the "
        "bias far enough when there are many experts.",
        "With sigmoid affinities normalised over the selected experts, top-1 routing makes "
        "every gate exactly 1: the router then learns only from the balancing, never from "
        "the task.",
    ),
    finance_angle=(
        "Serving cost per token follows activated parameters, memory follows total "
        "parameters: an MoE buys a large model's knowledge at a small model's compute, but "
        "every expert still has to sit in GPU memory, so the bill is set by the total. Load "
        "imbalance is a capacity-planning risk: the busiest expert sets the step time of an "
        "expert-parallel deployment, so MaxVio is tail latency, and dropped tokens are "
        "silently degraded answers. A bank sizing an MoE deployment should ask for the "
        "imbalance measured on its own traffic, not on the vendor's benchmark mix."
    ),
    not_checkable=(
        (
            r"(?i)comparable performance|comparable with",
            "comparisons with other full-size models need those models and their training "
            "data; a one-block run on synthetic chains cannot rebuild them",
        ),
        (
            r"(?i)\b40%|of the computations",
            "compute at equal quality, measured against a dense model at full scale; the small "
            "run fixes the compute and compares layouts instead",
        ),
        (
            r"(?i)42\.5%|training costs?|gpu hours",
            "training cost at full scale depends on the cluster, the parallelism and the "
            "kernels, none of which a CPU run has",
        ),
    ),
    claims=(
        ClaimSpec(
            "activated_params_equal",
            "the compared architectures activate the same expert parameters per token",
            None,
            "implementation",
        ),
        ClaimSpec(
            "total_params_equal",
            "fine-grained segmentation and shared experts keep the total expert parameters",
            None,
            "implementation",
        ),
        ClaimSpec(
            "loads_sum_exact",
            "routed expert loads sum to tokens x routed top-k",
            None,
            "implementation",
        ),
        ClaimSpec(
            "bias_lowers_maxvio",
            "auxiliary-loss-free balancing ends with a lower MaxVio than no balancing",
            r"auxiliary-loss-free.{0,120}(?:balance|maxvio)",
        ),
        ClaimSpec(
            "bias_vs_aux_loss",
            "auxiliary-loss-free balancing balances as well as an aux loss without its cost",
            r"auxiliary-loss-free.{0,160}(?:better|outperform|performance)",
        ),
        ClaimSpec(
            "fine_grained_shared_beats_topk",
            "fine-grained plus shared experts beat conventional top-k at equal activated "
            "parameters",
            r"fine-grained experts?.{0,160}(?:shared experts?|specializ)",
        ),
        ClaimSpec(
            "aux_alpha_tradeoff",
            "a larger aux-loss weight lowers MaxVio and raises the loss",
            r"(?:too large|large) auxiliary loss.{0,80}(?:impair|hurt|degrad)",
        ),
    ),
    typical_s=4.7,
)
