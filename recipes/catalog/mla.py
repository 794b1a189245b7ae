"""Multi-head Latent Attention (DeepSeek-V2): catalog entry and CPU scaling."""

from __future__ import annotations

from recipes.catalog import (
    SET,
    Args,
    ClaimSpec,
    GridFigure,
    HyperparameterSpec,
    Recipe,
    Row,
    Scaled,
    Signature,
    Stated,
)

# DeepSeek-V2's values, used only when a paper does not state its own.
DEFAULTS: dict[str, float] = {
    "n_heads": 128,
    "d_head": 128,
    "d_c": 512,
    "d_rope": 64,
    "n_layers": 60,
}
_SMALL_D_HEAD = (8, 16, 32)  # tried in order: the smallest that keeps the ratios exact
_MAX_HEADS = 128
_LAYERS = 2


def scale(stated: Stated) -> Scaled:
    """Shrink d_h; keep d_c/d_h, d_h^R/d_h and n_h, on which the cache claims depend."""
    paper: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, default in DEFAULTS.items():
        paper[name], source[name] = stated.get(name, (default, "not stated; DeepSeek-V2 value"))
    ratio_c = paper["d_c"] / paper["d_head"]
    ratio_r = paper["d_rope"] / paper["d_head"]
    d_head = next(
        (
            d
            for d in _SMALL_D_HEAD
            if (ratio_c * d).is_integer() and (ratio_r * d).is_integer() and (ratio_r * d) % 2 == 0
        ),
        _SMALL_D_HEAD[-1],
    )
    n_heads = int(min(paper["n_heads"], _MAX_HEADS))
    args: Args = {
        "n_heads": n_heads,
        "d_head": d_head,
        "d_c": max(1, round(ratio_c * d_head)),
        "d_rope": max(2, 2 * round(ratio_r * d_head / 2)),
        "n_layers": _LAYERS,
        "gqa_groups": next(g for g in (8, 4, 2, 1) if n_heads % g == 0),
        "batch": 1,
        "prompt_len": 64,
        "steps": 32,
        "repeats": 3,
        "dtype": "float32",
        "device": "cpu",
        "seed": 0,
    }
    descriptions = {
        "n_heads": "attention heads n_h (kept: the MLA/MHA ratio depends on it)",
        "d_head": "per-head dimension d_h (shrunk)",
        "d_c": "KV compression dimension d_c (d_c/d_h kept)",
        "d_rope": "decoupled RoPE key dimension d_h^R (d_h^R/d_h kept)",
        "n_layers": "layers l (per-layer cache is identical; totals scale with l)",
    }
    rows = [
        Row(name, text, paper[name], float(args[name]), source[name])
        for name, text in descriptions.items()
    ]
    return Scaled(
        args,
        rows,
        carries_over=[
            "cache elements per token, per layer, from the tensors held in a decode loop",
            "the MLA/MHA cache ratio and the GQA-group equivalence (the ratios are kept)",
            "equality of the absorbed and naive inference forms",
        ],
        does_not_carry_over=[
            "absolute latency and throughput: CPU, tiny d_h, no fused kernels",
            "model quality: the layers are random, nothing is trained",
        ],
    )


RECIPE = Recipe(
    key="mla",
    title="Multi-head Latent Attention",
    script="mla.py",
    scale=scale,
    shrink=("prompt_len", "steps"),
    table=(
        ("cache_elems_per_token", "cache elements / token"),
        ("cache_bytes_per_token", "cache bytes / token"),
        ("decode_ms_median", "decode step, median ms"),
        ("decode_ms_iqr", "IQR, ms"),
        ("decode_ms_std", "std, ms"),
        ("attn_flops_per_step", "attention FLOPs / step"),
    ),
    grid_figure=GridFigure(
        x="seq_len",
        y="decode_ms_median",
        xlabel="context length (tokens)",
        ylabel="median ms per decode step",
        title="Decode step latency vs context length (CPU, small scale, mean of seed medians)",
    ),
    profile={
        f"grid-seed{seed}": {"seq_lens": "64,256,512", "repeats": 5, "steps": 8, "seed": seed}
        for seed in (0, 1)
    },
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
            (r"number of attention heads(?: n_h)?" + SET,),
        ),
        HyperparameterSpec(
            "d_head",
            "per-head dimension d_h",
            (r"(?<!decoupled queries and key )per-head dimension d_h" + SET,),
        ),
        HyperparameterSpec(
            "d_c",
            "KV compression dimension d_c",
            (r"kv compression dimension(?: d_c)?" + SET,),
        ),
        HyperparameterSpec(
            "d_rope",
            "per-head dimension of the decoupled queries and key d_h^R",
            (
                r"decoupled queries and key,? (?:we set )?the per-head dimension(?: d_h\^r)?" + SET,
                r"per-head dimension of the decoupled queries and key(?: d_h\^r)?" + SET,
            ),
        ),
        HyperparameterSpec(
            "n_layers",
            "number of layers l",
            (
                r"number of (?:transformer )?layers" + SET,
                r"model has (\d+) layers",
            ),
        ),
        HyperparameterSpec(
            "d_model",
            "hidden dimension",
            (r"hidden dimension" + SET,),
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
            "arithmetic over two configurations, not a measurement: (d_c + d_h^R) l elements "
            "at the cache's precision (DeepSeek-V2 quantizes it to about 6 bits) against "
            "DeepSeek 67B's 2 n_kv d_h l at 16 bits; DeepSeek 67B's layers l, KV heads n_kv and "
            "head dimension d_h are not stated in this paper (they are in the DeepSeek LLM "
            "paper), so the ratio cannot be computed from it",
        ),
        (
            r"5\.76 times|throughput",
            "generation throughput depends on the serving system, kernels and hardware at "
            "full scale",
        ),
    ),
    claims=(
        ClaimSpec(
            "mla_cache_formula",
            "MLA caches (d_c + d_h^R) l elements per token",
            r"\(d_c\s*\+\s*d_h\^r\)\s*l",
            "implementation",
        ),
        ClaimSpec(
            "mla_gqa_equivalent_groups",
            "MLA's KV cache equals GQA with 2.25 groups at d_c = 4 d_h, d_h^R = d_h / 2",
            r"2\.25 groups",
        ),
        ClaimSpec(
            "mla_vs_mha_cache_ratio",
            "MLA caches (d_c + d_h^R) / (2 n_h d_h) of what MHA caches",
            r"of the mha cache|(?:smaller|less) kv cache than mha",
        ),
        ClaimSpec(
            "mla_absorbed_equals_naive",
            "W^UK absorbed into the query and W^UV into the output change no output",
            r"absorbed into",
            "implementation",
        ),
    ),
    typical_s=2.0,
)
