"""The Reproducer's repair policy: shrink after timeout/oom, stop after a code error."""

from __future__ import annotations

from pathlib import Path

from agents.deps import Deps
from agents.reader import read
from agents.reproducer import make_reproducer
from reprodesk.schemas import JobRecord, Paper, RunResult, RunState
from sandbox import SubprocessSandbox
from sandbox.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]


def _first(tmp_path: Path) -> tuple[RunState, Deps]:
    text = (ROOT / "examples" / "mla_note.md").read_text()
    paper = Paper(source="n.md", kind="markdown", title="t", pages=[text], sha256="0")
    out = read(paper)
    state = RunState(run_id="r", source="n.md", paper=paper, digest=out.digest, target=out.target)
    deps = Deps(
        home=tmp_path,
        sandbox=SubprocessSandbox(tmp_path / "jobs"),
        ledger=Ledger(tmp_path / "l.sqlite"),
        open_store=lambda: None,
    )
    update = make_reproducer(deps)(state)
    return state.model_copy(update=update), deps


def _failed(state: RunState, status: str) -> RunState:
    result = RunResult(status=status, message="boom")  # type: ignore[arg-type]
    return state.model_copy(update={"main": JobRecord(label="m", key="k", result=result)})


def test_first_attempt_runs_the_recipe_with_scaled_args(tmp_path: Path) -> None:
    state, _ = _first(tmp_path)
    repro = state.reproduction
    assert repro is not None and repro.attempt == 1
    assert repro.job.argv[:2] == ["python", "mla.py"] and "mla.py" in repro.job.files
    assert {r.name for r in repro.scale_down} >= {"n_heads", "d_head", "d_c", "d_rope"}


def test_timeout_halves_the_declared_sizes(tmp_path: Path) -> None:
    state, deps = _first(tmp_path)
    assert state.reproduction is not None
    before = state.reproduction.args
    update = make_reproducer(deps)(_failed(state, "timeout"))
    after = update["reproduction"]
    assert after.attempt == 2
    assert after.args["prompt_len"] == int(before["prompt_len"]) // 2
    assert after.args["d_c"] == before["d_c"]  # the ratios the claims need are untouched


def test_code_error_ends_the_run_instead_of_a_blind_retry(tmp_path: Path) -> None:
    state, deps = _first(tmp_path)
    update = make_reproducer(deps)(_failed(state, "error"))
    assert "reproduction" not in update
    assert update["outcome"].status == "failed" and "boom" in update["outcome"].message
