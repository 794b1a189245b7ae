"""The recipe catalog: what offline mode knows about each mechanism.

One module per mechanism defines `RECIPE`. Pure Python, no torch and no
project imports. The catalog is one *source of a Plan*: the offline Reader matches
papers against `signatures` and `hyperparameters`, sizes the run with `scale`, and
copies the claims, profile grid, figures, gotchas and finance angle into the Plan.
Nothing downstream of the Reader reads the catalog (the offline Reproducer only
reads a recipe's file).

A mechanism may be known (the Reader names it) before it has a recipe
(`script is None`): the Reproducer then says so instead of guessing.

Patterns run on normalised text: NFKC, lower case, whitespace collapsed, and
symbol spellings folded (see `tools.digest.normalise`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

Args = dict[str, float | int | str]
# name -> (value, where): "paper p.3", or why a default was used.
Stated = Mapping[str, tuple[float, str]]

# "is set to 128", "to 128", "= 128", "of 128": the ways papers bind a value.
# The value group takes thousands separators and exponents ("32,768", "1e-4"):
# `tools.digest.parse_value` reads them.
NUMBER = r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:e-?\d+)?)"
SET = r"\s*(?:is set to|are set to|is|to|=|of)\s*" + NUMBER


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


class Row(NamedTuple):
    """One line of the scale-down record."""

    name: str
    description: str
    paper: float | None
    ours: float
    source: str


class Scaled(NamedTuple):
    """A recipe sized for a CPU run, and the record of why."""

    args: Args
    rows: list[Row]
    carries_over: list[str]
    does_not_carry_over: list[str]


@dataclass(frozen=True)
class GridFigure:
    """A figure from the profiler's `grid` rows: y against x, one line per variant."""

    x: str
    y: str
    xlabel: str
    ylabel: str
    title: str


@dataclass(frozen=True)
class ClaimSpec:
    """A claim the recipe checks, and how to find the paper's sentence that states it.

    `states` is a regex on normalised sentences; None when papers do not state it in
    words (the write-up then says "not stated"). `kind` "implementation" marks an identity
    that holds when the code is right: a check of the code, not a reproduced claim.
    """

    id: str
    statement: str
    states: str | None = None
    kind: str = "paper"


@dataclass(frozen=True)
class Recipe:
    """One mechanism the catalog knows."""

    key: str
    title: str
    script: str | None  # file under recipes/, None while no recipe exists
    summary: str
    signatures: tuple[Signature, ...]
    hyperparameters: tuple[HyperparameterSpec, ...] = ()
    scale: Callable[[Stated], Scaled] | None = None
    # Extra argument sets the Profiler runs, one job each, label -> overrides.
    profile: Mapping[str, Args] = field(default_factory=dict)
    # Size arguments the Reproducer may halve after a timeout or out-of-memory (ratios
    # untouched). Empty: such a failure ends the run instead of a blind retry.
    shrink: tuple[str, ...] = ()
    # The measurements table: (metric key in each variant, column label); empty: all scalars.
    table: tuple[tuple[str, str], ...] = ()
    grid_figure: GridFigure | None = None
    gotchas: tuple[str, ...] = ()
    finance_angle: str = ""
    min_score: float = 3.0  # below this a match is noise (a citation, a related-work line)
    not_checkable: tuple[tuple[str, str], ...] = ()  # (claim pattern, why)
    claims: tuple[ClaimSpec, ...] = ()  # what the recipe's metrics line reports, by id
    # Seconds of one CPU job inside the warm sandbox (bench/recipes.py, 2 cores), for the
    # plan gate's estimate; each profile job costs about as much again.
    typical_s: float = 5.0


def value(
    stated: Stated, name: str, default: float, why: str = "not stated; default"
) -> tuple[float, str]:
    """The paper's value with its page, or the default and why."""
    return stated.get(name, (default, why))


def _load() -> dict[str, Recipe]:
    from recipes.catalog import deepseek_moe, fp8_blockwise, grpo, mla, mtp

    recipes = [m.RECIPE for m in (mla, deepseek_moe, grpo, mtp, fp8_blockwise)]
    return {r.key: r for r in recipes}


CATALOG: dict[str, Recipe] = _load()
