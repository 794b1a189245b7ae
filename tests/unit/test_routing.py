"""Routers are pure functions of the state: every branch, no model, no sandbox."""

from __future__ import annotations

from graphs import routing
from reprodesk.plan import MechanismPlan, Plan
from reprodesk.results import RecipeResult
from reprodesk.schemas import Critique, Decision, Job, Outcome, Paper, RunResult
from reprodesk.state import JobRecord, MechanismRun, Policy, Reproduction, RunState

_PARSED = RecipeResult.model_validate(
    {
        "recipe": "mla",
        "config": {},
        "env": {"torch": "t", "device": "cpu"},
        "claims": [
            {"id": "c", "claim": "c", "paper_value": 1, "measured_value": 1, "verdict": "partial"}
        ],
    }
)


def _state(**kw: object) -> RunState:
    paper = Paper(source="x.md", kind="markdown", title="t", pages=["p"], sha256="0")
    return RunState(run_id="r", source="x.md", paper=paper, **kw)  # type: ignore[arg-type]


def _work(key: str, status: str | None, attempt: int = 1, gave_up: str = "") -> MechanismRun:
    """A mechanism whose attempt `attempt` ran with `status` (None: not run yet)."""
    repro = Reproduction(
        mechanism=key, script=f"{key}.py", args={}, job=Job(files={}, argv=["x"]), attempt=attempt
    )
    main = None
    if status is not None:
        main = JobRecord(
            label=f"{key}-attempt{attempt}",
            key="k",
            result=RunResult(status=status),  # type: ignore[arg-type]
            parsed=_PARSED if status == "ok" else None,
        )
    return MechanismRun(key=key, reproduction=repro, main=main, attempts=attempt, gave_up=gave_up)


def test_reader_ends_when_nothing_to_reproduce() -> None:
    plan = Plan(
        mechanisms=[MechanismPlan(key="mla", title="MLA", role="introduces", source="catalog")]
    )
    assert routing.after_reader(_state(plan=plan)) == "plan_gate"
    assert routing.after_reader(_state(plan=None)) == "__end__"
    ended = Outcome(status="unsupported", message="m")
    assert routing.after_reader(_state(plan=plan, outcome=ended)) == "__end__"


def test_gates_follow_the_last_decision() -> None:
    approved = Decision(gate="code", approved=True)
    rejected = Decision(gate="code", approved=False, reason="no")
    assert routing.after_code_gate(_state(decisions=[approved])) == "execute"
    assert routing.after_code_gate(_state(decisions=[approved, rejected])) == "__end__"
    assert routing.after_code_gate(_state(decisions=[])) == "__end__"
    # a decision at another gate does not count
    plan_ok = Decision(gate="plan", approved=True)
    assert routing.after_plan_gate(_state(decisions=[plan_ok])) == "reproducer"
    assert routing.after_code_gate(_state(decisions=[plan_ok])) == "__end__"
    publish_ok = Decision(gate="publish", approved=True)
    assert routing.after_publish_gate(_state(decisions=[publish_ok])) == "publish"
    assert routing.after_publish_gate(_state(decisions=[])) == "__end__"


def test_execute_sends_any_failure_back_and_successes_on() -> None:
    ok, failed = _work("mla", "ok"), _work("mtp", "error")
    assert routing.after_execute(_state(work={"mla": ok})) == "profiler"
    assert routing.after_execute(_state(work={"mla": ok, "mtp": failed})) == "reproducer"


def test_reproducer_routes_new_jobs_to_the_gate_and_given_up_ones_past_it() -> None:
    pending = _work("mtp", "error", attempt=1).model_copy(
        update={"reproduction": _work("mtp", None, attempt=2).reproduction}
    )
    assert pending.status == "pending"
    ok, gave_up = _work("mla", "ok"), _work("mtp", "error", gave_up="offline cannot fix it")
    assert routing.after_reproducer(_state(work={"mla": ok, "mtp": pending})) == "code_gate"
    assert routing.after_reproducer(_state(work={"mla": ok, "mtp": gave_up})) == "profiler"
    assert routing.after_reproducer(_state(work={"mtp": gave_up})) == "__end__"
    failed = Outcome(status="failed", message="m")
    assert routing.after_reproducer(_state(work={"mtp": gave_up}, outcome=failed)) == "__end__"


def test_statuses_of_one_mechanism() -> None:
    assert _work("a", None).status == "pending"
    assert _work("a", "ok").status == "ok"
    assert _work("a", "timeout").status == "retry"
    assert _work("a", "timeout", gave_up="why").status == "failed"
    no_metrics = _work("a", "ok").model_copy()
    assert no_metrics.main is not None
    no_metrics.main.parsed = None  # ok exit code, but no valid metrics line: a failure
    assert no_metrics.status == "retry"


def test_critic_loop_is_bounded() -> None:
    policy = Policy(max_critic_rounds=2)
    no = Critique(approved=False, issues=["x"])
    yes = Critique(approved=True)
    assert routing.after_critic(_state(critique=yes, critic_rounds=1)) == "publish_gate"
    assert routing.after_critic(_state(critique=no, critic_rounds=1, policy=policy)) == "writer"
    assert (
        routing.after_critic(_state(critique=no, critic_rounds=2, policy=policy)) == "publish_gate"
    )
