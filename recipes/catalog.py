"""The recipe catalog: what offline mode knows about each mechanism.

Pure data, no imports from the project and no torch: the Reader matches papers
against `signatures` and `hyperparameters`, the Reproducer scales the recipe,
the Writer and the Finance-Critic take gotchas and finance angles from here.

A mechanism may be known (the Reader names it) before it has a recipe
(`script is None`): the Reproducer then says so instead of guessing.

Patterns run on normalised text: NFKC, lower case, whitespace collapsed, and
LaTeX-ish symbol spellings folded (see `tools.digest.normalise`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Signature:
    """A phrase (regex) whose presence is evidence for a mechanism."""

    pattern: str
    weight: float


@dataclass(frozen=True)
class HyperparameterSpec:
    """How a paper states one hyperparameter. Each pattern has one group: the value."""

    name: str
    description: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    """One mechanism the catalog knows."""

    key: str
    title: str
    script: str | None  # file under recipes/, None while no recipe exists
    summary: str
    signatures: tuple[Signature, ...]
    hyperparameters: tuple[HyperparameterSpec, ...] = ()
    gotchas: tuple[str, ...] = ()
    finance_angle: str = ""
    min_score: float = 3.0  # below this a match is noise (a citation, a related-work line)
    not_checkable: tuple[tuple[str, str], ...] = field(default=())  # (claim pattern, why)


# "is set to 128", "to 128", "= 128", "of 128": the ways papers bind a value.
_SET = r"\s*(?:is set to|are set to|is|to|=|of)\s*(\d+(?:\.\d+)?)"

MLA = Recipe(
    key="mla",
    title="Multi-head Latent Attention",
    script="mla.py",
    summary=(
        "Keys and values are compressed jointly into a latent c_kv of dimension d_c; only "
        "c_kv and a small decoupled RoPE key (d_h^R) are cached per token and layer, and "
        "per-head keys and values are recovered by up-projections (absorbable into the "
        "query and output projections at inference)."
    ),
    signatures=(
        Signature(r"multi-head latent attention", 3.0),
        Signature(r"\bmla\b", 1.0),
        Signature(r"low-rank (?:key-value|kv) joint compression", 2.0),
        Signature(r"kv compression dimension", 2.0),
        Signature(r"decoupled rope|decoupled rotary", 1.5),
        Signature(r"compressed latent|latent vector", 0.5),
    ),
    hyperparameters=(
        HyperparameterSpec(
            "n_heads",
            "number of attention heads n_h",
            (r"number of attention heads(?: n_h)?" + _SET,),
        ),
        HyperparameterSpec(
            "d_head",
            "per-head dimension d_h",
            (r"(?<!decoupled queries and key )per-head dimension d_h" + _SET,),
        ),
        HyperparameterSpec(
            "d_c",
            "KV compression dimension d_c",
            (r"kv compression dimension(?: d_c)?" + _SET,),
        ),
        HyperparameterSpec(
            "d_rope",
            "per-head dimension of the decoupled queries and key d_h^R",
            (
                r"decoupled queries and key,? (?:we set )?the per-head dimension(?: d_h\^r)?"
                + _SET,
                r"per-head dimension of the decoupled queries and key(?: d_h\^r)?" + _SET,
            ),
        ),
        HyperparameterSpec(
            "n_layers",
            "number of layers l",
            (
                r"number of (?:transformer )?layers" + _SET,
                r"model has (\d+) layers",
            ),
        ),
        HyperparameterSpec(
            "d_model",
            "hidden dimension",
            (r"hidden dimension" + _SET,),
        ),
    ),
    gotchas=(
        "Decoupled RoPE is not optional: RoPE applied to keys recovered from the latent "
        "would block absorbing W^UK into the query, so position lives in a separate shared "
        "key of dimension d_h^R that must be cached too.",
        "The naive form re-materialises every head's keys and values from the cache at "
        "each decode step; the memory saving only becomes a speed saving with the absorbed "
        "form (W^UK folded into the query, W^UV into the output projection).",
        "The cache ratio carries over to any scale that keeps d_c/d_h, d_h^R/d_h and n_h; "
        "the throughput claim does not: it depends on batch size, kernels and the serving "
        "system.",
        "A cache measured in elements hides the dtype: bytes per token double from bf16 to "
        "fp32, and FP8 caches halve them again.",
    ),
    finance_angle=(
        "KV-cache bytes per token decide how many concurrent sessions one GPU serves: a "
        "smaller cache is more users per card, which is a cost per query a bank can put in "
        "a capacity plan. The measured ratio is architecture arithmetic and carries over; "
        "throughput and latency figures do not, and should be re-measured on the bank's own "
        "serving stack before they enter a business case."
    ),
    not_checkable=(
        (
            r"93\.3%",
            "compares DeepSeek-V2 with DeepSeek 67B, a different model; a small-scale run "
            "cannot rebuild that comparison",
        ),
        (
            r"5\.76 times|throughput",
            "generation throughput depends on the serving system, kernels and hardware at "
            "full scale",
        ),
    ),
)

DEEPSEEK_MOE = Recipe(
    key="deepseek_moe",
    title="DeepSeekMoE (fine-grained and shared experts)",
    script=None,
    summary="Fine-grained expert segmentation with always-active shared experts.",
    signatures=(
        Signature(r"deepseekmoe", 3.0),
        Signature(r"shared experts?", 1.5),
        Signature(r"fine-grained experts?|fine-grained expert segmentation", 2.0),
        Signature(r"routed experts?", 1.0),
        Signature(r"auxiliary-loss-free", 2.0),
    ),
)

GRPO = Recipe(
    key="grpo",
    title="Group Relative Policy Optimization",
    script=None,
    summary="PPO without a critic: advantages are rewards normalised within a group.",
    signatures=(
        Signature(r"group relative policy optimi[sz]ation", 3.0),
        Signature(r"\bgrpo\b", 2.0),
    ),
)

MTP = Recipe(
    key="mtp",
    title="Multi-Token Prediction",
    script=None,
    summary="Sequential modules predict further future tokens as an extra training signal.",
    signatures=(
        Signature(r"multi-token prediction", 3.0),
        Signature(r"\bmtp\b", 1.5),
    ),
)

FP8 = Recipe(
    key="fp8_blockwise",
    title="Fine-grained FP8 quantization",
    script=None,
    summary="Tile- and block-wise scaling for FP8 training.",
    signatures=(
        Signature(r"\bfp8\b", 1.5),
        Signature(r"fine-grained quantization", 2.0),
        Signature(r"tile-wise|block-wise", 1.0),
    ),
)

CATALOG: dict[str, Recipe] = {r.key: r for r in (MLA, DEEPSEEK_MOE, GRPO, MTP, FP8)}
