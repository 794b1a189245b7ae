"""The desk's pages and decisions in-process: Starlette's TestClient over `Desk`, real runs
(graph, checkpointer, policies, run layer) with a fake sandbox; no browser, no socket.

What a decision from the page does must be what `Runs.resume` does for the CLI: the
edited plan or code is what runs; a decision on a run being driven is refused.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from agents.policies import offline_policies
from graphs.runs import RunView
from reprodesk.compose import App, build_app
from reprodesk.desk.app import COOKIE, Desk
from reprodesk.schemas import Job, Limits, RunResult
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore
from tools.papers import load_paper

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _app(tmp_path: Path, gates: list[str], box: FakeSandbox | None = None) -> App:
    return build_app(
        Settings(home=tmp_path / "home", gates=gates),  # type: ignore[arg-type]
        sandbox=box or FakeSandbox(),
        policies=offline_policies(Limits()),
        store=ListStore(),
    )


def _start(app: App, note: str, run_id: str = "r1") -> RunView:
    *_, last = app.runs.start(load_paper(str(EXAMPLES / note)), policy=app.policy(), run_id=run_id)
    assert last.view is not None
    return last.view


def _client(app: App) -> tuple[Desk, TestClient]:
    desk = Desk(app, "tok")
    client = TestClient(desk.asgi(), cookies={COOKIE: "tok"}, follow_redirects=False)
    return desk, client


def _decide(client: TestClient, desk: Desk, run_id: str, **form: str) -> Any:
    return client.post(f"/runs/{run_id}/decide", data={"csrf": desk.csrf, **form})


def test_a_decision_on_a_run_this_desk_drives_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def slow(job: Job, n: int) -> RunResult | None:
        release.wait(120)  # the job "runs" until the test lets it end
        return None

    app = _app(tmp_path, ["code", "publish"], FakeSandbox(respond=slow))
    assert _start(app, "mla_note.md").gate == "code"
    desk, client = _client(app)
    try:
        assert _decide(client, desk, "r1", action="approve").status_code == 303
        second = _decide(client, desk, "r1", action="reject", reason="changed my mind")
        assert second.status_code == 409
        assert "being driven by this desk" in second.text and "approve since" in second.text
        page = client.get("/runs/r1")
        assert 'http-equiv="refresh"' in page.text and "Running: approve" in page.text
    finally:
        release.set()
        desk.drivers.join(timeout=120)
    assert app.runs.status("r1").gate == "publish"
    by_user = [(d.gate, d.approved) for d in app.runs.state("r1").decisions if d.by == "user"]
    assert by_user == [("code", True)]  # the refused rejection left no trace


def test_the_edited_code_is_what_runs(tmp_path: Path) -> None:
    box = FakeSandbox()
    app = _app(tmp_path, ["code"], box)
    _start(app, "mla_note.md")
    desk, client = _client(app)
    page = client.get("/runs/r1")
    assert 'name="file:mla/mla.py"' in page.text
    original = app.runs.state("r1").work["mla"].reproduction.job.files["mla.py"]  # type: ignore[union-attr]
    edited = original + "\n# checked by hand\n"
    r = _decide(client, desk, "r1", action="edit", **{"file:mla/mla.py": edited})
    assert r.status_code == 303
    desk.drivers.join(timeout=120)
    assert app.runs.status("r1").status == "published"
    assert box.launched and all(j.files["mla.py"] == edited for j in box.launched)


def test_an_unchanged_edit_and_a_bad_plan_leave_the_run_where_it_was(tmp_path: Path) -> None:
    app = _app(tmp_path, ["plan", "code"])
    _start(app, "deepseek_v2_note.md")
    desk, client = _client(app)
    r = _decide(client, desk, "r1", action="edit", plan="{not json")
    assert r.status_code == 400 and "not JSON" in r.text
    plan = json.loads(app.runs.state("r1").plan.model_dump_json())  # type: ignore[union-attr]
    for m in plan["mechanisms"]:
        m["selected"] = False
    r = _decide(client, desk, "r1", action="edit", plan=json.dumps(plan))
    assert r.status_code == 400 and "selects no mechanism" in r.text
    assert app.runs.status("r1").gate == "plan" and desk.drivers.current("r1") is None


def test_the_edited_plan_is_what_runs(tmp_path: Path) -> None:
    box = FakeSandbox()
    app = _app(tmp_path, ["plan"], box)
    _start(app, "deepseek_v2_note.md")
    desk, client = _client(app)
    page = client.get("/runs/r1")
    assert "Save the plan and approve" in page.text and "deepseek_moe" in page.text
    plan = json.loads(app.runs.state("r1").plan.model_dump_json())  # type: ignore[union-attr]
    for m in plan["mechanisms"]:
        m["selected"] = m["key"] == "mla"
    assert _decide(client, desk, "r1", action="edit", plan=json.dumps(plan)).status_code == 303
    desk.drivers.join(timeout=120)
    view = app.runs.status("r1")
    assert view.status == "published" and view.mechanisms == ["mla"]
    assert {j.argv[1] for j in box.launched} == {"mla.py"}
    decision = app.runs.state("r1").last_decision("plan")
    assert decision is not None and decision.edited


def test_reject_at_the_publish_gate_ends_the_run_with_the_reason(tmp_path: Path) -> None:
    app = _app(tmp_path, ["publish"])
    _start(app, "mla_note.md")
    desk, client = _client(app)
    assert "may this be published?" in client.get("/inbox").text
    _decide(client, desk, "r1", action="reject", reason="numbers look off")
    desk.drivers.join(timeout=120)
    view = app.runs.status("r1")
    assert view.status == "rejected" and "numbers look off" in (view.outcome.message or "")  # type: ignore[union-attr]
    assert "r1" not in client.get("/inbox").text


@pytest.mark.parametrize(
    "path", ["/runs/..%2Fetc", "/runs/r1/files/writeup.md", "/runs/r1/files/..%2Fplan.json"]
)
def test_odd_paths_are_refused(tmp_path: Path, path: str) -> None:
    app = _app(tmp_path, [])
    assert _start(app, "mla_note.md").status == "published"
    _, client = _client(app)
    r = client.get(path)
    assert r.status_code in (400, 404) and "writeup.md\n" not in r.text


def test_findings_search_filters_and_one_metric_across_runs(tmp_path: Path) -> None:
    from memory import FindingStore

    store = FindingStore.open(tmp_path / "memory")
    app = build_app(
        Settings(home=tmp_path / "home", gates=[]),  # type: ignore[arg-type]
        sandbox=FakeSandbox(),
        policies=offline_policies(Limits()),
        store=store,
    )
    _start(app, "mla_note.md", "r1")
    _start(app, "deepseek_v2_note.md", "r2")
    _, client = _client(app)
    metric = next(f.metric for f in store.findings() if f.mechanism == "mla")
    page = client.get("/findings", params={"q": "KV cache", "mechanism": "mla"})
    assert page.status_code == 200 and "Closest to" in page.text
    rows = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert rows.count("<tr>") >= 1 and "<td>deepseek_moe</td>" not in rows
    page = client.get("/findings", params={"metric": metric})
    rows = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert 'href="/runs/r1"' in rows and 'href="/runs/r2"' in rows  # the same metric, two runs
    store.close()


def test_fork_from_the_timeline_starts_a_new_run_from_that_step(tmp_path: Path) -> None:
    app = _app(tmp_path, ["code", "publish"])
    _start(app, "mla_note.md")
    desk, client = _client(app)
    steps = app.runs.timeline("r1")
    at = next(s.step for s in steps if "reproducer" in s.ran)
    page = client.get("/runs/r1/timeline", params={"step": at})
    assert page.status_code == 200 and "State at step" in page.text
    r = client.post("/runs/r1/fork", data={"csrf": desk.csrf, "step": str(at)})
    assert r.status_code == 303
    new_id = r.headers["location"].rsplit("/", 1)[-1]
    desk.drivers.join(timeout=120)
    view = app.runs.status(new_id)
    assert view.parent == f"r1@{at}" and view.gate == "code"
    assert app.runs.status("r1").gate == "code"  # the original stays as it was


def test_an_interrupted_run_continues_from_the_page(tmp_path: Path) -> None:
    broken = {"on": True}

    def crash(job: Job, n: int) -> RunResult | None:
        if broken["on"]:
            raise RuntimeError("the machine went away")
        return None

    app = _app(tmp_path, ["code"], FakeSandbox(respond=crash))
    _start(app, "mla_note.md")
    desk, client = _client(app)
    _decide(client, desk, "r1", action="approve")
    desk.drivers.join(timeout=120)
    page = client.get("/runs/r1")
    assert "interrupted before execute" in page.text and "the machine went away" in page.text
    assert _decide(client, desk, "r1", action="approve").status_code == 400  # no gate waits
    broken["on"] = False
    assert _decide(client, desk, "r1", action="continue").status_code == 303
    desk.drivers.join(timeout=120)
    assert app.runs.status("r1").status == "published"


def test_pages_forbid_scripts_and_framing(tmp_path: Path) -> None:
    app = _app(tmp_path, ["code"])
    _start(app, "mla_note.md")
    _, client = _client(app)
    for path in ("/inbox", "/runs", "/runs/r1", "/runs/r1/timeline", "/nope-is-404"):
        r = client.get(path)
        if r.status_code == 404:
            continue
        csp = r.headers["content-security-policy"]
        assert "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "<script" not in r.text


def test_runs_page_shows_verdicts_and_the_runs_model_tokens(tmp_path: Path) -> None:
    app = _app(tmp_path, [])
    _start(app, "mla_note.md")
    _, client = _client(app)
    row = client.get("/runs").text.split('<tr data-run="r1">', 1)[1].split("</tr>", 1)[0]
    assert "reproduced: 4, not checkable: 1" in row and "none (offline)" in row
    usage = {"requests": 3, "input_tokens": 1200, "output_tokens": 345, "cost": 0.0021}
    folder = tmp_path / "home" / "llm" / "r1"
    folder.mkdir(parents=True)
    (folder / "usage.json").write_text(json.dumps({**usage, "nodes": {}}))
    row = client.get("/runs").text.split('<tr data-run="r1">', 1)[1].split("</tr>", 1)[0]
    assert "1,545 (1,200 in, 345 out, 3 requests, $0.0021)" in row
    assert "1,545 (1,200 in" in client.get("/runs/r1").text
