"""Reproducer: turn the Reader's target into a job the sandbox can run.

Offline policy: take the catalog recipe and scale it so that it runs in seconds
on a CPU while keeping the ratios the paper's claims depend on (for MLA:
d_c/d_h, d_h^R/d_h and the head count). Every choice is written into the
scale-down record with its source: a page of the paper, or why a default was
used.

Repair loop: a run that timed out or ran out of memory is retried smaller; a
run whose code failed is not retried blindly — offline mode cannot rewrite a
recipe, so the run ends with the error, for a human or an LLM Reproducer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import structlog

from agents.deps import Deps
from recipes.catalog import CATALOG
from reprodesk.schemas import Digest, Job, Outcome, Reproduction, RunState, ScaleRow

# DeepSeek-V2's values, used only when a paper does not state its own.
_MLA_DEFAULTS: dict[str, float] = {
    "n_heads": 128,
    "d_head": 128,
    "d_c": 512,
    "d_rope": 64,
    "n_layers": 60,
}
_SMALL_D_HEAD = (8, 16, 32)  # tried in order: the smallest that keeps the ratios exact
_MAX_HEADS = 128
_LAYERS = 2


def _paper_values(found: Digest) -> dict[str, tuple[float, str]]:
    return {h.name: (h.value, f"paper p.{h.quote.page}") for h in found.hyperparameters}


Args = dict[str, float | int | str]


class Scaled(NamedTuple):
    args: Args
    rows: list[ScaleRow]
    carries_over: list[str]
    does_not_carry_over: list[str]


def _scale_mla(found: Digest) -> Scaled:
    stated = _paper_values(found)
    paper: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, default in _MLA_DEFAULTS.items():
        value, where = stated.get(name, (default, "not stated; DeepSeek-V2 default"))
        paper[name] = value
        source[name] = where
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
    d_c = max(1, round(ratio_c * d_head))
    d_rope = max(2, 2 * round(ratio_r * d_head / 2))
    n_heads = int(min(paper["n_heads"], _MAX_HEADS))
    groups = next(g for g in (8, 4, 2, 1) if n_heads % g == 0)
    args: Args = {
        "n_heads": n_heads,
        "d_head": d_head,
        "d_c": d_c,
        "d_rope": d_rope,
        "n_layers": _LAYERS,
        "gqa_groups": groups,
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
        ScaleRow(
            name=name,
            description=descriptions[name],
            paper=paper[name],
            ours=float(args[name]),
            source=source[name],
        )
        for name in descriptions
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


# One scaler per recipe: how to shrink the paper's configuration for a CPU run.
SCALERS: dict[str, Callable[[Digest], Scaled]] = {"mla": _scale_mla}


def _shrink(args: Args) -> Args:
    """A smaller run with the same ratios: fewer tokens, same architecture."""
    smaller = dict(args)
    smaller["prompt_len"] = max(8, int(args["prompt_len"]) // 2)
    smaller["steps"] = max(4, int(args["steps"]) // 2)
    return smaller


def recipe_argv(script: str, args: Args) -> list[str]:
    argv = ["python", script]
    for name, value in args.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, "--out", "out"]


def build_job(deps: Deps, script: str, args: Args) -> Job:
    code = (deps.recipes_dir / script).read_text(encoding="utf-8")
    return Job(files={script: code}, argv=recipe_argv(script, args), limits=deps.limits)


def make_reproducer(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    def reproducer(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="reproducer")
        assert state.target is not None and state.digest is not None  # routed here only then
        recipe = CATALOG[state.target]
        assert recipe.script is not None
        previous = state.reproduction
        if previous is None:
            scaled = SCALERS[recipe.key](state.digest)
            args, scale_down = scaled.args, scaled.rows
            carries, not_carries = scaled.carries_over, scaled.does_not_carry_over
            note = "first attempt at the CPU scale"
            attempt = 1
        else:
            failed = state.main.result if state.main else None
            if failed is None or failed.status not in ("timeout", "oom"):
                why = f"{failed.status}: {failed.message}" if failed else "no result"
                log.warning("reproducer.give_up", reason=why)
                return {
                    "outcome": Outcome(
                        status="failed",
                        message=(
                            f"the {recipe.script} run failed ({why}); offline mode does not "
                            "rewrite recipe code — read the job's stderr with "
                            f"`reprodesk replay {state.run_id}`"
                        ),
                    )
                }
            args = _shrink(previous.args)
            note = (
                f"the previous attempt ended with {failed.status}, so this one halved the "
                "prompt and the decode steps (ratios unchanged)"
            )
            attempt = previous.attempt + 1
            scale_down = previous.scale_down
            carries, not_carries = previous.carries_over, previous.does_not_carry_over
        job = build_job(deps, recipe.script, args)
        log.info("reproducer.job", script=recipe.script, attempt=attempt, args=args)
        return {
            "reproduction": Reproduction(
                mechanism=recipe.key,
                script=recipe.script,
                args=args,
                scale_down=scale_down,
                carries_over=carries,
                does_not_carry_over=not_carries,
                job=job,
                attempt=attempt,
                note=note,
            )
        }

    return reproducer
