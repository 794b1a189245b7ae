"""The graph's own nodes: the gates, execute and publish.

Gates only ask (`interrupt()`); they have no side effects, because a resumed
gate runs again from its start. `execute` has no interrupt and goes through the
ledger, so a resume never launches a finished job again. `publish` writes the
run folder through a temporary directory and renames it into place, so a crash
never leaves a half-written run folder; findings are upserted by id, so
publishing twice does not duplicate them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agents.deps import Deps
from graphs.state import Context
from reprodesk.schemas import Decision, JobRecord, Outcome, RunState
from tools.figures import render
from tools.run_code import run_job

GateNode = Callable[[RunState, Runtime[Context]], dict[str, Any]]


def gate_summary(gate: str, state: RunState) -> dict[str, Any]:
    """What the human sees at a gate: enough to decide, nothing to scroll."""
    if gate == "plan":
        assert state.digest is not None
        return {
            "mechanism": state.target,
            "mechanisms_found": [m.name for m in state.digest.mechanisms],
            "hyperparameters": {h.name: h.value for h in state.digest.hyperparameters},
            "claims": len(state.digest.claims),
        }
    if gate == "code":
        assert state.reproduction is not None
        repro = state.reproduction
        return {
            "script": repro.script,
            "command": " ".join(repro.job.argv),
            "lines_of_code": sum(len(t.splitlines()) for t in repro.job.files.values()),
            "attempt": repro.attempt,
            "limits": repro.job.limits.model_dump(),
        }
    assert state.draft is not None
    critique = state.critique
    return {
        "tldr": state.draft.markdown.split("## TL;DR", 1)[-1].split("\n## ", 1)[0].strip(),
        "findings": len(state.draft.findings),
        "critic_approved": bool(critique and critique.approved),
        "critic_issues": critique.issues if critique else [],
    }


def make_gate(gate: str) -> GateNode:
    def node(state: RunState, runtime: Runtime[Context]) -> dict[str, Any]:
        if gate not in state.policy.gates:
            return {"decisions": [Decision(gate=gate, approved=True, by="policy")]}
        if runtime.context is not None and runtime.context.auto_approve:
            return {"decisions": [Decision(gate=gate, approved=True, by="auto")]}
        answer = interrupt({"gate": gate, "run_id": state.run_id, **gate_summary(gate, state)})
        approved = bool(answer.get("approved")) if isinstance(answer, dict) else bool(answer)
        reason = str(answer.get("reason", "")) if isinstance(answer, dict) else ""
        update: dict[str, Any] = {
            "decisions": [Decision(gate=gate, approved=approved, reason=reason, by="user")]
        }
        if not approved:
            update["outcome"] = Outcome(
                status="rejected", message=f"rejected at the {gate} gate: {reason or 'no reason'}"
            )
        return update

    node.__name__ = f"{gate}_gate"
    return node


def make_execute(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    def execute(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="execute")
        repro = state.reproduction
        assert repro is not None
        label = f"main-attempt{repro.attempt}"
        done = run_job(deps.sandbox, deps.ledger, state.run_id, label, repro.job)
        result = done.result
        if result.status == "ok" and not result.metrics:
            result = result.model_copy(
                update={"status": "error", "message": "the job printed no JSON metrics line"}
            )
        update: dict[str, Any] = {
            "main": JobRecord(label=label, key=done.key, result=result, reused=done.reused),
            "attempts": repro.attempt,
        }
        if result.status != "ok" and repro.attempt >= state.policy.max_repair_attempts:
            update["outcome"] = Outcome(
                status="failed",
                message=(
                    f"{repro.script} failed {repro.attempt} times; last: {result.status}: "
                    f"{result.message}"
                ),
            )
        log.info("execute.done", status=result.status, reused=done.reused)
        return update

    return execute


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def make_publish(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    def publish(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="publish")
        draft, repro, main = state.draft, state.reproduction, state.main
        assert draft is not None and repro is not None and main is not None
        final = deps.runs_dir() / state.run_id
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{state.run_id}.", dir=final.parent))
        try:
            for sub in ("code", "results", "figures"):
                (staging / sub).mkdir()
            _write_json(
                staging / "paper.json",
                {
                    "source": state.paper.source,
                    "title": state.paper.title,
                    "sha256": state.paper.sha256,
                    "digest": state.digest.model_dump() if state.digest else None,
                },
            )
            for name, text in repro.job.files.items():
                (staging / "code" / name).write_text(text, encoding="utf-8")
            (staging / "code" / "command.txt").write_text(" ".join(repro.job.argv) + "\n")
            for record in [main, *state.profile]:
                out = staging / "results" / record.key
                out.mkdir(exist_ok=True)
                _write_json(out / "metrics.json", record.result.metrics)
                _write_json(out / "result.json", record.result.model_dump(mode="json"))
                for name, src in record.result.artifacts.items():
                    if Path(src).is_file() and not (out / name).exists():
                        shutil.copy2(src, out / Path(name).name)
            for figure in draft.figures:
                render(figure, staging / "figures" / figure.name)
            (staging / "writeup.md").write_text(draft.markdown, encoding="utf-8")
            _write_json(
                staging / "evidence.json",
                {
                    "run_id": state.run_id,
                    "numbers": [e.model_dump(mode="json") for e in draft.evidence],
                    "findings": [f.model_dump(mode="json") for f in draft.findings],
                    "critique": state.critique.model_dump() if state.critique else None,
                },
            )
            if final.exists():  # a resumed publish replaces its own earlier output
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        stored = deps.open_store().add(draft.findings)
        log.info("publish.done", path=str(final), findings=stored)
        return {
            "outcome": Outcome(
                status="published",
                message=f"write-up at {final / 'writeup.md'}; {stored} findings stored",
                path=str(final),
            )
        }

    return publish
