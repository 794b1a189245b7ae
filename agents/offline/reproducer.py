"""Offline Reproducer policy: the catalog recipe's file, at the Plan's scale.

`propose` takes the recipe the Plan names and the arguments the Plan holds (the
Reader's CPU scale-down, or the user's edit at the plan gate). `repair` retries a
timeout or out-of-memory smaller: the size arguments the Plan lists are halved, ratios
untouched. Any other failure is not retried blindly — offline mode cannot rewrite a
recipe — so it gives up with the error, for a human or an LLM Reproducer.
"""

from __future__ import annotations

from pathlib import Path

from reprodesk.plan import Args, MechanismPlan
from reprodesk.schemas import Job, Limits, Paper
from reprodesk.state import MechanismRun, Reproduction

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
HARNESS = "harness.py"  # what every recipe imports: recipes/README.md


def recipe_argv(script: str, args: Args) -> list[str]:
    argv = ["python", script]
    for name, value in args.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return [*argv, "--out", "out"]


def _shrink(args: Args, keys: list[str]) -> Args:
    smaller = dict(args)
    for key in keys:
        if key in smaller:
            smaller[key] = max(1, int(smaller[key]) // 2)
    return smaller


class OfflineReproducer:
    """Builds jobs from the recipe files under `recipes_dir`."""

    def __init__(self, limits: Limits, recipes_dir: Path = RECIPES_DIR) -> None:
        self.limits = limits
        self.recipes_dir = recipes_dir

    def _job(self, script: str, args: Args) -> Job:
        # The recipe and the harness it imports, side by side in the job dir: both are
        # shown at the code gate and both are in the job's code hash.
        files = {
            name: (self.recipes_dir / name).read_text(encoding="utf-8")
            for name in (script, HARNESS)
        }
        return Job(files=files, argv=recipe_argv(script, args), limits=self.limits)

    def propose(self, mech: MechanismPlan, paper: Paper) -> Reproduction:
        del paper  # the Plan already holds what the paper states
        assert mech.script is not None  # only reproducible mechanisms are proposed
        return Reproduction(
            mechanism=mech.key,
            script=mech.script,
            args=dict(mech.args),
            job=self._job(mech.script, mech.args),
            attempt=1,
            note="first attempt at the CPU scale",
        )

    def repair(self, mech: MechanismPlan, work: MechanismRun) -> Reproduction | str:
        previous, failed = work.reproduction, work.main
        assert previous is not None and failed is not None
        result = failed.result
        shrinkable = [k for k in mech.shrink if k in previous.args]
        if result.status not in ("timeout", "oom", "quota") or not shrinkable:
            why = f"{result.status}: {result.message}"
            return (
                f"the {previous.script} run failed ({why}); offline mode does not rewrite "
                "recipe code and retries only a timeout, out-of-memory or disk quota of a "
                "recipe that declares what to shrink"
            )
        args = _shrink(previous.args, shrinkable)
        return Reproduction(
            mechanism=mech.key,
            script=previous.script,
            args=args,
            # The same files that the code gate showed, with new arguments.
            job=previous.job.model_copy(update={"argv": recipe_argv(previous.script, args)}),
            attempt=previous.attempt + 1,
            note=(
                f"the previous attempt ended with {result.status}, so this one halved "
                f"{', '.join(shrinkable)} (ratios unchanged)"
            ),
        )

    def revise(self, mech: MechanismPlan, work: MechanismRun, request: str) -> Reproduction | str:
        """Offline mode cannot rewrite code to a request: it says so, and what can."""
        del mech, work
        return (
            f"offline mode does not rewrite recipe code, so it cannot act on the request "
            f"'{request}'; edit the code at the gate (`reprodesk resume RUN --edit FILE`) or "
            "the plan's arguments at the plan gate, or use an LLM Reproducer"
        )
