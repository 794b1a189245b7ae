"""Routers are pure functions of the state: every branch, no model, no sandbox."""

from __future__ import annotations

from graphs import routing
from reprodesk.schemas import (
    Critique,
    Decision,
    JobRecord,
    Outcome,
    Paper,
    Policy,
    RunResult,
    RunState,
)


def _state(**kw: object) -> RunState:
    paper = Paper(source="x.md", kind="markdown", title="t", pages=["p"], sha256="0")
    return RunState(run_id="r", source="x.md", paper=paper, **kw)  # type: ignore[arg-type]


def _main(status: str) -> JobRecord:
    return JobRecord(label="main", key="k", result=RunResult(status=status))  # type: ignore[arg-type]


def test_reader_ends_when_nothing_to_reproduce() -> None:
    assert routing.after_reader(_state(target="mla")) == "plan_gate"
    assert routing.after_reader(_state(target=None)) == "__end__"


def test_gates_follow_the_last_decision() -> None:
    approved = Decision(gate="code", approved=True)
    rejected = Decision(gate="code", approved=False, reason="no")
    assert routing.after_code_gate(_state(decisions=[approved])) == "execute"
    assert routing.after_code_gate(_state(decisions=[approved, rejected])) == "__end__"
    assert routing.after_code_gate(_state(decisions=[])) == "__end__"
    # a decision at another gate does not count
    plan_ok = Decision(gate="plan", approved=True)
    assert routing.after_plan_gate(_state(decisions=[plan_ok])) == "reproducer"
    assert routing.after_publish_gate(_state(decisions=[plan_ok])) == "__end__"


def test_reproducer_that_gives_up_ends_the_run() -> None:
    assert routing.after_reproducer(_state()) == "code_gate"
    failed = Outcome(status="failed", message="m")
    assert routing.after_reproducer(_state(outcome=failed)) == "__end__"


def test_repair_loop_is_bounded() -> None:
    policy = Policy(max_repair_attempts=3)
    assert routing.after_execute(_state(main=_main("ok"), attempts=1)) == "profiler"
    assert routing.after_execute(_state(main=_main("timeout"), attempts=1)) == "reproducer"
    assert routing.after_execute(_state(main=_main("oom"), attempts=2, policy=policy)) == (
        "reproducer"
    )
    assert routing.after_execute(_state(main=_main("error"), attempts=3, policy=policy)) == (
        "__end__"
    )


def test_review_loop_is_bounded() -> None:
    ok = Critique(approved=True)
    bad = Critique(approved=False, issues=["x"])
    assert routing.after_critic(_state(critique=ok, critic_rounds=1)) == "publish_gate"
    assert routing.after_critic(_state(critique=bad, critic_rounds=1)) == "writer"
    assert routing.after_critic(_state(critique=bad, critic_rounds=2)) == "publish_gate"
