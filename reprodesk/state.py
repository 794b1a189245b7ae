"""The graph's state for one run, and the pieces agents hand each other through it.

Declared outside `graphs` so that agents can type their nodes without importing the
graph (arrows point one way). A run reproduces one or more mechanisms of its Plan;
each has its own `MechanismRun` (job, attempts, profile) under `RunState.work`.
"""

from __future__ import annotations

import operator
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from reprodesk.plan import Args, Plan
from reprodesk.results import RecipeResult
from reprodesk.schemas import Critique, Decision, Digest, Draft, Job, Outcome, Paper, RunResult


class Reproduction(BaseModel):
    """The Reproducer's output for one mechanism: what runs, and why at this size."""

    mechanism: str
    script: str = Field(description="Entry file of the job, e.g. 'mla.py'.")
    args: Args
    job: Job
    attempt: int = Field(description="1 for the first try, +1 per repair.")
    note: str = ""


class JobRecord(BaseModel):
    """A job the run launched (or reused from the ledger) and what it returned."""

    label: str
    key: str = Field(description="Ledger key: run id, code hash and arguments.")
    code_hash: str = Field(default="", description="sha256 over the job's files.")
    result: RunResult
    parsed: RecipeResult | None = Field(
        default=None, description="The metrics line, validated; None when it did not."
    )
    reused: bool = False


class MechanismRun(BaseModel):
    """One mechanism's way through the run: its job, its repairs, its profile."""

    key: str
    reproduction: Reproduction | None = None
    main: JobRecord | None = Field(default=None, description="The latest main job's result.")
    attempts: int = Field(default=0, description="Main-job launches so far (repair loop).")
    history: list[JobRecord] = Field(
        default_factory=list, description="Earlier failed attempts, oldest first."
    )
    profile: list[JobRecord] = Field(default_factory=list)
    gave_up: str = Field(default="", description="Why the repair loop stopped, if it did.")
    revision: str = Field(
        default="", description="A revision the human asked for at the code gate, not yet made."
    )

    @property
    def main_label(self) -> str:
        attempt = self.reproduction.attempt if self.reproduction else 0
        return f"{self.key}-attempt{attempt}"

    @property
    def status(self) -> Literal["pending", "ok", "failed", "retry"]:
        """pending: a job waits to run; retry: its last attempt failed, the Reproducer decides."""
        if self.gave_up:
            return "failed"
        if self.revision:
            return "retry"  # back to the Reproducer with the human's request
        if self.reproduction is None or self.main is None or self.main.label != self.main_label:
            return "pending"
        if self.main.result.status == "ok" and self.main.parsed is not None:
            return "ok"
        return "retry"


class Policy(BaseModel):
    """Per-run policy, fixed at start so that a resumed run keeps it."""

    gates: list[str] = Field(default_factory=lambda: ["code", "publish"])
    approvals: dict[str, str] = Field(
        default_factory=dict, description="Per gate ask / auto / skip; overrides `gates`."
    )
    auto_approve: bool = Field(default=False, description="Approve every asking gate.")

    def approval(self, gate: str) -> str:
        """ask, auto or skip for `gate`."""
        return self.approvals.get(gate) or ("ask" if gate in self.gates else "skip")

    max_repair_attempts: int = 3
    max_critic_rounds: int = 2
    langs: list[str] = Field(
        default_factory=lambda: ["en"], description="Write-up languages: en, and zh too."
    )


class RunState(BaseModel):
    """The graph's state for one run (one LangGraph thread).

    Every field but `decisions` is last-write-wins; `decisions` appends. Nodes that
    change `work` return the whole dict.
    """

    run_id: str = Field(description="The LangGraph thread id.")
    source: str = Field(description="What the user gave.")
    paper: Paper = Field(description="The loaded paper; untrusted text.")
    policy: Policy = Field(default_factory=Policy, description="Gates and loop bounds.")
    restrict: list[str] = Field(
        default_factory=list, description="--mechanism: reproduce only these (empty: all)."
    )
    parent: str | None = Field(default=None, description="Run this one was forked from.")
    digest: Digest | None = Field(default=None, description="Reader: mechanisms, claims, values.")
    plan: Plan | None = Field(default=None, description="Reader: what to reproduce, and how.")
    decisions: Annotated[list[Decision], operator.add] = Field(
        default_factory=list, description="Gate answers, in order."
    )
    work: dict[str, MechanismRun] = Field(
        default_factory=dict, description="Per mechanism: job, attempts, profile."
    )
    draft: Draft | None = Field(default=None, description="Writer: the write-up, unpublished.")
    critique: Critique | None = Field(default=None, description="Finance-Critic: the review.")
    critic_rounds: int = Field(default=0, description="Writer<->Critic rounds so far.")
    outcome: Outcome | None = Field(default=None, description="Set when the run ends.")

    def last_decision(self, gate: str) -> Decision | None:
        return next((d for d in reversed(self.decisions) if d.gate == gate), None)

    def runs_ok(self) -> list[MechanismRun]:
        """Mechanisms whose main job succeeded, in plan order."""
        return [w for w in self.work.values() if w.status == "ok"]
