"""The seam: one typed policy per agent. Offline (catalog) and LLM policies plug in here.

An agent module (`agents/<agent>.py`) keeps the logging and the state plumbing and
calls its policy from `Deps.policies`; a policy sees plain typed inputs and returns a
typed output, so adding a model changes no graph wiring. `offline_policies()` builds
the deterministic set (the recipe catalog, no network).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reprodesk.plan import MechanismPlan, Plan
from reprodesk.schemas import Critique, Digest, Draft, Limits, Paper
from reprodesk.state import MechanismRun, Reproduction, RunState


class ReadPolicy(Protocol):
    """Reader: the digest and the Plan of a paper; `restrict` selects mechanisms by key."""

    def __call__(self, paper: Paper, restrict: Sequence[str]) -> tuple[Digest, Plan]: ...


class ReproducePolicy(Protocol):
    """Reproducer: a job for a mechanism; a repaired job after a failure, or a revised one
    after a human's request at the code gate — or, as a string, why it cannot."""

    def propose(self, mech: MechanismPlan, paper: Paper) -> Reproduction | str: ...

    def repair(self, mech: MechanismPlan, work: MechanismRun) -> Reproduction | str: ...

    def revise(
        self, mech: MechanismPlan, work: MechanismRun, request: str
    ) -> Reproduction | str: ...


class ProfilePolicy(Protocol):
    """Profiler: (label, argv) per extra job; the node runs each with the approved files."""

    def __call__(
        self, mech: MechanismPlan, approved: Reproduction
    ) -> list[tuple[str, list[str]]]: ...


class WritePolicy(Protocol):
    """Writer: the draft write-up from the Plan and the typed results in state."""

    def __call__(self, state: RunState) -> Draft: ...


class ReviewPolicy(Protocol):
    """Finance-Critic: blocking issues and notes on a draft; `round_` counts from 1."""

    def __call__(self, draft: Draft, round_: int) -> Critique: ...


@dataclass(frozen=True)
class Policies:
    """One policy per agent."""

    read: ReadPolicy
    reproduce: ReproducePolicy
    profile: ProfilePolicy
    write: WritePolicy
    review: ReviewPolicy
    name: str = "offline"
    known_mechanisms: tuple[str, ...] = ()  # what `--mechanism` may name; () = anything


def offline_policies(limits: Limits) -> Policies:
    """The catalog-backed policies: the whole pipeline with no model and no network."""
    from agents import offline
    from agents.offline.reader import KNOWN

    return Policies(
        read=offline.read,
        reproduce=offline.OfflineReproducer(limits),
        profile=offline.profile,
        write=offline.write,
        review=offline.review,
        name="offline",
        known_mechanisms=KNOWN,
    )
