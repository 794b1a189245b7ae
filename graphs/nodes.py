"""The graph's own nodes: the gates, execute and publish.

Gates only ask (`interrupt()`); they have no side effects, because a resumed gate runs
again from its start. `execute` has no interrupt and goes through the ledger, so a
resume never launches a finished job again; it validates each job's metrics line into
typed results, and a line that does not validate fails the attempt with a message
naming the field. `publish` writes the run folder through a temporary directory and
renames it into place, so a crash never leaves a half-written run folder; artifacts
come back as plain data (`sandbox.artifacts`); findings are upserted by id, so
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
from graphs.gates import apply_answer, gate_summary
from graphs.state import Context
from reprodesk.results import validate_metrics
from reprodesk.schemas import Decision, Outcome
from reprodesk.state import JobRecord, RunState
from sandbox.artifacts import copy_artifacts
from tools.figures import render
from tools.run_code import code_hash, run_job
from tools.verify import verify_markdown

GateNode = Callable[[RunState, Runtime[Context]], dict[str, Any]]


def make_gate(gate: str) -> GateNode:
    def node(state: RunState, runtime: Runtime[Context]) -> dict[str, Any]:
        mode = state.policy.approval(gate)
        if mode == "skip":
            return {"decisions": [Decision(gate=gate, approved=True, by="policy")]}
        auto = (
            mode == "auto"
            or state.policy.auto_approve
            or (runtime.context is not None and runtime.context.auto_approve)
        )
        if auto:
            return {"decisions": [Decision(gate=gate, approved=True, by="auto")]}
        answer = interrupt({"gate": gate, "run_id": state.run_id, **gate_summary(gate, state)})
        return apply_answer(gate, state, answer)

    node.__name__ = f"{gate}_gate"
    return node


def make_execute(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    def execute(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="execute")
        work = dict(state.work)
        for key, w in state.work.items():
            if w.status != "pending" or w.reproduction is None:
                continue
            repro = w.reproduction
            label = w.main_label
            done = run_job(deps.sandbox, deps.ledger, state.run_id, label, repro.job)
            result = done.result
            parsed = None
            if result.status == "ok":
                parsed, problem = validate_metrics(result.metrics)
                if parsed is None:
                    result = result.model_copy(update={"status": "error", "message": problem})
            record = JobRecord(
                label=label,
                key=done.key,
                code_hash=code_hash(repro.job.files),
                result=result,
                parsed=parsed,
                reused=done.reused,
            )
            history = [*w.history, w.main] if w.main is not None else list(w.history)
            work[key] = w.model_copy(
                update={"main": record, "attempts": repro.attempt, "history": history}
            )
            log.info("execute.done", mechanism=key, status=result.status, reused=done.reused)
        return {"work": work}

    return execute


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _write_record(record: JobRecord, results: Path) -> None:
    """Host records first, then the job's artifacts as plain data beside them."""
    out = results / record.key
    out.mkdir(exist_ok=True)
    _write_json(out / "metrics.json", record.result.metrics)
    _write_json(out / "result.json", record.result.model_dump(mode="json"))
    for key, name in (("logs/stdout.log", "stdout.log"), ("logs/stderr.log", "stderr.log")):
        log = record.result.artifacts.get(key)  # the host's own log of the job's output
        if log and Path(log).is_file() and not Path(log).is_symlink():
            shutil.copyfile(log, out / name)
    report = copy_artifacts(record.result, out / "artifacts")
    if report.refused:
        _write_json(out / "artifacts-refused.json", [list(r) for r in report.refused])


def make_publish(deps: Deps) -> Callable[[RunState], dict[str, Any]]:
    def publish(state: RunState) -> dict[str, Any]:
        log = structlog.get_logger(__name__).bind(run_id=state.run_id, agent="publish")
        draft = state.draft
        assert draft is not None
        final = deps.runs_dir() / state.run_id
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{state.run_id}.*"):  # a publish killed midway
            shutil.rmtree(stale, ignore_errors=True)
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
            if state.plan is not None:
                (staging / "plan.json").write_text(state.plan.model_dump_json(indent=2))
            for key, w in state.work.items():
                if w.reproduction is not None:
                    code = staging / "code" / key
                    code.mkdir()
                    for name, text in w.reproduction.job.files.items():
                        (code / name).write_text(text, encoding="utf-8")
                    (code / "command.txt").write_text(" ".join(w.reproduction.job.argv) + "\n")
                for record in [*w.history, *([w.main] if w.main else []), *w.profile]:
                    _write_record(record, staging / "results")
            for figure in draft.figures:
                render(figure, staging / "figures" / figure.name)
            # What the human approved: the draft, or the review copy they edited at the gate.
            edited = deps.home / "review" / state.run_id / "publish" / "writeup.md"
            markdown = edited.read_text(encoding="utf-8") if edited.is_file() else draft.markdown
            report = verify_markdown(markdown, draft.evidence, staging)
            if not report.ok:
                shutil.rmtree(staging, ignore_errors=True)
                problems = "; ".join(str(p) for p in report.problems[:5])
                log.warning("publish.refused", problems=len(report.problems))
                return {
                    "outcome": Outcome(
                        status="rejected",
                        message=f"publish refused: the write-up does not verify: {problems}",
                    )
                }
            (staging / "writeup.md").write_text(markdown, encoding="utf-8")
            if "zh" in state.policy.langs:  # the same numbers, from templates (tools/zh.py)
                from tools.zh import translate

                zh = translate(markdown)
                (staging / "writeup.zh.md").write_text(zh, encoding="utf-8")
            if state.critique is not None:
                verdict = "approve" if state.critique.approved else "revise"
                _write_json(
                    staging / "critique.json",
                    {"verdict": verdict, **state.critique.model_dump(mode="json")},
                )
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
        message = f"write-up at {final / 'writeup.md'}; {stored} findings stored"
        assert state.plan is not None
        missing = [m.title for m in state.plan.not_reproduced()]
        failed = [k for k, w in state.work.items() if w.status == "failed"]
        if missing or failed:
            message += "; not reproduced: " + ", ".join([*missing, *failed])
        return {"outcome": Outcome(status="published", message=message, path=str(final))}

    return publish
