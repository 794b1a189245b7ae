"""Offline Profiler policy: the Plan's grid, as argument sets for the approved files.

Each grid entry (label -> argument overrides) becomes one command line over the
arguments of the approved main job; the Profiler node runs it with the approved job's
files, so nothing runs that the code gate did not show.
"""

from __future__ import annotations

from agents.offline.reproducer import recipe_argv
from reprodesk.plan import MechanismPlan
from reprodesk.state import Reproduction


def profile(mech: MechanismPlan, approved: Reproduction) -> list[tuple[str, list[str]]]:
    """(label, argv) per grid point, e.g. MLA's context-length grid over two seeds."""
    return [
        (f"{mech.key}-{label}", recipe_argv(approved.script, {**approved.args, **overrides}))
        for label, overrides in mech.grid.items()
    ]
