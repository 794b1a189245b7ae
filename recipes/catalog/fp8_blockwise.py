"""Fine-grained FP8 quantization (DeepSeek-V3 §3.3): catalog entry and CPU scaling."""

from __future__ import annotations

import math

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

# DeepSeek-V3's values, used only when a paper does not state its own.
DEFAULTS: dict[str, float] = {
    "tile": 128,  # activations: one scale per 1 x tile
    "block": 128,  # weights: one scale per block x block
    "fp8_exponent_bits": 4,  # E4M3 on all tensors
    "promotion_interval": 128,  # N_C: elements accumulated before promotion to FP32
}
_FORMATS = {4: "e4m3", 5: "e5m2"}
_TOKENS, _MIN_K, _MIN_N = 256, 1024, 512
_TIMES = r"\s*[x×*]\s*"  # 1x128, 1 × 128, 1*128


def scale(stated: Stated) -> Scaled:
    """Keep the tile, the block and the format; size the matrices to hold whole tiles."""
    paper: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, default in DEFAULTS.items():
        paper[name], source[name] = stated.get(name, (default, "not stated; DeepSeek-V3 value"))
    tile, block = max(1, int(paper["tile"])), max(1, int(paper["block"]))
    k_unit = math.lcm(tile, block)
    in_features = k_unit * math.ceil(_MIN_K / k_unit)  # both divide K
    out_features = block * math.ceil(_MIN_N / block)  # the block divides N
    bits = int(paper["fp8_exponent_bits"])
    dtype, fmt_note = _FORMATS.get(bits, "e4m3"), ""
    if bits not in _FORMATS:
        fmt_note = f"; E{bits} has no torch float8 dtype, E4M3 used"
    args: Args = {
        "tokens": _TOKENS,
        "in_features": in_features,
        "out_features": out_features,
        "tile": tile,
        "block": block,
        "dtype": dtype,
        "outlier_scale": 100.0,
        "outlier_channels": 4,
        "outlier_tokens": 2,
        "device": "cpu",
        "seed": 0,
    }
    rows = [
        Row("tile", "activation tile width (1 x tile, kept)", paper["tile"], tile, source["tile"]),
        Row("block", "weight block side (block x block, kept)", paper["block"], block,
            source["block"]),
        Row("fp8_exponent_bits", f"FP8 exponent bits ({dtype}{fmt_note})",
            paper["fp8_exponent_bits"], 4 if dtype == "e4m3" else 5, source["fp8_exponent_bits"]),
        Row("promotion_interval", "K elements accumulated before FP32 promotion (gcd of tile "
            "and block here; the tensor-core accumulator itself is not emulated)",
            paper["promotion_interval"], math.gcd(tile, block), source["promotion_interval"]),
        Row("in_features", "GEMM reduction dimension K (a multiple of tile and block)", None,
            in_features, "our choice: whole tiles and blocks, about 1024"),
        Row("outlier_scale", "outlier magnitude vs the bulk (a sweep adds 1 to 1e5)", None, 100.0,
            "not stated; our choice, a typical activation-outlier factor"),
    ]  # fmt: skip
    return Scaled(
        args,
        rows,
        carries_over=[
            "quantization and GEMM error of per-tensor vs tile/block scaling for given data: "
            "the FP8 rounding is torch's own cast, the same arithmetic as on a GPU",
            "the bytes of scales per element (1/tile and 1/block^2 float32 scales)",
            "where per-tensor scaling breaks as outliers grow, for E4M3 and E5M2",
        ],
        does_not_carry_over=[
            "training stability and final loss: nothing is trained here",
            "speed: the GEMM is emulated in float32; FP8 tensor cores and their limited-"
            "precision accumulator are not modelled",
            "real activation statistics: the data are Gaussian with planted outliers",
        ],
    )


RECIPE = Recipe(
    key="fp8_blockwise",
    title="Fine-grained FP8 quantization",
    script="fp8_blockwise.py",
    shrink=("tokens",),
    scale=scale,
    summary=(
        "FP8 (E4M3) with fine-grained scaling: activations get one scale per 1x128 tile (a "
        "token's 128 channels) and weights one per 128x128 block, instead of one scale per "
        "tensor, so an outlier only sets the scale of its own group. Partial GEMM results are "
        "promoted to FP32 and multiplied by the scales every 128 elements along K."
    ),
    signatures=(
        Signature(r"\bfp8\b", 1.5),
        Signature(r"fine-grained quantization|fine-grained scaling", 2.0),
        Signature(r"tile-wise|block-wise|\btile basis|\bblock basis", 1.0),
        Signature(r"1" + _TIMES + r"128 tiles?|128" + _TIMES + r"128 blocks?", 1.5),
        Signature(r"per-tensor (?:scaling|quantization)", 1.0),
        Signature(r"\be4m3\b|\be5m2\b", 1.0),
    ),
    hyperparameters=(
        HyperparameterSpec(
            "tile",
            "activation tile width (1 x tile)",
            (r"\b1" + _TIMES + r"(\d+)\s*(?:-\s*)?tiles?\b",),
        ),
        HyperparameterSpec(
            "block",
            "weight block side (block x block)",
            (r"\b(\d+)" + _TIMES + r"\1\s*(?:-\s*)?blocks?\b",),
        ),
        HyperparameterSpec(
            "fp8_exponent_bits",
            "FP8 exponent bits (E4M3: 4, E5M2: 5)",
            (
                r"\be(\d)m\d\b(?: format)? (?:on|for) all tensors",
                r"adopts? (?:the )?e(\d)m\d\b",
            ),
        ),
        HyperparameterSpec(
            "promotion_interval",
            "accumulation interval N_C before promotion to FP32",
            (r"\bn_?c\s*=\s*(\d+)", r"(?:accumulation|promotion) interval(?: n_?c)?" + SET),
        ),
    ),
    table=(
        ("x_rel_err", "X rel. error"),
        ("x_bulk_rel_err", "X bulk rel. error"),
        ("x_snr_db", "X SNR, dB"),
        ("x_flushed_to_zero_frac", "X flushed to 0"),
        ("y_rel_err", "GEMM rel. error"),
        ("x_scale_bytes_per_elem", "X scale bytes / el."),
        ("w_scale_bytes_per_elem", "W scale bytes / el."),
    ),
    grid_figure=GridFigure(
        x="log10_outlier_scale",
        y="x_bulk_rel_err",
        xlabel="log10 of the outlier scale",
        ylabel="relative error of the bulk activations",
        title="FP8 error on non-outlier activations vs outlier size (per-tensor vs fine-grained)",
    ),
    gotchas=(
        "Per-tensor scaling maps the tensor's largest value to the format's largest: one "
        "outlier channel sets the scale for every element, and once outliers are large "
        "enough the rest falls into the subnormal range or flushes to zero. E4M3's exponent "
        "spans about 2^15 of normal range, so this bites from outliers of roughly 1e4 on "
        "(see the sweep), not at 100x; integer formats suffer much earlier.",
        "With only a few outliers per tile, each outlier is its tile's maximum and is stored "
        "exactly; much of the whole-tensor and GEMM gain at moderate outlier sizes comes from "
        "that, not from better resolution of the bulk.",
        "Accumulation precision is a separate problem from scaling: DeepSeek-V3 found FP8 "
        "GEMMs on H800 tensor cores keep about 14 bits in the accumulator and promote "
        "partial sums to FP32 on CUDA cores every 128 elements (N_C); an emulation that "
        "accumulates in float32, as this one does, cannot show that error.",
        "E4M3 everywhere (more mantissa, less range) is only safe because the fine-grained "
        "scales supply the range; the older hybrid used E5M2 for gradients. Per-tensor E5M2 "
        "survives outliers that break per-tensor E4M3, at twice E4M3's rounding error.",
        "Scales cost memory too: float32 scales on 1x128 tiles add 4/128 bytes per element, "
        "3% of FP8's one byte; 128x128 weight blocks add 4/16384.",
        "torch.float8_e4m3fn has no infinity: values beyond 448 must be clamped before the "
        "cast, or they become NaN.",
    ),
    finance_angle=(
        "FP8 halves memory and roughly doubles tensor-core throughput against BF16, so it "
        "lowers the cost of training or fine-tuning a model in-house; fine-grained scaling is "
        "what keeps the error from depending on a few outliers. A bank weighing FP8 should "
        "ask for the loss gap at its own scale and the kernels its hardware supports: the "
        "error figures here are arithmetic on synthetic data and carry over, the savings do "
        "not until measured on the bank's GPUs."
    ),
    not_checkable=(
        (
            r"0\.25%",
            "the loss gap of FP8 against BF16 training needs two large models trained on "
            "hundreds of billions of tokens; nothing is trained here",
        ),
        (
            r"(?i)\b2%|14 bits",
            "the accumulation error of FP8 GEMMs depends on the H800 tensor cores' "
            "accumulator, which this float32 emulation does not model",
        ),
    ),
    claims=(
        ClaimSpec(
            "fp8_fine_grained_lower_error",
            "fine-grained (1x128 tile) scaling quantizes activations with outliers with a "
            "lower error than per-tensor scaling",
            r"outliers?.{0,160}(?:fine-grained|tile|block)|(?:fine-grained|tile|block).{0,160}"
            r"outliers?",
        ),
        ClaimSpec(
            "fp8_fine_grained_lower_bulk_error",
            "fine-grained scaling also quantizes the bulk of the activations better",
            None,
        ),
        ClaimSpec(
            "fp8_fine_grained_lower_gemm_error",
            "the FP8 GEMM with tiles and blocks has a lower relative error than per-tensor",
            # Papers state the training-loss gap (a different claim, not checkable here),
            # not the GEMM error of tile/block against per-tensor scales.
            None,
        ),
        ClaimSpec(
            "fp8_e4m3_beats_e5m2_fine_grained",
            "with fine-grained scaling E4M3 beats E5M2, so it can be used on all tensors",
            r"e4m3.{0,160}(?:all tensors|higher precision)",
        ),
        ClaimSpec(
            "fp8_tile_scale_overhead",
            "1x128 tiles store one float32 scale per 128 elements",
            None,
            "implementation",
        ),
    ),
    typical_s=2.2,
)
