"""The desk in a real headless Chromium, over a real HTTP server on 127.0.0.1.

Runs are real (graph, checkpointer, policies, run layer) with a fake sandbox and a
list store, started in-process; the page drives them the way a user does: it opens
the URL `reprodesk desk` prints, clicks, types, waits for the page to say the run
moved on. Chromium is Debian's (`scripts/chromium.sh`), driven through Playwright's
PyPI package pointed at /usr/bin/chromium (Playwright's own browser download cannot
work here); where either is missing the module is skipped with the reason.

Screenshots of the inbox and a write-up go to build/test-artifacts/desk/ (the copies
linked from the README live in docs/screenshots/).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.offline.reproducer import OfflineReproducer
from agents.policies import offline_policies
from reprodesk.compose import App, build_app
from reprodesk.desk.server import DeskServer
from reprodesk.schemas import Limits
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore
from tools.papers import load_paper

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright (dev extra) is not installed"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/chromium.sh installs Debian's)"
)
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ARTIFACTS = ROOT / "build" / "test-artifacts" / "desk"
HOSTILE = "<script>window.__pwned = 1</script> MLA & friends"
WAIT_MS = 60_000  # an upper bound for a drive on a loaded machine, not a measurement


class RevisingReproducer(OfflineReproducer):
    """The catalog's Reproducer, plus what an LLM one does with a revision request:
    a new attempt of the code (here: the request appended as a comment)."""

    def revise(self, mech: Any, work: Any, request: str) -> Any:
        prev = work.reproduction
        text = prev.job.files[prev.script] + f"\n# revised at the gate: {request}\n"
        job = prev.job.model_copy(update={"files": {**prev.job.files, prev.script: text}})
        return prev.model_copy(
            update={"job": job, "attempt": prev.attempt + 1, "note": f"revised: {request}"}
        )


def _app(home: Path) -> App:
    policies = replace(offline_policies(Limits()), reproduce=RevisingReproducer(Limits()))
    return build_app(
        Settings(home=home, gates=["code", "publish"]),  # type: ignore[arg-type]
        sandbox=FakeSandbox(),
        policies=policies,
        store=ListStore(),
    )


def _start(app: App, run_id: str, paper: Any, *, gates: list[str] | None = None) -> Any:
    policy = app.policy()
    if gates is not None:
        policy = policy.model_copy(update={"gates": gates})
    *_, last = app.runs.start(paper, policy=policy, run_id=run_id)
    return last.view


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeskServer]:
    home = tmp_path_factory.mktemp("desk") / "home"
    app = _app(home)
    mla = load_paper(str(EXAMPLES / "mla_note.md"))
    assert _start(app, "approve-me", mla).gate == "code"
    assert _start(app, "send-back", mla).gate == "code"
    hostile = mla.model_copy(update={"title": HOSTILE})
    assert _start(app, "hostile", hostile).gate == "code"
    assert _start(app, "published", mla, gates=[]).status == "published"
    with DeskServer(app) as server:
        yield server
        server.desk.drivers.join(timeout=120)
    app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, desk: DeskServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(desk.url)  # the printed URL: the token becomes a cookie
    yield page
    context.close()


def _status(page: Any) -> str:
    return str(page.inner_text("#status"))


def test_inbox_lists_paused_runs_oldest_first_and_a_screenshot(page: Any) -> None:
    assert page.url.endswith("/inbox"), "the token is traded for a cookie and dropped"
    runs = page.eval_on_selector_all("li.waiting", "els => els.map(e => e.dataset.run)")
    assert runs[:3] == ["approve-me", "send-back", "hostile"]
    assert "published" not in runs
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "inbox.png"), full_page=True)
    assert (ARTIFACTS / "inbox.png").stat().st_size > 1000


def test_code_gate_shows_code_limits_and_recipe_diff(page: Any) -> None:
    page.click("li[data-run='approve-me'] a")
    assert _status(page) == "paused at the code gate"
    job = page.locator("article.job[data-mechanism='mla']")
    assert "mla.py" in job.inner_text() and "limits:" in job.inner_text()
    assert job.locator(".hl").count() >= 1  # highlighted code
    assert "identical to recipes/mla.py" in job.inner_text() or job.locator(".diff").count()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "code-gate.png"))


def test_approve_by_a_click_reaches_the_publish_gate(page: Any, desk: DeskServer) -> None:
    page.goto(f"{desk.base}/runs/approve-me")
    page.click("#approve")
    # The page refreshes itself while the run is driven; wait until it says where it is.
    page.wait_for_function(
        "() => document.querySelector('#status')?.textContent === 'paused at the publish gate'"
        " && !document.querySelector('#drive h2')?.textContent.startsWith('Running')"
    )
    assert desk.desk.runs.status("approve-me").gate == "publish"
    body = page.inner_text("#gate")
    assert "Critic:" in body and "TL;DR" in body
    imgs = page.eval_on_selector_all("article.draft img", "els => els.map(i => i.naturalWidth)")
    assert imgs and all(w > 0 for w in imgs), "the draft's figures are drawn for review"


def test_rejection_with_a_reason_sends_the_code_back(page: Any, desk: DeskServer) -> None:
    page.goto(f"{desk.base}/runs/send-back")
    page.fill("#reason", "use a smaller sequence length")
    page.click("#revise")
    # The page before the click also says "paused at the code gate": wait for the one
    # that reports the decision's drive as done.
    page.wait_for_function(
        "() => document.querySelector('#drive h2')?.textContent === 'Last decision: revise'"
        " && document.querySelector('#status')?.textContent === 'paused at the code gate'"
    )
    state = desk.desk.runs.state("send-back")
    assert state.work["mla"].reproduction is not None
    assert state.work["mla"].reproduction.attempt == 2
    decisions = [(d.gate, d.revise, d.reason) for d in state.decisions]
    assert ("code", True, "use a smaller sequence length") in decisions
    assert "(attempt 2)" in page.inner_text("article.job h3")
    diff = page.inner_text("article.job .diff")  # against the previous attempt, not the recipe
    assert "attempt 1" in diff and "+# revised at the gate: use a smaller sequence length" in diff


def test_a_second_decision_on_a_running_run_is_refused(desk: DeskServer) -> None:
    # The lease another driver holds: a decision through the page names the holder.
    from graphs.lease import Lease

    with httpx.Client(base_url=desk.base, cookies={"reprodesk_desk": desk.desk.token}) as c:
        with Lease(desk.desk.runs.home, "hostile"):
            r = c.post("/runs/hostile/decide", data={"action": "approve", "csrf": desk.desk.csrf})
        assert r.status_code == 409 and "is being driven by pid" in r.text
        assert desk.desk.runs.status("hostile").gate == "code"


def test_a_script_in_a_paper_title_is_text(page: Any, desk: DeskServer) -> None:
    for path in ("/inbox", "/runs/hostile", "/runs"):
        page.goto(desk.base + path)
        assert page.evaluate("() => window.__pwned") is None
        assert HOSTILE in page.inner_text("main")
    assert page.locator("main script").count() == 0


def test_writeup_shows_every_figure_and_links_numbers(page: Any, desk: DeskServer) -> None:
    page.goto(f"{desk.base}/runs/published")
    page.click("#writeup-link")
    state = desk.desk.runs.state("published")
    assert state.draft is not None and state.draft.figures
    sizes = page.eval_on_selector_all(
        "#writeup img", "els => els.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(sizes) == len(state.draft.figures)
    assert all(done and w > 0 and h > 0 for done, w, h in sizes)
    links = page.eval_on_selector_all("#writeup a.ev", "els => els.map(a => a.hash)")
    assert links and all(
        page.locator(f"#writeup tr[id='{h[1:]}']").count() == 1 for h in links[:20]
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => document.querySelector('#writeup img').scrollIntoView()")
    page.evaluate("() => window.scrollBy(0, -120)")  # the figure with the text above it
    page.screenshot(path=str(ARTIFACTS / "writeup.png"))
    assert (ARTIFACTS / "writeup.png").stat().st_size > 1000


def test_export_button_writes_the_same_html_as_the_cli(page: Any, desk: DeskServer) -> None:
    page.goto(f"{desk.base}/runs/published/writeup")
    page.click("#export-html")
    assert page.url.endswith("/runs/published/files/writeup.html")
    folder = Path(desk.desk.runs.status("published").outcome.path)
    assert (folder / "writeup.html").is_file()
    assert page.eval_on_selector_all("img", "els => els.every(i => i.naturalWidth > 0)")
    page.goto(f"{desk.base}/runs/published/writeup")
    page.click("#export-zh")
    assert page.url.endswith("/runs/published/files/writeup.zh.html")
    assert page.get_attribute("html", "lang") == "zh"
    assert (folder / "writeup.zh.md").is_file() and (folder / "writeup.zh.html").is_file()
    page.goto(f"{desk.base}/runs/published/writeup?lang=zh")
    assert page.locator("#writeup img").count() == len(
        desk.desk.runs.state("published").draft.figures
    )


def test_timeline_shows_steps_state_and_forks(page: Any, desk: DeskServer) -> None:
    page.goto(f"{desk.base}/runs/published/timeline")
    rows = page.locator("table.timeline tbody tr")
    assert rows.count() == len(desk.desk.runs.timeline("published"))
    page.click("table.timeline tbody tr:nth-child(3) a")
    assert re.search(r"\?step=\d+$", page.url) and page.locator("table.state tr").count() > 1


def test_requests_without_the_token_are_refused(browser: Any, desk: DeskServer) -> None:
    context = browser.new_context()
    fresh = context.new_page()
    response = fresh.goto(f"{desk.base}/inbox")
    assert response.status == 403 and "needs its token" in fresh.inner_text("#error")
    context.close()
    with httpx.Client(base_url=desk.base) as c:
        assert c.get("/runs/hostile").status_code == 403
        assert c.get("/inbox?token=wrong").status_code == 403
        r = c.post("/runs/hostile/decide", data={"action": "approve"})
        assert r.status_code == 403
    with httpx.Client(base_url=desk.base, cookies={"reprodesk_desk": desk.desk.token}) as c:
        # The token alone is not enough to change state: the CSRF field must come too.
        r = c.post("/runs/hostile/decide", data={"action": "approve"})
        assert r.status_code == 403 and "CSRF" in r.text
        r = c.post(
            "/runs/hostile/decide",
            data={"action": "approve", "csrf": desk.desk.csrf},
            headers={"origin": "http://evil.example"},
        )
        assert r.status_code == 403
        assert c.get("/inbox", headers={"host": "rebound.example:80"}).status_code == 421
    assert desk.desk.runs.status("hostile").gate == "code"
