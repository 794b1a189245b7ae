"""deepseek_moe: catalog entry (recognised by the Reader; recipe to come)."""

from __future__ import annotations

from recipes.catalog import Recipe, Signature

RECIPE = Recipe(
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
