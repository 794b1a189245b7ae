"""Every path through the `Runs` service, in-process: the real graph, checkpointer, policies
and run layer; a fake sandbox with canned results, a list store; no bubblewrap, no network.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agents.offline.reproducer import OfflineReproducer
from agents.policies import Policies, offline_policies
from graphs.lease import Lease, RunBusy
from graphs.runs import Event, RunView
from reprodesk.compose import App, build_app
from reprodesk.schemas import Critique, Draft, Job, Limits, RunResult, UserError
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore, ScriptedChatModel
from tools.papers import load_paper
from tools.run_code import code_hash

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _app(
    tmp_path: Path,
    *,
    gates: tuple[str, ...] = (),
    sandbox: FakeSandbox | None = None,
    policies: Policies | None = None,
) -> tuple[App, FakeSandbox, ListStore]:
    settings = Settings(home=tmp_path / "home", gates=list(gates))  # type: ignore[arg-type]
    box, store = sandbox or FakeSandbox(), ListStore()
    app = build_app(
        settings, sandbox=box, policies=policies or offline_policies(Limits()), store=store
    )
    return app, box, store


def _last(events: Any) -> RunView:
    seen: list[Event] = list(events)
    assert seen and seen[-1].view is not None
    return seen[-1].view


def _start(app: App, note: str, **kw: Any) -> RunView:
    paper = load_paper(str(EXAMPLES / note))
    return _last(app.runs.start(paper, policy=app.policy(), run_id="r1", **kw))


def test_publish_path_writes_writeup_trace_and_findings(tmp_path: Path) -> None:
    app, box, store = _app(tmp_path)
    view = _start(app, "mla_note.md")
    assert view.status == "published" and view.mechanisms == ["mla"]
    folder = tmp_path / "home" / "runs" / "r1"
    md = (folder / "writeup.md").read_text()
    assert "## Multi-head Latent Attention" in md and "### Checks of the implementation" in md
    assert (folder / "trace.jsonl").read_text().count("\n") == len(app.runs.timeline("r1"))
    assert (folder / "plan.json").is_file() and (folder / "code" / "mla" / "mla.py").is_file()
    # main job + the plan's two grid jobs, each launched once
    assert [j.argv[1] for j in box.launched] == ["mla.py"] * 3
    assert {f.mechanism for f in store} == {"mla"}


def test_two_mechanisms_get_a_section_each_and_one_tldr(tmp_path: Path) -> None:
    app, box, store = _app(tmp_path)
    view = _start(app, "deepseek_v2_note.md")
    assert view.status == "published"
    assert sorted(view.mechanisms) == ["deepseek_moe", "mla"]
    md = (tmp_path / "home" / "runs" / "r1" / "writeup.md").read_text()
    assert md.count("## TL;DR") == 1
    assert "## DeepSeekMoE" in md and "## Multi-head Latent Attention" in md
    assert {f.mechanism for f in store} == {"deepseek_moe", "mla"}
    assert {j.argv[1] for j in box.launched} == {"deepseek_moe.py", "mla.py"}


def test_mechanism_flag_restricts_the_plan(tmp_path: Path) -> None:
    app, box, _ = _app(tmp_path)
    view = _start(app, "deepseek_v2_note.md", restrict=["mla"])
    assert view.mechanisms == ["mla"] and {j.argv[1] for j in box.launched} == {"mla.py"}
    with pytest.raises(UserError, match="--mechanism nope"):
        app.runs.start(
            load_paper(str(EXAMPLES / "mla_note.md")), policy=app.policy(), restrict=["nope"]
        )


def test_contribution_not_in_the_catalog_is_said_first(tmp_path: Path) -> None:
    app, _, _ = _app(tmp_path)
    view = _start(app, "sparse_mla_note.md")
    assert view.status == "published" and view.mechanisms == ["mla"]
    assert view.not_reproduced == ["Token-Routed Sparse Attention (TRSA)"]
    assert "not reproduced: Token-Routed Sparse Attention" in (
        view.outcome.message if view.outcome else ""
    )
    md = (tmp_path / "home" / "runs" / "r1" / "writeup.md").read_text()
    head = md.split("## TL;DR")[0]
    assert "**Not reproduced: Token-Routed Sparse Attention (TRSA)**" in head
    assert "builds on" in head and "not this paper's" in head


def test_repair_loop_shrinks_after_a_timeout(tmp_path: Path) -> None:
    def first_times_out(job: Job, n: int) -> RunResult | None:
        return RunResult(status="timeout", message="wall time") if n == 1 else None

    app, box, _ = _app(tmp_path, sandbox=FakeSandbox(respond=first_times_out))
    view = _start(app, "mla_note.md")
    assert view.status == "published"
    state = app.runs.state("r1")
    work = state.work["mla"]
    assert work.attempts == 2 and [h.result.status for h in work.history] == ["timeout"]
    first, second = box.launched[0].argv, box.launched[1].argv
    i = first.index("--prompt-len")
    assert int(second[i + 1]) == int(first[i + 1]) // 2


def test_a_metrics_line_that_does_not_validate_fails_the_attempt_naming_the_field(
    tmp_path: Path,
) -> None:
    def bad_line(job: Job, n: int) -> RunResult | None:
        metrics = {
            "recipe": "mla",
            "config": {},
            "env": {"torch": "t", "device": "cpu"},
            "claims": [
                {"id": "x", "claim": "c", "paper_value": 1, "measured_value": 1, "verdict": "maybe"}
            ],
        }
        return RunResult(status="ok", metrics=metrics)

    app, _, _ = _app(tmp_path, sandbox=FakeSandbox(respond=bad_line))
    view = _start(app, "mla_note.md")
    assert view.status == "failed"
    main = app.runs.state("r1").work["mla"].main
    assert main is not None and main.result.status == "error"
    assert "claims.0.verdict" in main.result.message


def test_critic_loop_sends_the_draft_back_once(tmp_path: Path) -> None:
    base = offline_policies(Limits())
    rounds: list[int] = []

    def strict_first(draft: Draft, round_: int) -> Critique:
        rounds.append(round_)
        if round_ == 1:
            return Critique(approved=False, issues=["say more"], round=round_)
        return base.review(draft, round_)

    app, _, _ = _app(tmp_path, policies=replace(base, review=strict_first))
    view = _start(app, "mla_note.md")
    assert view.status == "published" and rounds == [1, 2]
    assert app.runs.state("r1").draft.round == 2  # type: ignore[union-attr]


def test_paused_run_resumes_and_a_rejection_ends_it(tmp_path: Path) -> None:
    app, box, _ = _app(tmp_path, gates=("code", "publish"))
    view = _start(app, "mla_note.md")
    assert view.gate == "code" and box.launched == []
    review = Path(view.review or "")
    assert (review / "mla" / "mla.py").is_file() and (review / "mla" / "command.txt").is_file()
    with pytest.raises(UserError, match="approve or reject"):
        app.runs.resume("r1")
    view = _last(app.runs.resume("r1", approve=True))
    assert view.gate == "publish" and (Path(view.review or "") / "writeup.md").is_file()
    view = _last(app.runs.resume("r1", approve=False, reason="numbers look off"))
    assert view.status == "rejected" and "numbers look off" in (
        view.outcome.message if view.outcome else ""
    )
    with pytest.raises(UserError, match="already ended"):
        app.runs.resume("r1", approve=True)


def test_plan_gate_edit_drops_a_mechanism_and_bad_plans_leave_it_paused(tmp_path: Path) -> None:
    app, box, _ = _app(tmp_path, gates=("plan",))
    view = _start(app, "deepseek_v2_note.md")
    assert view.gate == "plan"
    plan = json.loads((Path(view.review or "") / "plan.json").read_text())
    for m in plan["mechanisms"]:
        m["selected"] = m["key"] == "mla"
    bad = json.loads(json.dumps(plan))
    bad["mechanisms"][0]["key"] = "never_mentioned"
    with pytest.raises(UserError, match="not one the paper mentions"):
        app.runs.resume("r1", plan=bad)
    with pytest.raises(UserError, match="not a valid plan"):
        app.runs.resume("r1", plan={"mechanisms": [{"key": 3}]})
    assert app.runs.status("r1").gate == "plan"  # still paused, still resumable
    view = _last(app.runs.resume("r1", plan=plan))
    assert view.status == "published" and view.mechanisms == ["mla"]
    assert {j.argv[1] for j in box.launched} == {"mla.py"}
    assert app.runs.state("r1").last_decision("plan").edited  # type: ignore[union-attr]


def test_profiler_runs_the_approved_bytes_not_the_file_on_disk(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    shutil.copytree(ROOT / "recipes", recipes, ignore=shutil.ignore_patterns("__pycache__"))
    policies = replace(
        offline_policies(Limits()), reproduce=OfflineReproducer(Limits(), recipes_dir=recipes)
    )
    app, box, _ = _app(tmp_path, gates=("code",), policies=policies)
    view = _start(app, "mla_note.md")
    assert view.gate == "code"
    approved = app.runs.state("r1").work["mla"].reproduction
    assert approved is not None
    (recipes / "mla.py").write_text("import os; os.system('echo changed after the gate')\n")
    assert _last(app.runs.resume("r1", approve=True)).status == "published"
    hashes = {code_hash(j.files) for j in box.launched}
    assert len(box.launched) == 3 and hashes == {code_hash(approved.job.files)}
    work = app.runs.state("r1").work["mla"]
    assert {p.code_hash for p in work.profile} == {work.main.code_hash}  # type: ignore[union-attr]


def test_fork_continues_from_a_step_as_a_new_run(tmp_path: Path) -> None:
    app, box, _ = _app(tmp_path)
    _start(app, "mla_note.md")
    steps = app.runs.timeline("r1")
    profiled = next(s for s in steps if s.ran == ["profiler"])
    launched = len(box.launched)
    new_id = app.runs.fork("r1", profiled.step, "r1-fork")
    view = _last(app.runs.resume(new_id))
    assert view.status == "published" and view.parent == f"r1@{profiled.step}"
    assert len(box.launched) == launched  # from the profiler on: no job runs again
    assert (tmp_path / "home" / "runs" / "r1-fork" / "writeup.md").is_file()
    with pytest.raises(UserError, match="has no step 999"):
        app.runs.fork("r1", 999)


def test_a_second_driver_is_refused_naming_the_holder(tmp_path: Path) -> None:
    app, _, _ = _app(tmp_path, gates=("code",))
    _start(app, "mla_note.md")
    with Lease(app.deps.home, "r1"), pytest.raises(RunBusy, match=r"driven by pid \d+"):
        list(app.runs.resume("r1", approve=True))
    assert app.runs.status("r1").gate == "code"  # nothing moved
    assert _last(app.runs.resume("r1", approve=True)).status == "published"


def test_scripted_chat_model_answers_in_order_and_runs_out_loudly() -> None:
    model = ScriptedChatModel(responses=["one", "two"])
    assert [model.invoke("a").content, model.invoke("b").content] == ["one", "two"]
    with pytest.raises(AssertionError, match="ran out"):
        model.invoke("c")


def test_code_edited_at_the_gate_is_what_runs_and_what_is_profiled(tmp_path: Path) -> None:
    app, box, _ = _app(tmp_path, gates=("code",))
    _start(app, "mla_note.md")
    approved = app.runs.state("r1").work["mla"].reproduction
    assert approved is not None
    edited = approved.job.files["mla.py"] + "\n# reviewed by hand\n"
    with pytest.raises(UserError, match="not a file of the mla job"):
        app.runs.resume("r1", edit={"mla": {"other.py": "x"}})
    with pytest.raises(UserError, match="no job of 'mtp' waits"):
        app.runs.resume("r1", edit={"mtp": {"mtp.py": "x"}})
    view = _last(app.runs.resume("r1", edit={"mla": {"mla.py": edited}}))
    assert view.status == "published"
    assert {j.files["mla.py"] for j in box.launched} == {edited}  # main and profile jobs
    state = app.runs.state("r1")
    assert state.last_decision("code").edited  # type: ignore[union-attr]
    assert "edited by hand" in state.work["mla"].reproduction.note  # type: ignore[union-attr]


def test_a_revision_request_goes_back_and_offline_says_why_it_cannot(tmp_path: Path) -> None:
    app, box, _ = _app(tmp_path, gates=("code",))
    _start(app, "mla_note.md")
    view = _last(app.runs.resume("r1", revise=True, reason="use 4 heads"))
    assert box.launched == []  # nothing ran
    assert view.status == "failed"
    message = view.outcome.message if view.outcome else ""
    assert "use 4 heads" in message and "--edit" in message
    decision = app.runs.state("r1").last_decision("code")
    assert decision is not None and decision.revise and not decision.approved


def test_approvals_per_gate_skip_auto_and_ask(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        gates=["code"],  # type: ignore[list-item]
        approvals={"plan": "ask", "code": "auto"},  # type: ignore[dict-item]
    )
    app = build_app(settings, sandbox=FakeSandbox(), store=ListStore())
    view = _start(app, "mla_note.md")
    assert view.gate == "plan"  # ask, although REPRODESK_GATES does not list it
    view = _last(app.runs.resume("r1", approve=True))
    assert view.status == "published"  # code: auto; publish: not listed, so skipped
    by = {d.gate: d.by for d in app.runs.state("r1").decisions}
    assert by == {"plan": "user", "code": "auto", "publish": "policy"}


def test_offline_replay_rebuilds_the_same_writeup_from_the_record(tmp_path: Path) -> None:
    from graphs.offline_replay import replay_offline

    app, box, _ = _app(tmp_path, gates=("plan", "code"))
    view = _start(app, "deepseek_v2_note.md")
    plan = json.loads((Path(view.review or "") / "plan.json").read_text())
    for m in plan["mechanisms"]:
        m["selected"] = m["key"] == "mla"
    list(app.runs.resume("r1", plan=plan))
    assert _last(app.runs.resume("r1", approve=True)).status == "published"
    launched = len(box.launched)
    result = replay_offline(app.runs, "r1")
    assert result.identical, result.message
    assert len(box.launched) == launched  # the replay ran nothing
    # a tampered record is caught: the write-up differs
    writeup = tmp_path / "home" / "runs" / "r1" / "writeup.md"
    writeup.write_text(writeup.read_text() + "edited\n")
    assert not replay_offline(app.runs, "r1").identical


def test_a_full_disk_in_publish_is_one_line_and_the_run_resumes_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import graphs.nodes

    app, _, store = _app(tmp_path)
    real = graphs.nodes._write_json

    def full(path: Path, data: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(graphs.nodes, "_write_json", full)
    with pytest.raises(UserError, match=r"No space left on device; run 'r1' is checkpointed"):
        _start(app, "mla_note.md")
    runs_dir = tmp_path / "home" / "runs"
    assert not list(runs_dir.glob(".r1.*"))  # the failed publish cleaned its staging
    assert app.runs.status("r1").next == ["publish"]  # resumable at the failed step
    monkeypatch.setattr(graphs.nodes, "_write_json", real)  # space is back
    assert _last(app.runs.resume("r1")).status == "published"
    assert len(store.stored) == 5


def test_the_reader_names_earlier_runs_of_the_same_mechanism(tmp_path: Path) -> None:
    app, _, store = _app(tmp_path, gates=("plan",))
    paper = load_paper(str(EXAMPLES / "mla_note.md"))
    list(app.runs.start(paper, policy=app.policy(auto_approve=True), run_id="first"))
    assert {f.run_id for f in store} == {"first"}
    view = _last(app.runs.start(paper, policy=app.policy(langs=["en", "zh"]), run_id="second"))
    mla = next(m for m in (view.question or {})["mechanisms"] if m["key"] == "mla")
    assert mla["measured before in"] == ["first"]
    assert app.runs.state("second").plan.get("mla").prior_runs == ["first"]  # type: ignore[union-attr]
    # The Writer cites them, in both languages, and the write-up still verifies.
    final = _last(app.runs.resume("second", approve=True))
    assert final.status == "published", final
    folder = tmp_path / "home" / "runs" / "second"
    assert (
        "*Measured before in runs `first` (findings memory:" in (folder / "writeup.md").read_text()
    )
    assert "此前已测量该机制的运行： `first` （发现记忆：" in (folder / "writeup.zh.md").read_text()
    first = (tmp_path / "home" / "runs" / "first" / "writeup.md").read_text()
    assert "Measured before" not in first  # nothing earlier: nothing cited


def test_lang_zh_publishes_a_chinese_writeup_with_the_same_numbers(tmp_path: Path) -> None:
    from tools.evidence import numbers_in

    app, _, _ = _app(tmp_path)
    paper = load_paper(str(EXAMPLES / "mla_note.md"))
    view = _last(app.runs.start(paper, policy=app.policy(langs=["en", "zh"]), run_id="r1"))
    assert view.status == "published"
    folder = tmp_path / "home" / "runs" / "r1"
    en = (folder / "writeup.md").read_text()
    zh = (folder / "writeup.zh.md").read_text()
    assert zh != en and "实测" in zh
    assert sorted(numbers_in(zh)) == sorted(numbers_in(en))


def test_runs_and_replay_show_the_recorded_model_usage(tmp_path: Path) -> None:
    from reprodesk.cli.app import _tokens

    app, _, _ = _app(tmp_path)
    _start(app, "mla_note.md")
    assert _tokens(app.runs.status("r1").usage) == ""  # offline: nothing spent
    usage = {
        "requests": 2,
        "input_tokens": 1000,
        "output_tokens": 100,
        "cost": 0.0021,
        "nodes": {"reader": {"requests": 2, "input_tokens": 1000, "output_tokens": 100}},
    }
    folder = tmp_path / "home" / "llm" / "r1"
    folder.mkdir(parents=True)
    (folder / "usage.json").write_text(json.dumps(usage))
    view = app.runs.status("r1")
    assert _tokens(view.usage) == "1100 ($0.0021)" and _tokens(view.usage, "reader") == "1100"


def test_a_finding_says_what_it_was_judged_against_never_a_check_as_a_paper_value(
    tmp_path: Path,
) -> None:
    app, _, store = _app(tmp_path)
    assert _start(app, "mla_note.md").status == "published"
    by_claim = {f.id.split(":", 1)[1]: f for f in store}
    construction = by_claim["mla_cache_formula"]  # a check of the code
    assert construction.reference == "expected by construction"
    assert construction.paper_value is None and construction.expected_value is not None
    assert "expected by construction" in construction.document()
    for f in store:
        assert f.reference, f.id  # every new finding names its reference
        if f.paper_value is not None:  # a paper value only where the paper gives one
            assert f.reference in ("paper", "derived from the paper"), f.id
        if f.verdict == "not checkable":
            assert f.reference == "none"
