"""The Writer reading its own results: what the timings show, what is noise, what flips.

Works on any recipe whose variants report a timing as `<name>_ms_mean` with
`<name>_ms_std` (and `<name>_ms_median` when the recipe has it) and whose profile jobs
report `grid` rows (`variant`, an x such as `seq_len`, the same timing keys). Nothing
here knows a mechanism by name: the statements come from the numbers, and every number
goes through the section's `EvidenceBook` (job + metric path, or a formula over them).

What it says:
- the ranking of the variants in the main job, by median where there is one;
- whether the spread is small enough to rank them (std against the gap between
  neighbours), and whether the ranking holds across the jobs of the run;
- a ranking that flips across the grid, and how each variant grows along it;
- where the measurement goes against the expectation from the cache sizes (a variant
  that caches less is slower), and the alternative forms a variant was timed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from agents.offline.profile_notes import arithmetic, discipline
from reprodesk.state import JobRecord

if TYPE_CHECKING:
    from agents.offline.sections import MechanismSection

NOISY = 0.25  # std above this share of the mean: one job's timing does not rank variants


@dataclass
class Findings:
    shows: list[str] = field(default_factory=list)  # "What the measurements show"
    gotchas: list[str] = field(default_factory=list)  # gotchas from this run
    noisy: bool = False  # the run's timings cannot rank the variants
    contradicts: list[str] = field(default_factory=list)  # against the paper or expectation


def timing_base(variants: dict[str, dict[str, Any]]) -> str | None:
    """'decode_ms' when every variant reports decode_ms_mean and decode_ms_std."""
    bases = None
    for values in variants.values():
        here = {k[: -len("_mean")] for k in values if k.endswith("_ms_mean")}
        here = {b for b in here if f"{b}_std" in values}
        bases = here if bases is None else bases & here
    return sorted(bases)[0] if bases else None


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def analyse(s: MechanismSection) -> Findings:
    f = Findings()
    variants = s.result.variants
    base = timing_base(variants) if variants else None
    if base is None:
        return f
    stat = (
        f"{base}_median"
        if all(_is_num(v.get(f"{base}_median")) for v in variants.values())
        else f"{base}_mean"
    )
    stat_word = "median" if stat.endswith("median") else "mean"
    key = s.mech.key

    def m(variant: str, metric: str, record: JobRecord | None = None) -> str:
        return s.measured(
            f"{key}.analysis.{variant}.{metric}",
            f"variants.{variant}.{metric}",
            "ms" if "_ms" in metric else "",
            record,
        )

    order = sorted(variants, key=lambda v: float(variants[v][stat]))
    ranked = " < ".join(f"{v} {m(v, stat)} ms" for v in order)
    f.shows.append(
        f"Main job (`{s.main.key}`): {stat_word} {base.replace('_ms', '')} time per step, fastest "
        f"first: {ranked}."
    )
    f.shows += discipline(s, base)

    # Spread: std against the mean, and against the gap between neighbours in the ranking.
    worst = max(
        variants,
        key=lambda v: (
            float(variants[v][f"{base}_std"]) / max(1e-12, float(variants[v][f"{base}_mean"]))
        ),
    )
    cv = float(variants[worst][f"{base}_std"]) / max(1e-12, float(variants[worst][f"{base}_mean"]))

    def cv_shown() -> str:
        return s.ctx.book.derived(
            f"{key}.analysis.cv",
            cv,
            "",
            formula=f"variants.{worst}.{base}_std / variants.{worst}.{base}_mean, job {s.main.key}",
            percent=True,
        )

    ties = []
    for a, b in pairwise(order):
        gap = float(variants[b][stat]) - float(variants[a][stat])
        spread = max(float(variants[a][f"{base}_std"]), float(variants[b][f"{base}_std"]))
        if gap < spread:
            ties.append((a, b, gap, spread))
    if cv > NOISY or ties:
        f.noisy = f.noisy or cv > NOISY
        lead = (
            "The timings are noisy: the step-to-step standard deviation reaches"
            if cv > NOISY
            else "The step-to-step standard deviation reaches"
        )
        text = (
            f"{lead} {cv_shown()} of the mean ({worst}: {m(worst, f'{base}_std')} ms on "
            f"{m(worst, f'{base}_mean')} ms)."
        )
        if ties:
            pairs = "; ".join(
                f"{a} and {b} differ by "
                + s.ctx.book.derived(
                    f"{key}.analysis.gap.{a}.{b}",
                    gap,
                    "ms",
                    formula=f"variants.{b}.{stat} - variants.{a}.{stat}, job {s.main.key}",
                )
                + " ms, less than their std of "
                + s.ctx.book.derived(
                    f"{key}.analysis.spread.{a}.{b}",
                    spread,
                    "ms",
                    formula=f"max of variants.{a}/{b}.{base}_std, job {s.main.key}",
                )
                + " ms"
                for a, b, gap, spread in ties
            )
            text += (
                f" Neighbours in the ranking are not separated: {pairs}. Treat those places "
                "as noise."
            )
        f.shows.append(text)
    if cv > NOISY:
        f.gotchas.append(
            f"From this run: one decode step's time varied by up to {cv_shown()} of its mean on "
            "this machine (other jobs share the cores); a single job's latency does not rank "
            "variants. Compare medians over repeats and over runs, with threads pinned."
        )

    # The ranking across the run's jobs (main + profiler jobs that report the same variants).
    jobs = [
        r
        for r in [s.main, *s.work.profile]
        if r.parsed is not None and set(r.parsed.variants) == set(variants)
    ]
    rankings: dict[tuple[str, ...], list[JobRecord]] = {}
    for r in jobs:
        vs = r.parsed.variants  # type: ignore[union-attr]
        rankings.setdefault(tuple(sorted(vs, key=lambda v: float(vs[v][stat]))), []).append(r)
    if len(jobs) > 1:
        n = s.ctx.book.derived(
            f"{key}.analysis.jobs", len(jobs), "", formula="jobs timing the same variants"
        )
        if len(rankings) == 1:
            f.shows.append(f"The ranking is the same in all {n} jobs of the run.")
        else:
            k = s.ctx.book.derived(
                f"{key}.analysis.rankings",
                len(rankings),
                "",
                formula="distinct fastest-first orders",
            )
            listed = "; ".join(
                f"{' < '.join(order_)} (`{recs[0].key}`)" for order_, recs in rankings.items()
            )
            f.shows.append(
                f"The ranking is not stable: the {n} jobs give {k} different orders: {listed}."
            )
            f.noisy = True

    _grid(s, base, f)
    _expectation(s, base, stat, order, f)
    return f


def _grid(s: MechanismSection, base: str, f: Findings) -> None:
    """Rankings along the grid (mean over the profiler's seeds), flips and growth."""
    rows = [r for rec in s.work.profile for r in (rec.parsed.grid if rec.parsed else [])]
    y = f"{base}_median" if rows and all(f"{base}_median" in r for r in rows) else f"{base}_mean"
    points: dict[tuple[str, float], list[float]] = {}
    x_name = ""
    for record in s.work.profile:
        for row in record.parsed.grid if record.parsed else []:
            xs = [
                k
                for k, v in row.items()
                if k != "variant" and _is_num(v) and not k.startswith(base)
            ]
            if "variant" not in row or y not in row or not xs:
                continue
            x_name = xs[0]
            points.setdefault((str(row["variant"]), float(row[x_name])), []).append(float(row[y]))
    xs_all = sorted({x for _, x in points})
    if len(xs_all) < 2:
        return
    book, key = s.ctx.book, s.mech.key
    names = sorted({v for v, _ in points})
    mean = {p: sum(v) / len(v) for p, v in points.items()}
    lo, hi = xs_all[0], xs_all[-1]

    def at(v: str, x: float) -> str:
        return book.derived(
            f"{key}.analysis.grid.{v}.{x:g}",
            mean[(v, x)],
            "ms",
            formula=f"mean over the profiler's seeds of grid rows variant={v}, {x_name}={x:g}, {y}",
        )

    def x_(x: float) -> str:
        return book.derived(f"{key}.analysis.x", x, "", formula=f"{x_name} of the grid")

    growth = []
    for v in names:
        if (v, lo) in mean and (v, hi) in mean:
            g = book.derived(
                f"{key}.analysis.growth.{v}",
                mean[(v, hi)] / mean[(v, lo)],
                "",
                formula=f"grid mean {v} at {x_name}={hi:g} / at {x_name}={lo:g}",
            )
            growth.append(f"{v} {at(v, lo)} → {at(v, hi)} ms (×{g})")
    f.shows.append(
        f"Along the grid ({x_name} {x_(lo)} to {x_(hi)}, {y.rsplit('_', 1)[1]} per seed, "
        "mean over seeds): " + "; ".join(growth) + "."
    )
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if not all(p in mean for p in ((a, lo), (b, lo), (a, hi), (b, hi))):
                continue
            if (mean[(a, lo)] < mean[(b, lo)]) == (mean[(a, hi)] < mean[(b, hi)]):
                continue

            def flip(a: str = a, b: str = b) -> str:
                at_lo = "faster" if mean[(a, lo)] < mean[(b, lo)] else "slower"
                at_hi = "faster" if at_lo == "slower" else "slower"
                slow, fast = (a, b) if at_hi == "slower" else (b, a)
                return (
                    f"the ranking flips across the grid: {a} is {at_lo} than {b} at {x_name} "
                    f"{x_(lo)} ({at(a, lo)} vs {at(b, lo)} ms) but {at_hi} at {x_(hi)} "
                    f"({at(a, hi)} vs {at(b, hi)} ms), so {slow}'s step grows faster with "
                    f"{x_name}.{arithmetic(s, fast, slow)}"
                ).rstrip(".")

            text = flip()
            f.shows.append(text[0].upper() + text[1:] + ".")
            f.gotchas.append(
                f"From this run: {flip()}. A ranking measured at one context length does not "
                "hold at another."
            )


def _expectation(s: MechanismSection, base: str, stat: str, order: list[str], f: Findings) -> None:
    """Against the expectation from the cache sizes, and the alternative timed forms."""
    variants = s.result.variants
    book, key = s.ctx.book, s.mech.key
    size = "cache_bytes_per_token"
    if all(_is_num(v.get(size)) for v in variants.values()):
        by_size = sorted(variants, key=lambda v: float(variants[v][size]))
        inverted = [
            (a, b)
            for a in variants
            for b in variants
            if float(variants[a][size]) < float(variants[b][size])
            and float(variants[a][stat]) > float(variants[b][stat])
        ]
        if inverted:
            a, b = max(
                inverted, key=lambda p: float(variants[p[1]][size]) / float(variants[p[0]][size])
            )

            def ratio() -> str:
                return book.derived(
                    f"{key}.analysis.cache_ratio.{a}.{b}",
                    float(variants[b][size]) / float(variants[a][size]),
                    "",
                    formula=f"variants.{b}.{size} / variants.{a}.{size}, job {s.main.key}",
                )

            def ms(v: str) -> str:
                return s.measured(f"{key}.analysis.exp.{v}", f"variants.{v}.{stat}", "ms")

            text = (
                f"Against the expectation from the cache sizes: {a} caches {ratio()}× less than "
                f"{b} per token, yet its step is slower here ({ms(a)} vs {ms(b)} ms)."
                f"{arithmetic(s, b, a)} A decode "
                "step that reads less cache is faster only when reading the cache is what it "
                "waits for; this toy-size CPU run is not in that regime, so its latency says "
                "nothing about a throughput claim at full scale."
            )
            f.shows.append(text)
            f.contradicts.append(text)
            f.gotchas.append(
                f"From this run: a smaller cache did not make a faster step: {a} caches "
                f"{ratio()}× less than {b} but was slower ({ms(a)} vs {ms(b)} ms). Memory savings "
                "become speed only where decode is memory-bound (large batch and context on a GPU)."
            )
        if by_size != order:
            f.shows.append(
                "Order by cache size, smallest first: "
                + " < ".join(by_size)
                + "; order by time, fastest first: "
                + " < ".join(order)
                + "."
            )
        else:
            f.shows.append(
                "The order by time follows the order by cache size (smallest first: "
                + " < ".join(by_size)
                + "), as a memory-bound decode step would; at this size the gaps may still "
                "be noise (see above)."
            )
    for v, values in variants.items():
        for k in values:
            alt = re.fullmatch(rf"(\w+)_{base}_mean", k)
            if not alt or not _is_num(values[k]):
                continue
            form = alt.group(1)
            main_form = str(values.get(base.split("_")[0] + "_form", "timed"))

            def pair(v: str = v, k: str = k, form: str = form, main_form: str = main_form):
                # Registered at each printing: the verifier counts every copy.
                alt_ms = s.measured(f"{key}.analysis.{v}.{form}", f"variants.{v}.{k}", "ms")
                main_ms = s.measured(
                    f"{key}.analysis.{v}.{main_form}", f"variants.{v}.{base}_mean", "ms"
                )
                return alt_ms, main_ms

            alt_ms, main_ms = pair()
            f.shows.append(
                f"{v} was also timed in its {form} form: {alt_ms} ms per step against {main_ms} ms "
                f"for the {main_form} form (means)."
            )
            faster = float(values[k]) < float(values[f"{base}_mean"])
            alt_ms, main_ms = pair()
            f.gotchas.append(
                f"From this run: {v}'s {form} form was {'faster' if faster else 'slower'} than "
                f"its {main_form} form ({alt_ms} vs {main_ms} ms per step, means). Which form "
                "wins depends on sizes and hardware: time the form you will deploy."
            )


CARD_BYTES = 12 * 2**30  # an RTX 4070's 12 GB
CONTEXT = 32768  # tokens of context per session for the estimate
CACHE_BYTES = 2  # bf16, the serving dtype the paper's cache figures assume


def capacity(s: MechanismSection) -> list[str]:
    """Concurrent sessions per 12 GB card from the paper's configuration, when computable.

    Needs per-layer cache elements per token measured for each variant, and the paper's
    d_head and layer count in the scale-down record: per-layer cache sizes are linear in
    d_head when the recipe keeps the ratios to it, so full scale = ours x d_h(paper) /
    d_h(ours) x layers(paper) x 2 bytes.
    """
    variants = s.result.variants
    per_layer = "cache_elems_per_token_per_layer"
    rows = {r.name: r for r in s.mech.scale_down}
    ours_dh: Any = s.result.config.get("d_head")
    if not variants or not all(_is_num(v.get(per_layer)) for v in variants.values()):
        return []
    if "d_head" not in rows or "n_layers" not in rows or not _is_num(ours_dh):
        return []
    dh, layers = rows["d_head"].paper, rows["n_layers"].paper
    if dh is None or layers is None:
        return []
    book, key = s.ctx.book, s.mech.key
    ctx = book.config(
        f"{key}.capacity.context",
        CONTEXT,
        "tokens",
        where="a given context per session for the estimate",
    )
    card = book.config(
        f"{key}.capacity.card", 12, "GB", where="an RTX 4070's memory, 12 GB = 12 x 2^30 bytes"
    )
    parts = []
    for v, values in variants.items():
        scale = float(dh) / float(ours_dh) * float(layers) * CACHE_BYTES
        full = float(values[per_layer]) * scale
        where = (
            f"variants.{v}.{per_layer} (job {s.main.key}) x d_h {dh:g} (paper) / d_h "
            f"{ours_dh} (ours) x {layers:g} layers (paper) x {CACHE_BYTES} bytes (bf16)"
        )
        per_token = book.derived(f"{key}.capacity.{v}.bytes", full, "bytes", formula=where)
        session = full * CONTEXT
        gib = book.derived(
            f"{key}.capacity.{v}.gib",
            session / 2**30,
            "GiB",
            formula=f"{where} x {CONTEXT} tokens / 2^30",
        )
        n = book.derived(
            f"{key}.capacity.{v}.sessions",
            CARD_BYTES // session,
            "",
            formula=f"floor(12 x 2^30 / ({where} x {CONTEXT} tokens))",
        )
        parts.append(f"{v}: {per_token} bytes/token, {gib} GiB per session, {n} session(s)")
    return [
        "At the paper's configuration (d_h and layers from the scale-down record) a session "
        f"of {ctx} tokens needs, for the KV cache alone in bf16: "
        + "; ".join(parts)
        + f" per {card} GB card. "
        "Weights, activations and the serving system's overhead come on top (the full model "
        "does not fit on such a card at all): this ranks the cache designs by concurrent "
        "sessions per unit of GPU memory, it is not a deployment plan."
    ]
