"""Offline replay: re-execute a finished run from what it recorded, with nothing live.

`replay_offline(app, run_id)` runs the same graph again on the run's own input (the
paper as loaded), under the same run id, in a scratch home (`replays/<run>/` under
the home), with:

- a ledger that only *serves* the original run's finished jobs (same run id, same code,
  same arguments: same key) and records nothing;
- a sandbox that refuses every job — a job the original run did not finish cannot run;
- the gates answered with the decisions the original run recorded (an edited plan or
  edited code included);
- a findings store that stores nothing and reads back only the prior runs the original
  Reader saw, so the replayed Plan is the recorded one.

The write-up it produces is compared byte for byte with the published one. With LLM
policies the recorded model responses would be served the same way; offline policies
are deterministic already.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.types import Command

from agents.deps import Deps
from graphs.graph import build_graph, open_checkpointer
from reprodesk.schemas import Finding, Job, RunResult, UserError
from reprodesk.state import RunState
from sandbox.ledger import Ledger


class RecordedLedger:
    """The original run's finished jobs, read-only."""

    def __init__(self, original: Ledger) -> None:
        self.original = original

    def finished(self, key: str) -> RunResult | None:
        return self.original.finished(key)

    def start(self, key: str, run_id: str, label: str, job: Job) -> None:
        del key, run_id, label, job  # a replay records nothing

    def finish(self, key: str, result: RunResult) -> None:
        del key, result

    def workdirs(self, run_id: str) -> list[str]:
        del run_id
        return []


class RefusingSandbox:
    """Nothing runs in a replay: a job that was not recorded is refused."""

    name = "replay"

    def run(self, job: Job) -> RunResult:
        return RunResult(
            status="refused",
            message=f"not in the recorded run: {' '.join(job.argv[:2])} (a replay runs nothing)",
            backend=self.name,
        )


class _RecordedStore:
    """Stores nothing; reads back only what the original Reader saw (its prior runs)."""

    def __init__(self, original: RunState) -> None:
        self.prior = (
            {m.key: m.prior_runs for m in original.plan.mechanisms} if original.plan else {}
        )

    def add(self, findings: Any) -> int:
        return len(findings)

    def findings(self, filters: Any = None) -> list[Finding]:
        mechanism = str(getattr(filters, "mechanism", "") or "")
        return [
            Finding(
                id=f"{run}:{mechanism}",
                paper="(recorded)",
                source="(recorded)",
                mechanism=mechanism,
                claim="(recorded)",
                metric="(recorded)",
                verdict="not checkable",
                setup="(recorded)",
                evidence="(recorded)",
                run_id=run,
            )
            for run in self.prior.get(mechanism, [])
        ]


@dataclass
class ReplayResult:
    folder: Path
    identical: bool
    original: Path
    message: str


def _answers(original: RunState) -> dict[str, list[dict[str, Any]]]:
    """The original run's gate answers, per gate in order, as resume payloads."""
    out: dict[str, list[dict[str, Any]]] = {}
    for d in original.decisions:
        if d.by != "user":
            continue
        answer: dict[str, Any] = {"approved": d.approved, "reason": d.reason}
        if d.revise:
            answer["revise"] = True
        if d.edited and d.gate == "plan" and original.plan is not None:
            answer["plan"] = original.plan.model_dump(mode="json")
        if d.edited and d.gate == "code":
            answer["edit"] = {
                k: dict(w.reproduction.job.files)
                for k, w in original.work.items()
                if w.reproduction is not None
            }
        out.setdefault(d.gate, []).append(answer)
    return out


def replay_offline(runs: Any, run_id: str) -> ReplayResult:
    """Re-execute `run_id` from its record; compare the write-ups."""
    original = runs.state(run_id)
    if original.outcome is None or original.outcome.status != "published":
        raise UserError(f"run '{run_id}' is not published: only a published run can be replayed")
    inputs = runs.state_at(run_id, 0)  # the input, as the run started
    home = runs.home
    scratch = home / "replays" / run_id
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    deps = Deps(
        home=scratch,
        sandbox=RefusingSandbox(),
        ledger=RecordedLedger(runs.deps.ledger),  # type: ignore[arg-type]
        open_store=lambda: _RecordedStore(original),  # type: ignore[arg-type,return-value]
        policies=runs.deps.policies,
    )
    graph = build_graph(deps, open_checkpointer(scratch / "runs.sqlite"))
    config: Any = {"configurable": {"thread_id": run_id}}
    answers = _answers(original)
    payload: Any = RunState.model_validate(inputs)
    for _ in range(50):  # every gate answered once per visit; bounded all the same
        for _chunk in graph.stream(payload, config, stream_mode="updates", durability="sync"):
            pass
        snap = graph.get_state(config)
        pending = [i for task in snap.tasks for i in task.interrupts]
        if not pending:
            break
        gate = str(pending[0].value.get("gate"))
        queue = answers.get(gate) or []
        if not queue:
            raise UserError(f"replay of '{run_id}': no recorded answer for the {gate} gate")
        payload = Command(resume=queue.pop(0))
    replayed = RunState.model_validate(graph.get_state(config).values)
    folder = scratch / "runs" / run_id
    first = Path(original.outcome.path or home / "runs" / run_id)
    if replayed.outcome is None or replayed.outcome.status != "published":
        status = replayed.outcome.message if replayed.outcome else "did not end"
        return ReplayResult(folder, False, first, f"the replay did not publish: {status}")
    same = (folder / "writeup.md").read_bytes() == (first / "writeup.md").read_bytes()
    message = (
        "identical write-up, byte for byte"
        if same
        else f"the write-ups differ: diff {first / 'writeup.md'} {folder / 'writeup.md'}"
    )
    return ReplayResult(folder, same, first, message)
