"""The run service: every front end (CLI, a web page, a test) drives runs through `Runs`.

It owns the run lifecycle over the checkpointer and prints nothing: start, resume
(with a decision, or an edited plan), list, status, timeline, state at a step, fork
from a step, and a stream of `Event`s while a run is driven. What a run leaves on disk
besides the checkpoints is written here, whichever front end drives it:

- `review/<run>/<gate>/` when the run pauses at a gate: the full Plan (`plan.json`, the
  file `resume --plan` takes back), the exact files and command of every job (code), the
  draft (publish);
- `runs/<run>/trace.jsonl`, the step timeline, rewritten whenever a drive stops;
- job folders under `cache/jobs/` are removed once the run is published.

Start and resume hold a per-run `Lease`: a second driver of a run that is being driven
is refused with one line naming the holder; the lease of a dead process is taken over.
"""

from __future__ import annotations

import errno
import json
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.types import Command
from pydantic import BaseModel, Field

from agents.deps import Deps
from graphs.gates import check_code_edit, check_plan_edit
from graphs.graph import thread_ids
from graphs.lease import Lease, RunBusy
from graphs.replay import Step, describe, state_at, timeline
from graphs.state import Context
from reprodesk.schemas import Outcome, Paper, UserError
from reprodesk.state import Policy, RunState

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RunView(BaseModel):
    """Where a run stands, for any front end."""

    run_id: str
    source: str
    title: str
    status: str = Field(description="published, failed, ... or 'paused at the X gate'.")
    gate: str | None = Field(default=None, description="The gate it waits at, if any.")
    question: dict[str, Any] | None = Field(default=None, description="What the gate asks.")
    review: str | None = Field(default=None, description="Review folder of the waiting gate.")
    outcome: Outcome | None = None
    mechanisms: list[str] = Field(default_factory=list, description="Selected for this run.")
    not_reproduced: list[str] = Field(
        default_factory=list, description="Contributions of the paper the run did not reproduce."
    )
    next: list[str] = Field(default_factory=list)
    parent: str | None = None
    updated_at: str = ""
    usage: dict[str, Any] = Field(
        default_factory=dict,
        description="LLM requests and tokens (and cost) in all and per node; {} offline.",
    )


@dataclass
class Event:
    """Something that happened while driving a run."""

    kind: Literal["step", "paused", "ended"]
    run_id: str
    nodes: list[str] = field(default_factory=list)
    summary: str = ""
    next: list[str] = field(default_factory=list)
    view: RunView | None = None  # on "paused" and "ended"


def _config(run_id: str, checkpoint_id: str | None = None) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": run_id}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def check_run_id(run_id: str, label: str = "--run-id") -> str:
    if not _RUN_ID.match(run_id):
        raise UserError(
            f"{label} '{run_id}': use 1-64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    return run_id


class Runs:
    """Runs in one home, over one compiled graph and its checkpointer."""

    def __init__(self, graph: Any, deps: Deps) -> None:
        self.graph = graph
        self.deps = deps
        self.home = deps.home

    # ------------------------------------------------------------------ queries

    def run_ids(self) -> list[str]:
        """Newest first."""
        return thread_ids(self.graph.checkpointer)

    def _snapshot(self, run_id: str) -> Any:
        snap = self.graph.get_state(_config(run_id))
        if not snap.values:
            raise UserError(
                f"unknown run id '{run_id}': no such run in {self.home} (see `reprodesk runs`)"
            )
        return snap

    def state(self, run_id: str) -> RunState:
        return RunState.model_validate(self._snapshot(run_id).values)

    def status(self, run_id: str) -> RunView:
        return self._view(self._snapshot(run_id))

    def views(self) -> list[RunView]:
        return [self.status(r) for r in self.run_ids()]

    def timeline(self, run_id: str) -> list[Step]:
        return timeline(self.graph, run_id)

    def state_at(self, run_id: str, step: int) -> dict[str, Any]:
        return state_at(self.graph, run_id, step)

    def _view(self, snap: Any) -> RunView:
        state = RunState.model_validate(snap.values)
        pending = [i for task in snap.tasks for i in task.interrupts]
        gate = pending[0].value.get("gate") if pending else None
        status: str
        if state.outcome is not None:
            status = state.outcome.status
        elif gate:
            status = f"paused at the {gate} gate"
        elif snap.next:
            status = f"interrupted before {', '.join(snap.next)} (resume it)"
        else:
            status = "ended"
        plan = state.plan
        return RunView(
            run_id=state.run_id,
            source=state.source,
            title=state.paper.title,
            status=status,
            gate=gate,
            question=pending[0].value if pending else None,
            review=str(self.home / "review" / state.run_id / gate) if gate else None,
            outcome=state.outcome,
            mechanisms=[m.key for m in plan.to_reproduce()] if plan else [],
            not_reproduced=[m.title for m in plan.not_reproduced()] if plan else [],
            next=list(snap.next),
            parent=state.parent,
            updated_at=str(snap.created_at or ""),
            usage=_usage(self.home, state.run_id),
        )

    # ------------------------------------------------------------------ driving

    def new_run_id(self, paper: Paper, wanted: str | None = None) -> str:
        if wanted is not None:
            check_run_id(wanted)
            if wanted in self.run_ids():
                raise UserError(f"--run-id '{wanted}': a run with this id exists; pick another")
            return wanted
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", paper.title[:24].strip().lower()).strip("-.")
        return f"{stem or 'run'}-{uuid.uuid4().hex[:8]}"

    def start(
        self,
        paper: Paper,
        *,
        policy: Policy,
        run_id: str | None = None,
        restrict: Sequence[str] = (),
    ) -> Iterator[Event]:
        """Create a run and drive it until it pauses at a gate or ends."""
        known = self.deps.policies.known_mechanisms
        for name in restrict:
            if known and name not in known:
                raise UserError(
                    f"--mechanism {name}: not a mechanism this mode knows (known: "
                    f"{', '.join(known)})"
                )
        run_id = self.new_run_id(paper, run_id)
        state = RunState(
            run_id=run_id,
            source=paper.source,
            paper=paper,
            policy=policy,
            restrict=list(dict.fromkeys(restrict)),
        )
        return self._drive(run_id, state)

    def resume(
        self,
        run_id: str,
        *,
        approve: bool | None = None,
        reason: str = "",
        plan: Any = None,
        plan_label: str = "--plan",
        edit: dict[str, dict[str, str]] | None = None,
        revise: bool = False,
        auto_approve: bool = False,
    ) -> Iterator[Event]:
        """Continue a paused or interrupted run; at a gate, with a decision.

        Everything is checked before anything moves: an ended run, a missing decision,
        a plan file that does not validate — each a UserError, the run stays as it was.
        """
        snap = self._snapshot(run_id)
        view = self._view(snap)
        if view.outcome is not None or not snap.next:
            raise UserError(f"run '{run_id}' has already ended ({view.status}); nothing to resume")
        payload: Any = None  # crashed mid-node: continue from the last checkpoint
        if view.gate is not None:
            if plan is not None and view.gate != "plan":
                raise UserError(f"{plan_label}: run '{run_id}' waits at the {view.gate} gate")
            if approve is None and plan is None and not edit and not revise:
                raise UserError(
                    f"run '{run_id}' waits at the {view.gate} gate: approve or reject it"
                )
            if (edit or revise) and view.gate != "code":
                raise UserError(f"run '{run_id}' waits at the {view.gate} gate, not the code gate")
            answer: dict[str, Any] = {"approved": approve is not False, "reason": reason}
            if revise:
                answer = {"approved": False, "revise": True, "reason": reason}
            if edit:
                check_code_edit(RunState.model_validate(snap.values), edit, "--edit")
                answer["edit"] = edit
            if plan is not None:
                state = RunState.model_validate(snap.values)
                answer["plan"] = check_plan_edit(state, plan, plan_label).model_dump(mode="json")
            payload = Command(resume=answer)
        seen = str(snap.config["configurable"].get("checkpoint_id", ""))
        return self._drive(run_id, payload, auto_approve=auto_approve, expect=seen)

    def fork(self, run_id: str, step: int, new_run_id: str | None = None) -> str:
        """A new run continuing from `step` of `run_id` (which stays as it is)."""
        steps = self.timeline(run_id)
        at = next((s for s in steps if s.step == step), None)
        if at is None:
            raise UserError(f"run '{run_id}' has no step {step} (see `reprodesk replay {run_id}`)")
        if not at.ran:
            raise UserError(f"--fork {step}: step {step} is the run's input; start a new run")
        values = dict(self.state_at(run_id, step))
        state = RunState.model_validate(values)
        new_id = new_run_id or f"{run_id[:40]}-fork{step}-{uuid.uuid4().hex[:4]}"
        check_run_id(new_id)
        if new_id in self.run_ids():
            raise UserError(f"--run-id '{new_id}': a run with this id exists; pick another")
        forked = state.model_copy(update={"run_id": new_id, "parent": f"{run_id}@{step}"})
        self.graph.update_state(_config(new_id), forked, as_node=at.ran[-1])
        return new_id

    def _drive(
        self, run_id: str, payload: Any, *, auto_approve: bool = False, expect: str | None = None
    ) -> Iterator[Event]:
        """Stream the graph under the run's lease; the run policy's auto-approve holds too.

        `expect`: the checkpoint the caller's decision was made on. If another driver
        moved the run on meanwhile, the decision is stale and is refused.
        """
        with Lease(self.home, run_id):
            config = _config(run_id)
            if expect is not None:
                now = self.graph.get_state(config).config["configurable"].get("checkpoint_id")
                if str(now) != expect:
                    raise RunBusy(
                        f"run '{run_id}' moved on while this decision was prepared (another "
                        f"driver); see `reprodesk runs` for where it stands now"
                    )
            context = Context(auto_approve=auto_approve)
            try:
                for chunk in _disk_errors_as_user_errors(
                    run_id,
                    self.home,
                    self.graph.stream(
                        payload, config, context=context, stream_mode="updates", durability="sync"
                    ),
                ):
                    ran = [node for node in chunk if not node.startswith("__")]
                    if ran:
                        snap = self.graph.get_state(config)
                        yield Event(
                            "step",
                            run_id,
                            nodes=ran,
                            summary=describe(ran, snap.values),
                            next=list(snap.next),
                        )
            finally:
                self._after_drive(run_id)
            view = self.status(run_id)
            yield Event("paused" if view.gate else "ended", run_id, view=view)

    def _after_drive(self, run_id: str) -> None:
        """Files of the run layer: review material at a gate, the trace, job-dir cleanup."""
        snap = self.graph.get_state(_config(run_id))
        if not snap.values:
            return
        view = self._view(snap)
        state = RunState.model_validate(snap.values)
        if view.gate is not None:
            write_review(self.home / "review" / run_id / view.gate, view.gate, state, view)
        folder = self.home / "runs" / run_id
        folder.mkdir(parents=True, exist_ok=True)
        lines = [s.model_dump_json() for s in self.timeline(run_id)]
        tmp = folder / ".trace.jsonl.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(folder / "trace.jsonl")
        if state.outcome is not None and state.outcome.status == "published":
            self.remove_job_dirs(run_id)

    def remove_job_dirs(self, run_id: str) -> int:
        from sandbox.retention import remove_job_dirs

        return remove_job_dirs(self.deps.jobs_dir(), self.deps.ledger.workdirs(run_id))


def _usage(home: Path, run_id: str) -> dict[str, Any]:
    """What the run's model requests cost, as `reprodesk.models.Recorder` keeps it."""
    path = home / "llm" / run_id / "usage.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _disk_errors_as_user_errors(run_id: str, home: Path, chunks: Iterator[Any]) -> Iterator[Any]:
    """A full disk or an unwritable folder is one line naming the path; the run stays
    at its last checkpoint, so `resume` continues once there is space again."""
    try:
        yield from chunks
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        where = exc.filename or home
        raise UserError(
            f"{where}: {exc.strerror or exc}; run '{run_id}' is checkpointed before this "
            f"step: free space or fix the permissions, then `reprodesk resume {run_id}`"
        ) from exc


def write_review(folder: Path, gate: str, state: RunState, view: RunView) -> None:
    """What the gate asks about, in full, as files a human can read and edit."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "question.json").write_text(json.dumps(view.question, indent=2) + "\n")
    if gate == "plan" and state.plan is not None:
        (folder / "plan.json").write_text(state.plan.model_dump_json(indent=2) + "\n")
    elif gate == "code":
        for key, w in state.work.items():
            if w.status != "pending" or w.reproduction is None:
                continue
            sub = folder / key
            sub.mkdir(exist_ok=True)
            for name, text in w.reproduction.job.files.items():
                (sub / name).write_text(text, encoding="utf-8")
            (sub / "command.txt").write_text(" ".join(w.reproduction.job.argv) + "\n")
    elif gate == "publish" and state.draft is not None:
        (folder / "writeup.md").write_text(state.draft.markdown, encoding="utf-8")
