"""Fine-grained FP8 quantization (DeepSeek-V3 §3.3) against per-tensor scaling, with outliers.

Activations X (M, K) and weights W (N, K) are quantized to FP8 with a float32 scale per
group, chosen so the group's largest magnitude maps to the format's largest finite value:

- per-tensor: one scale for the whole tensor;
- fine-grained: one scale per 1 x 128 tile of X (per token, per 128 channels) and one per
  128 x 128 block of W, as in DeepSeek-V3.

The data are Gaussian, optionally with outliers: a few channels and a few tokens of X
multiplied by --outlier-scale, as activation outliers are. Measured: the relative error
and SNR of the dequantized tensors, over all elements and over the bulk (elements in no
outlier channel or token), the fraction of nonzero values flushed to zero, the relative
error of Y = X W^T against a float32 reference, and the bytes of scales per element. A
sweep over outlier scales (1 to 1e5) compares both scalings in E4M3 and E5M2.

The GEMM is emulated: FP8 values are cast back to float32 and multiplied there, chunk by
chunk along K, each chunk's partial product scaled by its tile and block scales and
accumulated in float32 (the promotion DeepSeek-V3 does on CUDA cores). The rounding to FP8
is torch's own cast (round to nearest even); the FP8 tensor-core accumulator, whose limited
precision the paper also discusses, is not emulated.

    python recipes/fp8_blockwise.py                  # about a second of compute on a CPU
    python recipes/fp8_blockwise.py --preset 4070    # a 12 GB GPU: DeepSeek-V3-sized K

Imports only torch, the standard library and harness.py, which ships beside it: it runs
in a sandbox without the project. The last stdout line is one JSON object with every metric.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

if __package__:  # imported from the project, as recipes.fp8_blockwise
    from . import harness
else:  # run as a script: harness.py lies beside it (in the job dir, or in recipes/)
    import harness  # type: ignore[no-redef]

FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
SWEEP = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)  # outlier scales for the grid
GRID_METRICS = ("x_rel_err", "x_bulk_rel_err", "y_rel_err", "x_flushed_to_zero_frac")
BAND = 0.05  # direction claims: a ratio within 1 +- BAND is "no material difference"

# The claims this run checks: id -> (claim, metric, unit).
# fmt: off
CLAIMS = {
    "fp8_fine_grained_lower_error": (
        "On data with outliers, fine-grained scaling (1x128 activation tiles) quantizes "
        "activations with a lower relative error than per-tensor scaling "
        "(ratio fine-grained / per-tensor, below 1 = fine-grained better)",
        "variants.fine_grained.x_rel_err / variants.per_tensor.x_rel_err", "ratio"),
    "fp8_fine_grained_lower_bulk_error": (
        "On data with outliers, fine-grained scaling also quantizes the bulk of the "
        "activations (elements in no outlier channel or token) with a lower error "
        "(ratio fine-grained / per-tensor)",
        "variants.fine_grained.x_bulk_rel_err / variants.per_tensor.x_bulk_rel_err", "ratio"),
    "fp8_fine_grained_lower_gemm_error": (
        "On data with outliers, the FP8 GEMM Y = X W^T with 1x128 tiles and 128x128 blocks "
        "has a lower relative error than with per-tensor scales (ratio fine-grained / "
        "per-tensor)",
        "variants.fine_grained.y_rel_err / variants.per_tensor.y_rel_err", "ratio"),
    "fp8_e4m3_beats_e5m2_fine_grained": (
        "With fine-grained scaling E4M3 is more accurate than E5M2 on the same data, which is "
        "why it can be used on all tensors (ratio E4M3 / E5M2 activation error)",
        "e4m3_vs_e5m2_fine_grained_ratio", "ratio"),
    "fp8_tile_scale_overhead": (
        "1x128 activation tiles store one float32 scale per 128 elements: 4/128 bytes of "
        "scales per element",
        "variants.fine_grained.x_scale_bytes_per_elem", "bytes/element"),
}
# fmt: on


@dataclass
class Config:
    tokens: int = 256  # M, rows of the activations X
    in_features: int = 1024  # K, the GEMM's reduction dimension
    out_features: int = 512  # N, rows of the weights W
    tile: int = 128  # activation tile width: one scale per 1 x tile
    block: int = 128  # weight block side: one scale per block x block
    dtype: str = "e4m3"  # FP8 format of the main variants; the sweep runs both
    outlier_scale: float = 100.0  # magnitude of the outliers relative to the bulk
    outlier_channels: int = 4  # channels (columns) of X multiplied by outlier_scale
    outlier_tokens: int = 2  # tokens (rows) of X multiplied by outlier_scale
    device: str = "cpu"
    threads: int = 1  # CPU intra-op threads; 0 = torch's default
    preset: str = "none"
    seed: int = 0


# Explicit flags override a preset; a preset overrides the defaults.
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # DeepSeek-V3's hidden size as K (7168) and a 4096-token micro-batch; X, W, their FP8
    # copies, dequantized copies and Y in float32 stay under 1 GiB: any 12 GB card.
    "4070": dict(tokens=4096, in_features=7168, out_features=2048, outlier_channels=16,
                 outlier_tokens=8, device="cuda"),
}
# fmt: on


# ---------------------------------------------------------------- quantization


def fmax(fmt: torch.dtype) -> float:
    return float(torch.finfo(fmt).max)  # 448 for E4M3 (fn: no inf), 57344 for E5M2


def quantize(x: Tensor, rows: int, cols: int, fmt: torch.dtype) -> tuple[Tensor, Tensor]:
    """FP8 values (R, C) and one float32 scale per rows x cols group (R/rows, C/cols).

    Per-tensor: rows, cols = R, C. Activation tiles: 1, 128. Weight blocks: 128, 128.
    """
    R, C = x.shape
    groups = x.reshape(R // rows, rows, C // cols, cols)  # (R/r, r, C/c, c)
    amax = groups.abs().amax(dim=(1, 3), keepdim=True)  # (R/r, 1, C/c, 1)
    # The group's largest magnitude maps to the format's largest value; an all-zero
    # group keeps scale 1 (anything else divides by zero).
    scale = torch.where(amax > 0, amax / fmax(fmt), torch.ones_like(amax))
    q = (groups / scale).clamp(-fmax(fmt), fmax(fmt)).to(fmt)  # clamp: fp rounding of amax
    return q.view(R, C), scale.view(R // rows, C // cols)


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """float32 (R, C) from FP8 values and per-group scales (R/r, C/c)."""
    R, C = q.shape
    r, c = R // scale.shape[0], C // scale.shape[1]
    return (q.float().view(scale.shape[0], r, scale.shape[1], c) * scale[:, None, :, None]).view(
        R, C
    )


def gemm(xq: Tensor, sx: Tensor, wq: Tensor, sw: Tensor) -> Tensor:
    """Y (M, N) = X W^T from FP8 operands, accumulated in float32 chunk by chunk along K.

    Chunks follow the finer of the two K groupings; each chunk's partial product of FP8
    values is exact-ish in float32 and is multiplied by its activation and weight scales
    before being added: DeepSeek-V3's promotion to FP32 with dequantization on the way.
    """
    M, K = xq.shape
    N = wq.shape[0]
    kx, kw = K // sx.shape[1], K // sw.shape[1]  # K-widths of the scale groups
    chunk = math.gcd(kx, kw)
    sx_rows = sx.repeat_interleave(M // sx.shape[0], dim=0)  # (M, K/kx)
    sw_rows = sw.repeat_interleave(N // sw.shape[0], dim=0)  # (N, K/kw)
    y = torch.zeros(M, N, device=xq.device)
    for k0 in range(0, K, chunk):
        part = xq[:, k0 : k0 + chunk].float() @ wq[:, k0 : k0 + chunk].float().T  # (M, N)
        y += part * sx_rows[:, k0 // kx, None] * sw_rows[None, :, k0 // kw]
    return y


# ---------------------------------------------------------------- data and metrics


def make_data(cfg: Config, outlier_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """X (M, K) with outliers, W (N, K), and the outlier masks: channels (K,), tokens (M,)."""
    g = torch.Generator().manual_seed(cfg.seed)  # CPU generator: same data on any device
    M, K, N = cfg.tokens, cfg.in_features, cfg.out_features
    x = torch.randn(M, K, generator=g)  # (M, K), bulk ~ N(0, 1)
    w = torch.randn(N, K, generator=g) / math.sqrt(K)  # (N, K), unit-variance outputs
    channels = torch.zeros(K, dtype=torch.bool)
    channels[torch.randperm(K, generator=g)[: cfg.outlier_channels]] = True
    tokens = torch.zeros(M, dtype=torch.bool)
    tokens[torch.randperm(M, generator=g)[: cfg.outlier_tokens]] = True
    # Outlier channels and tokens are scaled once each, so where they cross it is R, not R^2.
    x = torch.where(channels[None, :] | tokens[:, None], x * outlier_scale, x)
    return x.to(cfg.device), w.to(cfg.device), channels.to(cfg.device), tokens.to(cfg.device)


def rel_err(approx: Tensor, exact: Tensor) -> float:
    return ((approx - exact).norm() / exact.norm()).item()


def evaluate(
    x: Tensor, w: Tensor, bulk: Tensor, y_ref: Tensor, fine: bool, cfg: Config, fmt: torch.dtype
) -> dict[str, Any]:
    """Every metric of one scaling on one data set. bulk (M, K) marks non-outlier elements."""
    M, K = x.shape
    N = w.shape[0]
    x_groups, w_groups = ((1, cfg.tile), (cfg.block, cfg.block)) if fine else ((M, K), (N, K))
    xq, sx = quantize(x, *x_groups, fmt)
    wq, sw = quantize(w, *w_groups, fmt)
    x_hat, w_hat = dequantize(xq, sx), dequantize(wq, sw)
    y = gemm(xq, sx, wq, sw)
    err = x_hat - x
    nonzero = x != 0
    bulk_rows = bulk.any(dim=1)  # not an outlier token (those rows hold no bulk): (M,)
    return {
        "x_rel_err": rel_err(x_hat, x),
        "x_bulk_rel_err": rel_err(x_hat[bulk], x[bulk]),
        "x_snr_db": 20 * math.log10(x.norm().item() / max(err.norm().item(), 1e-30)),
        "x_flushed_to_zero_frac": ((x_hat == 0) & nonzero).sum().item() / nonzero.sum().item(),
        "w_rel_err": rel_err(w_hat, w),
        "y_rel_err": rel_err(y, y_ref),
        "y_bulk_rel_err": rel_err(y[bulk_rows], y_ref[bulk_rows]),
        "x_scales": sx.numel(),
        "w_scales": sw.numel(),
        "x_scale_bytes_per_elem": sx.numel() * sx.element_size() / x.numel(),
        "w_scale_bytes_per_elem": sw.numel() * sw.element_size() / w.numel(),
        "x_bytes_per_elem": (xq.numel() * xq.element_size() + sx.numel() * sx.element_size())
        / x.numel(),
    }


def dataset(cfg: Config, outlier_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """X (M, K), W (N, K), the bulk mask (M, K) and the float32 reference Y (M, N)."""
    x, w, channels, tokens = make_data(cfg, outlier_scale)
    bulk = ~(channels[None, :] | tokens[:, None])  # elements in no outlier channel or token
    return x, w, bulk, x @ w.T  # float32 reference; TF32 is switched off on cuda


def scheme(fine_grained: bool) -> str:
    return "fine_grained" if fine_grained else "per_tensor"


def run(cfg: Config) -> dict[str, Any]:
    return harness.run(cfg, config_error(cfg), measure)


def measure(cfg: Config, t_start: float) -> dict[str, Any]:
    cuda = cfg.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true float32
        torch.cuda.reset_peak_memory_stats()
    fmt = FORMATS[cfg.dtype]
    variants: dict[str, dict[str, Any]] = {}
    for suffix, outliers in (("", cfg.outlier_scale), ("_clean", 1.0)):
        data = dataset(cfg, outliers)
        for fine_grained in (False, True):
            variants[scheme(fine_grained) + suffix] = evaluate(*data, fine_grained, cfg, fmt)

    grid = []
    for outliers in SWEEP:
        data = dataset(cfg, outliers)
        for name, f in FORMATS.items():
            for fine_grained in (False, True):
                m = evaluate(*data, fine_grained, cfg, f)
                grid.append({
                    "variant": f"{scheme(fine_grained)}_{name}",
                    "outlier_scale": outliers,
                    "log10_outlier_scale": math.log10(outliers),
                    **{k: m[k] for k in GRID_METRICS},
                })  # fmt: skip

    # E4M3 vs E5M2 with fine-grained scaling, at the configured outlier scale.
    data = dataset(cfg, cfg.outlier_scale)
    by_fmt = {n: evaluate(*data, True, cfg, f)["x_rel_err"] for n, f in FORMATS.items()}
    e4_vs_e5 = by_fmt["e4m3"] / by_fmt["e5m2"]

    fine, tensor = variants["fine_grained"], variants["per_tensor"]
    overhead = fine["x_scale_bytes_per_elem"]
    claims = [
        direction("fp8_fine_grained_lower_error", fine["x_rel_err"] / tensor["x_rel_err"]),
        direction("fp8_fine_grained_lower_bulk_error",
                  fine["x_bulk_rel_err"] / tensor["x_bulk_rel_err"]),
        direction("fp8_fine_grained_lower_gemm_error", fine["y_rel_err"] / tensor["y_rel_err"]),
        direction("fp8_e4m3_beats_e5m2_fine_grained", e4_vs_e5),
        harness.claim(CLAIMS, "fp8_tile_scale_overhead", 4 / cfg.tile, overhead, tol=0.0,
                      verdict=harness.verdict(overhead == 4 / cfg.tile)),
    ]  # fmt: skip
    curves = {}
    for metric, title in (
        ("x_bulk_rel_err", "Bulk activation error vs outlier scale"),
        ("y_rel_err", "GEMM error vs outlier scale"),
    ):
        series: dict[str, list[list[float]]] = {}
        for row in grid:
            series.setdefault(row["variant"], []).append([row["log10_outlier_scale"], row[metric]])
        curves[metric] = {
            "title": f"{title} (FP8, emulated, {cfg.tokens}x{cfg.in_features})",
            "xlabel": "log10 outlier scale",
            "ylabel": "relative error",
            "series": series,
        }
    return {
        **harness.header(
            "fp8_blockwise",
            cfg,
            fp8_gemm="emulated: FP8 values cast to float32, float32 accumulation",
        ),
        "claims": claims,
        "variants": variants,
        "e4m3_vs_e5m2_fine_grained_ratio": e4_vs_e5,
        "fine_grained_x_rel_err_by_format": by_fmt,
        "grid": grid,
        "curves": curves,
        "mem": {"cuda_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None},
        "wall_s": time.perf_counter() - t_start,
    }


def direction(id_: str, ratio: float) -> dict[str, Any]:
    """A claim that one error is below another: the ratio against 1, with a +-BAND dead zone."""
    verdict = harness.verdict(ratio < 1 - BAND, partial=ratio <= 1 + BAND)
    return harness.claim(CLAIMS, id_, 1.0, ratio, tol=BAND, verdict=verdict)


# ---------------------------------------------------------------- CLI


def config_error(cfg: Config) -> str | None:
    """One line naming the option and the reason, or None. Runs before any compute."""
    for name in ("tokens", "in_features", "out_features", "tile", "block"):
        if getattr(cfg, name) <= 0:
            return f"--{name.replace('_', '-')}: must be positive, got {getattr(cfg, name)}"
    if cfg.in_features % cfg.tile:
        return f"--tile: {cfg.tile} does not divide --in-features {cfg.in_features}"
    for dim in ("in_features", "out_features"):
        if getattr(cfg, dim) % cfg.block:
            flag = "--" + dim.replace("_", "-")
            return f"--block: {cfg.block} does not divide {flag} {getattr(cfg, dim)}"
    if cfg.dtype not in FORMATS:
        return f"--dtype: unknown FP8 format {cfg.dtype!r}, choose from {', '.join(FORMATS)}"
    if not (cfg.outlier_scale > 0 and math.isfinite(cfg.outlier_scale)):
        return f"--outlier-scale: must be a finite number > 0, got {cfg.outlier_scale}"
    if not 0 <= cfg.outlier_channels < cfg.in_features:
        return f"--outlier-channels: must be in [0, {cfg.in_features}), got {cfg.outlier_channels}"
    if not 0 <= cfg.outlier_tokens < cfg.tokens:
        return f"--outlier-tokens: must be in [0, {cfg.tokens}), got {cfg.outlier_tokens}"
    if cfg.threads < 0:
        return f"--threads: must be >= 0, got {cfg.threads}"
    if cfg.device not in ("cpu", "cuda"):
        return f"--device: unknown {cfg.device!r}"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        via = "" if cfg.preset == "none" else f" (preset {cfg.preset})"
        return f"--device: cuda requested{via} but torch.cuda.is_available() is False"
    return None


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None]:
    p = harness.Parser(__file__, __doc__)
    add = p.add_argument
    add("--tokens", type=int, help="M, rows (tokens) of the activations X (default 256)")
    add(
        "--in-features",
        type=int,
        help="K, the reduction dimension; tile and block divide it (default 1024)",
    )
    add("--out-features", type=int, help="N, rows of the weights W; block divides it (default 512)")
    add(
        "--tile",
        type=int,
        help="activation tile width: one scale per 1 x tile (default 128, DeepSeek-V3's)",
    )
    add(
        "--block",
        type=int,
        help="weight block side: one scale per block x block (default 128, DeepSeek-V3's)",
    )
    add("--dtype", help="FP8 format of the main variants: e4m3 (float8_e4m3fn, DeepSeek-V3's) or "
        "e5m2 (float8_e5m2); the outlier sweep runs both (default e4m3)")  # fmt: skip
    add(
        "--outlier-scale",
        type=float,
        help="outlier magnitude relative to the bulk, > 0 (default 100)",
    )
    add(
        "--outlier-channels",
        type=int,
        help="channels of X multiplied by the outlier scale (default 4)",
    )
    add(
        "--outlier-tokens", type=int, help="tokens of X multiplied by the outlier scale (default 2)"
    )
    p.add_common(
        PRESETS,
        preset="none; 4070 = 12 GB GPU: 4096 tokens, K 7168 (DeepSeek-V3's hidden size), N 2048, "
        "16 outlier channels, 8 outlier tokens, cuda. Explicit flags override a preset",
        seed="the data",
    )
    values, out = p.values(argv)
    return harness.make_config(Config, values), out


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    harness.preflight(__file__, config_error(cfg), out)
    metrics = run(cfg)
    head = ("variant", "x rel err", "bulk err", "SNR dB", "y rel err", "scale B/el")
    print(f"{head[0]:18} " + " ".join(f"{h:>10}" for h in head[1:]))
    for v, m in metrics["variants"].items():
        print(
            f"{v:18} {m['x_rel_err']:>10.3e} {m['x_bulk_rel_err']:>10.3e} {m['x_snr_db']:>10.2f} "
            f"{m['y_rel_err']:>10.3e} {m['x_scale_bytes_per_elem']:>10.3g}"
        )
    for g in metrics["grid"]:
        print(
            f"sweep {g['variant']:18} outliers x{g['outlier_scale']:<8g} bulk err "
            f"{g['x_bulk_rel_err']:.3e}  gemm err {g['y_rel_err']:.3e}"
        )
    harness.report(metrics, out)


if __name__ == "__main__":
    main()
