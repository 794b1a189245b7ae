"""grpo: catalog entry (recognised by the Reader; recipe to come)."""

from __future__ import annotations

from recipes.catalog import Recipe, Signature

RECIPE = Recipe(
    key="grpo",
    title="Group Relative Policy Optimization",
    script=None,
    summary="PPO without a critic: advantages are rewards normalised within a group.",
    signatures=(
        Signature(r"group relative policy optimi[sz]ation", 3.0),
        Signature(r"\bgrpo\b", 2.0),
    ),
)
