"""Offline Reader policy: the recipe catalog as a source of a Plan.

The deterministic digest (`tools.digest`) finds the catalog mechanisms a paper
describes; each becomes a `MechanismPlan` carrying everything downstream needs
(claims with the sentence that states each, hyperparameters with quotes, the CPU
scale-down, the profile grid, figures, gotchas, finance angle, what is not checkable),
so no later agent reads the catalog. Two judgements are made from the paper's words:

- role: does the paper *introduce* the mechanism ("we propose", "pioneers", "for the
  first time") or *build on* it ("we adopt", "following", a citation)? A paper whose
  contribution is layered on a known mechanism must not be written up as if the known
  one were its result.
- contributions the catalog does not know: "we propose Foo Attention (FA)" in the front
  matter, where Foo matches no catalog signature, becomes a plan entry that is not
  reproduced, saying why and what would reproduce it.

By default every reproducible mechanism is selected, the paper's own contributions
first, except a known mechanism the paper only builds on whose evidence is weak beside
the strongest (a passing mention); the plan lists it, unselected, with how to add it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from recipes.catalog import CATALOG, Recipe
from reprodesk.plan import Column, FigureSpec, MechanismPlan, NotCheckable, Plan, PlanClaim
from reprodesk.schemas import Digest, Hyperparameter, Paper, Quote, ScaleRow, UserError
from tools.digest import Sentence, digest, sentences

KNOWN: tuple[str, ...] = tuple(CATALOG)

_INTRODUCES = re.compile(
    r"\bwe (?:propose|introduce|present|pioneer|design|develop)\b|\bpioneers?\b|\bnovel\b|"
    r"\bfor the first time\b|\bour (?:new|proposed)\b|\bwe call\b|\bis proposed\b"
)
_BUILDS_ON = re.compile(
    r"\badopts?\b|\badopted\b|\bfollowing\b|\bwe follow\b|\bas in\b|\bvalidated in\b|"
    r"\b(?:proposed|introduced) (?:by|in)\b|\binherit|\bbuilds? (?:up)?on\b|"
    r"\binstantiated (?:under|on|with)\b|\bet al\.,? \d{4}|\(deepseek-ai,? \d{4}"
)
# "We propose Token-Routed Sparse Attention (TRSA)": a named contribution.
_PROPOSAL = re.compile(
    r"\b(?:[Ww]e|[Tt]his (?:paper|work|note|report))\s+(?:propose|introduce|present)s?\s+"
    r"(?:a |an |the )?(?:new |novel |simple )?"
    r"(?P<name>[A-Z][\w-]*(?:[ -][A-Z][\w-]*){0,5})\s*\((?P<abbr>[A-Z][A-Za-z0-9-]{1,12})\)"
)
_LEADERS = re.compile(r"(?:\.\s){4,}")
_FRONT_PAGES = 2  # title, abstract and introduction: where a paper says what it contributes
_WEAK = 1 / 3  # a builds-on mechanism below this share of the top score is a passing mention
_NO_RECIPE = (
    "the offline catalog has no recipe for it; with an LLM endpoint configured (--llm) "
    "the LLM Reproducer writes code for it, or add a recipe under recipes/"
)


def read(paper: Paper, restrict: Sequence[str] = ()) -> tuple[Digest, Plan]:
    """The digest and the Plan; `restrict` (catalog keys) selects exactly those."""
    unknown = [k for k in restrict if k not in CATALOG]
    if unknown:
        raise UserError(
            f"--mechanism {unknown[0]}: not a mechanism the offline catalog knows "
            f"(known: {', '.join(KNOWN)})"
        )
    found = digest(paper)
    all_sentences = [s for s in sentences(paper) if not s.elsewhere]
    mechanisms = [
        _from_catalog(CATALOG[hit.name], found, all_sentences, paper) for hit in found.mechanisms
    ]
    for m, hit in zip(mechanisms, found.mechanisms, strict=True):
        # A table-of-contents line names a mechanism but says nothing about it.
        m.score, m.quotes = hit.score, [q for q in hit.quotes if not _LEADERS.search(q.text)]
    mechanisms += _uncatalogued(all_sentences)
    top = max((m.score for m in mechanisms), default=0.0)
    notes: list[str] = []
    for m in mechanisms:
        if restrict:
            m.selected = m.key in restrict
        elif m.role == "builds_on" and m.score < _WEAK * top:
            m.selected = False
            notes.append(
                f"{m.title} is only mentioned (score {m.score:g} against {top:g}); not "
                f"reproduced by default: add it with --mechanism {m.key} or at the plan gate"
            )
    missing = [k for k in restrict if all(m.key != k for m in mechanisms)]
    if missing:
        names = ", ".join(m.key for m in mechanisms) or "none the catalog knows"
        notes.append(f"the paper never mentions {', '.join(missing)} (it mentions: {names})")
    mechanisms.sort(key=lambda m: (m.role != "introduces", -m.score))
    return found, Plan(mechanisms=mechanisms, notes=notes)


def _role(
    recipe: Recipe, all_sentences: list[Sentence], top: bool
) -> Literal["introduces", "builds_on"]:
    """introduces / builds_on, from the verbs around the mechanism's own sentences."""
    patterns = [re.compile(s.pattern) for s in recipe.signatures]
    intro = builds = 0.0
    for s in all_sentences:
        if not any(p.search(s.lower) for p in patterns):
            continue
        says_new, says_known = bool(_INTRODUCES.search(s.lower)), bool(_BUILDS_ON.search(s.lower))
        if s.page <= _FRONT_PAGES and says_new and not says_known:
            return "introduces"  # the front matter claims it plainly ("DeepSeek-V3 pioneers")
        weight = 2.0 if s.page <= _FRONT_PAGES else 1.0
        intro += weight * says_new
        builds += weight * says_known
    if intro == builds == 0:
        return "introduces" if top else "builds_on"
    return "introduces" if intro > builds else "builds_on"


def _stated_values(found: Digest, recipe: Recipe, at: str) -> dict[str, tuple[float, str]]:
    names = {spec.name for spec in recipe.hyperparameters}
    out: dict[str, tuple[float, str]] = {}
    for h in found.hyperparameters:
        if h.name in names:
            out.setdefault(h.name, (h.value, f"paper {at}{h.quote.page}"))
    return out


def _quote_for(pattern: str | None, all_sentences: list[Sentence]) -> Quote | None:
    if pattern is None:
        return None
    regex = re.compile(pattern)
    for s in all_sentences:
        if s.text.startswith("#") or _LEADERS.search(s.text):
            continue  # a heading, or a table-of-contents line ("4.1 Data . . . . 22")
        if regex.search(s.lower):
            return Quote(text=s.text, page=s.page)
    return None


def _from_catalog(
    recipe: Recipe, found: Digest, all_sentences: list[Sentence], paper: Paper
) -> MechanismPlan:
    at = "s." if paper.page_unit == "section" else "p."
    top = bool(found.mechanisms) and found.mechanisms[0].name == recipe.key
    entry = MechanismPlan(
        key=recipe.key,
        title=recipe.title,
        summary=recipe.summary,
        role=_role(recipe, all_sentences, top),
        source="catalog",
        script=recipe.script,
        gotchas=list(recipe.gotchas),
        finance_angle=recipe.finance_angle,
        hyperparameters=_hyperparameters(found, recipe),
    )
    if recipe.script is None or recipe.scale is None:
        entry.not_reproduced_because = _NO_RECIPE
        return entry
    scaled = recipe.scale(_stated_values(found, recipe, at))
    entry.args = dict(scaled.args)
    entry.scale_down = [ScaleRow(**row._asdict()) for row in scaled.rows]
    entry.carries_over = list(scaled.carries_over)
    entry.does_not_carry_over = list(scaled.does_not_carry_over)
    entry.shrink = list(recipe.shrink)
    entry.grid = {label: dict(args) for label, args in recipe.profile.items()}
    if not entry.grid:  # one number is never one sample: two more seeds
        entry.grid = {f"seed{seed}": {"seed": seed} for seed in (1, 2)}
    if recipe.grid_figure is not None:
        g = recipe.grid_figure
        entry.figures = [FigureSpec(x=g.x, y=g.y, xlabel=g.xlabel, ylabel=g.ylabel, title=g.title)]
    entry.table = [Column(metric=m, label=label) for m, label in recipe.table]
    entry.claims = [
        PlanClaim(
            id=c.id,
            statement=c.statement,
            kind="implementation" if c.kind == "implementation" else "paper",
            quote=_quote_for(c.states, all_sentences),
        )
        for c in recipe.claims
    ]
    entry.not_checkable = _not_checkable(recipe, found)
    entry.estimated_s = recipe.typical_s * (1 + len(entry.grid))
    return entry


def _hyperparameters(found: Digest, recipe: Recipe) -> list[Hyperparameter]:
    names = {spec.name for spec in recipe.hyperparameters}
    return [h for h in found.hyperparameters if h.name in names]


def _not_checkable(recipe: Recipe, found: Digest) -> list[NotCheckable]:
    out: list[NotCheckable] = []
    for pattern, why in recipe.not_checkable:
        stated = next((c for c in found.claims if re.search(pattern, c.text, re.IGNORECASE)), None)
        if stated is not None and all(n.quote.text != stated.text for n in out):
            out.append(NotCheckable(quote=Quote(text=stated.text, page=stated.page), why=why))
    return out


def _known_name(name: str, abbr: str) -> bool:
    text = f"{name} ({abbr})".lower()
    return any(
        re.search(sig.pattern, text) for recipe in CATALOG.values() for sig in recipe.signatures
    )


def _slug(abbr: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", abbr.lower()).strip("_") or "contribution"


def _uncatalogued(all_sentences: list[Sentence]) -> list[MechanismPlan]:
    """Named contributions in the front matter that no catalog signature matches."""
    out: list[MechanismPlan] = []
    for s in all_sentences:
        if s.page > _FRONT_PAGES:
            break
        for m in _PROPOSAL.finditer(s.text):
            name, abbr = m.group("name").strip(), m.group("abbr")
            if _known_name(name, abbr) or any(e.title == name for e in out):
                continue
            out.append(
                MechanismPlan(
                    key=_slug(abbr),
                    title=f"{name} ({abbr})",
                    role="introduces",
                    source="paper",
                    score=0.0,
                    quotes=[Quote(text=s.text, page=s.page)],
                    not_reproduced_because=_NO_RECIPE,
                )
            )
    return out
