"""The desk's web app (Starlette + Jinja, server-rendered, no JavaScript build step).

Pages: the inbox (runs paused at a gate, oldest first, with what the gate asks and the
decision buttons), runs, a run's timeline with the state at any step and a fork button,
a write-up with its figures and evidence, findings search and a metric across runs.

Security (the page acts on runs that execute code):
- it binds to 127.0.0.1 by default, and answers only requests whose Host is the address
  it serves (a DNS-rebinding page cannot reach it by another name);
- every request needs the token from the URL `reprodesk desk` printed: the first visit
  with `?token=` sets an HttpOnly, SameSite=Strict cookie and redirects to drop it from
  the address bar; without either the answer is 403;
- every state-changing request is a POST with a CSRF field derived from the token, and
  a cross-origin Origin header is refused;
- templates autoescape: paper text, code and model output are text, never markup; the
  only HTML inserted as-is is Pygments' and the write-up export's, which escape their input;
- nothing here reads settings secrets: pages show runs, files of published runs, findings.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from graphs.lease import RunBusy
from graphs.runs import check_run_id
from reprodesk.desk import material
from reprodesk.desk.drive import Drivers
from reprodesk.schemas import UserError

COOKIE = "reprodesk_desk"
# The pages need no script at all: should anything slip past escaping, it cannot run;
# no other site may frame the page or receive its forms.
CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
Handler = Callable[[Request], Awaitable[Response]]


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Desk:
    """One desk over one App: its token, its drivers, its templates."""

    def __init__(self, app: Any, token: str, hosts: set[str] | None = None) -> None:
        self.app = app
        self.runs = app.runs
        self.token = token
        self.csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()
        self.hosts = hosts  # allowed Host headers; set by the server once it has a port
        self.drivers = Drivers(app.runs)
        self.env = Environment(
            loader=PackageLoader("reprodesk.desk", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.env.globals.update(csrf=self.csrf, quote=quote, hl_css=material.highlight_css())

    # ------------------------------------------------------------------ plumbing

    def page(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code, headers={"Content-Security-Policy": CSP})

    def refuse(self, status_code: int, message: str) -> Response:
        return self.page("error.html", status_code, message=message)

    def _authorised(self, request: Request) -> bool:
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def guard(self, request: Request, handler: Handler) -> Response:
        host = request.headers.get("host", "")
        if self.hosts is not None and host not in self.hosts:
            return PlainTextResponse("unknown host", status_code=421)
        query_token = request.query_params.get("token")
        if request.method == "GET" and query_token is not None and self._authorised(request):
            # Trade the URL's token for a cookie, then drop it from the address bar.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return response
        if not self._authorised(request):
            return self.refuse(
                403, "This desk needs its token: open the URL `reprodesk desk` printed."
            )
        if request.method == "POST":
            origin = request.headers.get("origin")
            if (
                origin is not None
                and self.hosts is not None
                and origin.split("://", 1)[-1] not in self.hosts
            ):
                return self.refuse(403, "cross-origin request refused")
            form = await _form(request)
            if not hmac.compare_digest(form.get("csrf", "").encode(), self.csrf.encode()):
                return self.refuse(403, "missing or wrong CSRF field; reload the page")
            request.state.form = form
        try:
            return await handler(request)
        except RunBusy as exc:
            return self.refuse(409, " ".join(str(exc).split()))
        except UserError as exc:
            return self.refuse(400, " ".join(str(exc).split()))

    def route(self, path: str, fn: Callable[..., Any], methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            async def call(req: Request) -> Response:
                result: Response = await run_in_threadpool(fn, req)
                return result

            return await self.guard(request, call)

        return Route(path, endpoint, methods=methods)

    # ------------------------------------------------------------------ pages

    def index(self, request: Request) -> Response:
        return RedirectResponse("/inbox", status_code=303)

    def inbox(self, request: Request) -> Response:
        waiting = [v for v in self.runs.views() if v.gate is not None]
        waiting.sort(key=lambda v: v.updated_at)
        driving = [self.drivers.current(r) for r in self.runs.run_ids() if self.drivers.busy(r)]
        return self.page("inbox.html", waiting=waiting, driving=driving, refresh=5)

    def runs_page(self, request: Request) -> Response:
        rows = [material.run_row(self.runs, v) for v in self.runs.views()]
        return self.page("runs.html", rows=rows, refresh=5 if self._any_busy() else None)

    def _any_busy(self) -> bool:
        return any(self.drivers.busy(r) for r in self.runs.run_ids())

    def run_page(self, request: Request) -> Response:
        run_id = check_run_id(request.path_params["run_id"], "run")
        view = self.runs.status(run_id)
        drive = self.drivers.current(run_id)
        busy = self.drivers.busy(run_id)
        state = self.runs.state(run_id)
        context: dict[str, Any] = {
            "view": view,
            "drive": drive,
            "busy": busy,
            "state": state,
            "usage": material.usage_line(view.usage),
        }
        if view.gate == "code" and not busy:
            context["jobs"] = material.code_jobs(self.runs, view)
        if view.gate == "plan" and not busy and state.plan is not None:
            context["plan_json"] = state.plan.model_dump_json(indent=2)
        if view.gate == "publish" and not busy and state.draft is not None:
            folder = material.draft_figures(self.runs.home, run_id, state.draft)
            context["draft_html"] = material.writeup_html(
                folder, state.draft.markdown, state.draft.evidence, state.paper.title
            )
        published = _published(view)
        return self.page("run.html", published=published, refresh=1 if busy else None, **context)

    def progress(self, request: Request) -> Response:
        run_id = check_run_id(request.path_params["run_id"], "run")
        view = self.runs.status(run_id)
        drive = self.drivers.current(run_id)
        return JSONResponse(
            {
                "run_id": run_id,
                "status": view.status,
                "gate": view.gate,
                "driving": self.drivers.busy(run_id),
                "lines": drive.lines if drive else [],
                "error": drive.error if drive else "",
            }
        )

    def decide(self, request: Request) -> Response:
        run_id = check_run_id(request.path_params["run_id"], "run")
        form: dict[str, str] = request.state.form
        action = form.get("action", "")
        reason = form.get("reason", "").strip()
        self.drivers.check_free(run_id)  # before reading where it stands: it is moving
        view = self.runs.status(run_id)
        decision: dict[str, Any]
        if view.gate is None:
            if action != "continue":
                raise UserError(f"run '{run_id}' waits at no gate ({view.status})")
            decision = {}  # interrupted mid-step: continue from the last checkpoint
        elif action == "approve":
            decision = {"approve": True}
        elif action == "revise":
            if not reason:
                raise UserError("send back: say what to change (the reason goes to the Reproducer)")
            decision = {"revise": True, "reason": reason}
        elif action == "reject":
            decision = {"approve": False, "reason": reason}
        elif action == "edit" and view.gate == "code":
            edit: dict[str, dict[str, str]] = {}
            for name, text in form.items():
                if name.startswith("file:"):
                    key, _, filename = name.removeprefix("file:").partition("/")
                    current = self.runs.state(run_id).work[key].reproduction
                    old = current.job.files.get(filename) if current else None
                    if text.replace("\r\n", "\n") != old:
                        edit.setdefault(key, {})[filename] = text.replace("\r\n", "\n")
            if not edit:
                raise UserError("edit: nothing changed; approve it instead")
            decision = {"approve": True, "edit": edit}
        elif action == "edit" and view.gate == "plan":
            try:
                plan = json.loads(form.get("plan", ""))
            except ValueError as exc:
                raise UserError(f"the edited plan: not JSON ({exc})") from exc
            decision = {"approve": True, "plan": plan, "plan_label": "the edited plan"}
        else:
            raise UserError(f"unknown decision '{action}' at the {view.gate} gate")
        self.drivers.start(run_id, action, lambda: self.runs.resume(run_id, **decision))
        return RedirectResponse(f"/runs/{quote(run_id)}", status_code=303)

    def timeline(self, request: Request) -> Response:
        run_id = check_run_id(request.path_params["run_id"], "run")
        view = self.runs.status(run_id)
        steps = self.runs.timeline(run_id)
        at: int | None = None
        rows: list[tuple[str, str]] = []
        if "step" in request.query_params:
            try:
                at = int(request.query_params["step"])
            except ValueError as exc:
                raise UserError("step: give a number") from exc
            from graphs.replay import summary_at

            rows = summary_at(self.runs.state_at(run_id, at))
        return self.page("timeline.html", view=view, steps=steps, at=at, rows=rows)

    def fork(self, request: Request) -> Response:
        run_id = check_run_id(request.path_params["run_id"], "run")
        try:
            step = int(request.state.form.get("step", ""))
        except ValueError as exc:
            raise UserError("fork: give a step number") from exc
        new_id = self.runs.fork(run_id, step)
        self.drivers.start(new_id, "fork", lambda: self.runs.resume(new_id))
        return RedirectResponse(f"/runs/{quote(new_id)}", status_code=303)

    def writeup(self, request: Request) -> Response:
        run_id = check_run_id(request.path_params["run_id"], "run")
        view = self.runs.status(run_id)
        folder = _published(view)
        if folder is None:
            raise UserError(f"run {run_id}: no published write-up ({view.status})")
        lang = request.query_params.get("lang", "en")
        name = "writeup.md" if lang == "en" else f"writeup.{lang}.md"
        if lang not in ("en", "zh") or not (folder / name).is_file():
            raise UserError(f"run {run_id}: no {name} (export it in Chinese first)")
        from tools.verify import load_evidence

        body = material.writeup_html(
            folder, (folder / name).read_text(encoding="utf-8"), load_evidence(folder), view.title
        )
        exports = sorted(p.name for p in folder.glob("writeup*.html"))
        return self.page("writeup.html", view=view, body=body, lang=lang, exports=exports)

    def export(self, request: Request) -> Response:
        """The same export as `reprodesk export RUN --html [--lang zh]`."""
        run_id = check_run_id(request.path_params["run_id"], "run")
        folder = _published(self.runs.status(run_id))
        if folder is None:
            raise UserError(f"run {run_id}: not published; nothing to export")
        lang = request.state.form.get("lang", "en")
        if lang not in ("en", "zh"):
            raise UserError(f"export: language '{lang}': give en or zh")
        from tools.export import export_html

        if lang == "zh":
            from tools.zh import translate

            (folder / "writeup.zh.md").write_text(
                translate((folder / "writeup.md").read_text(encoding="utf-8")), encoding="utf-8"
            )
        target = export_html(folder, lang)
        return RedirectResponse(f"/runs/{quote(run_id)}/files/{target.name}", status_code=303)

    def files(self, request: Request) -> Response:
        """An exported HTML file of a published run (nothing else in its folder)."""
        run_id = check_run_id(request.path_params["run_id"], "run")
        name = request.path_params["name"]
        folder = _published(self.runs.status(run_id))
        if folder is None or name not in {p.name for p in folder.glob("writeup*.html")}:
            return self.refuse(404, f"run {run_id} has no exported file {name}")
        return FileResponse(folder / name, headers={"Content-Security-Policy": "script-src 'none'"})

    def findings(self, request: Request) -> Response:
        q = request.query_params
        query, metric = q.get("q", "").strip(), q.get("metric", "").strip()
        mechanism = q.get("mechanism", "").strip() or None
        verdict = q.get("verdict", "").strip() or None
        hits: list[Any] = []
        compare: list[Any] = []
        error = ""
        try:
            store = self.app.deps.open_store()
            if not callable(getattr(store, "search", None)):
                raise UserError(f"the findings store here ({type(store).__name__}) cannot search")
            if query:
                hits = [
                    h.finding
                    for h in store.search(query, k=20, mechanism=mechanism, verdict=verdict)
                ]
            if metric:
                from memory.store import Filters

                compare = [
                    f
                    for f in store.findings(Filters(mechanism=mechanism, verdict=verdict))
                    if f.metric == metric
                ]
        except UserError as exc:
            error = str(exc)
        return self.page(
            "findings.html",
            query=query,
            metric=metric,
            mechanism=mechanism or "",
            verdict=verdict or "",
            hits=hits,
            compare=compare,
            error=error,
        )

    # ------------------------------------------------------------------ the app

    def asgi(self) -> Starlette:
        r = self.route
        routes = [
            r("/", self.index, ["GET"]),
            r("/inbox", self.inbox, ["GET"]),
            r("/runs", self.runs_page, ["GET"]),
            r("/runs/{run_id}", self.run_page, ["GET"]),
            r("/runs/{run_id}/progress", self.progress, ["GET"]),
            r("/runs/{run_id}/decide", self.decide, ["POST"]),
            r("/runs/{run_id}/timeline", self.timeline, ["GET"]),
            r("/runs/{run_id}/fork", self.fork, ["POST"]),
            r("/runs/{run_id}/writeup", self.writeup, ["GET"]),
            r("/runs/{run_id}/export", self.export, ["POST"]),
            r("/runs/{run_id}/files/{name}", self.files, ["GET"]),
            r("/findings", self.findings, ["GET"]),
            r("/static/desk.css", self.css, ["GET"]),
        ]
        return Starlette(routes=routes)

    def css(self, request: Request) -> Response:
        path = Path(__file__).parent / "static" / "desk.css"
        return Response(path.read_text(encoding="utf-8"), media_type="text/css")


def _published(view: Any) -> Path | None:
    outcome = view.outcome
    if outcome is None or outcome.status != "published" or not outcome.path:
        return None
    folder = Path(outcome.path)
    return folder if (folder / "writeup.md").is_file() else None


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (the only kind the pages send), last value per field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
