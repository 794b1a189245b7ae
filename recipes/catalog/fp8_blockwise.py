"""fp8_blockwise: catalog entry (recognised by the Reader; recipe to come)."""

from __future__ import annotations

from recipes.catalog import Recipe, Signature

RECIPE = Recipe(
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
