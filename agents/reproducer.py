"""Reproducer: turn the Reader's target into a job the sandbox can run.

Offline policy: take the catalog recipe and scale it (the recipe's `scale`)
so that it runs in seconds on a CPU while keeping the ratios the paper's claims
depend on (for MLA: d_c/d_h, d_h^R/d_h and the head count). Every choice is written into the
scale-down record with its source: a page of the paper, or why a default was
used.

Repair loop: a run that timed out or ran out of memory is retried smaller; a
run whose code failed is not retried blindly — offline mode cannot rewrite a
recipe, so the run ends with the error, for a human or an LLM Reproducer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from agents.deps import Deps
from recipes.catalog import CATALOG, Args
from reprodesk.schemas import Digest, Job, Outcome, Reproduction, RunState, ScaleRow


def _stated(found: Digest, page_unit: str = "page") -> dict[str, tuple[float, str]]:
    """The paper's values with their pages, first statement wins (as the Reader found them)."""
    at = "s." if page_unit == "section" else "p."
    out: dict[str, tuple[float, str]] = {}
    for h in found.hyperparameters:
        out.setdefault(h.name, (h.value, f"paper {at}{h.quote.page}"))
    return out


def _shrink(args: Args, keys: tuple[str, ...]) -> Args:
    """A smaller run with the same ratios: the recipe's size arguments halved."""
    smaller = dict(args)
    for key in keys:
        if key in smaller:
            smaller[key] = max(1, int(smaller[key]) // 2)
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
            assert recipe.scale is not None  # the Reader targets only scalable recipes
            scaled = recipe.scale(_stated(state.digest, state.paper.page_unit))
            args = scaled.args
            scale_down = [ScaleRow(**row._asdict()) for row in scaled.rows]
            carries, not_carries = scaled.carries_over, scaled.does_not_carry_over
            note = "first attempt at the CPU scale"
            attempt = 1
        else:
            failed = state.main.result if state.main else None
            shrinkable = [k for k in recipe.shrink if k in previous.args]
            if failed is None or failed.status not in ("timeout", "oom") or not shrinkable:
                why = f"{failed.status}: {failed.message}" if failed else "no result"
                log.warning("reproducer.give_up", reason=why)
                return {
                    "outcome": Outcome(
                        status="failed",
                        message=(
                            f"the {recipe.script} run failed ({why}); offline mode does not "
                            "rewrite recipe code and retries only a timeout or out-of-memory "
                            "of a recipe that declares what to shrink — read the job's "
                            f"stderr with `reprodesk replay {state.run_id} --step N`"
                        ),
                    )
                }
            args = _shrink(previous.args, recipe.shrink)
            note = (
                f"the previous attempt ended with {failed.status}, so this one halved "
                f"{', '.join(shrinkable)} (ratios unchanged)"
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
