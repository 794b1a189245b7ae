"""mtp: catalog entry (recognised by the Reader; recipe to come)."""

from __future__ import annotations

from recipes.catalog import Recipe, Signature

RECIPE = Recipe(
    key="mtp",
    title="Multi-Token Prediction",
    script=None,
    summary="Sequential modules predict further future tokens as an extra training signal.",
    signatures=(
        Signature(r"multi-token prediction", 3.0),
        Signature(r"\bmtp\b", 1.5),
    ),
)
