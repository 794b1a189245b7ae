"""`reprodesk watch` against imitations of the arXiv API and GitHub releases on 127.0.0.1.

The imitation answers the listing query with Atom XML (its entries can change between
polls), `id_list` queries with one entry, /e-print/ID with a gzipped LaTeX source about
MLA, and /repos/OWNER/NAME/releases with JSON. Every paper queued must be a run waiting
at the plan gate; a paper seen once is never queued again.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from reprodesk.compose import build_app
from reprodesk.desk.watch import DEFAULT_QUERY, ArxivListing, GithubReleases, Watcher
from reprodesk.settings import Settings
from tests.fakes import FakeSandbox, ListStore
from tools.papers.arxiv import ArxivClient

ROOT = Path(__file__).resolve().parents[2]
TEX = r"""\documentclass{article}
\title{%s}
\author{DeepSeek-AI}
\begin{document}
\maketitle
\begin{abstract}
We adopt Multi-head Latent Attention (MLA), which reduces the KV cache by 93.3\%%.
\end{abstract}
\section{Architecture}
The core of MLA is the low-rank key-value joint compression, with a decoupled RoPE.
In MLA, we set the number of attention heads $n_h$ to 128 and the per-head dimension
$d_h$ to 128. The KV compression dimension $d_c$ is set to 512.
\end{document}
"""
ENTRY = """<entry><id>http://arxiv.org/abs/{id}v1</id><published>2026-11-30T17:00:00Z</published>
<title>{title}</title><summary>MLA again.</summary>
<author><name>DeepSeek-AI</name></author></entry>"""
FEED = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>ArXiv Query</title>{entries}</feed>"""


@dataclass
class Imitation:
    base: str
    listed: list[str]  # arXiv ids in the listing, newest first
    releases: list[dict[str, Any]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)  # search_query values asked for
    eprints: list[str] = field(default_factory=list)

    @staticmethod
    def title(id_: str) -> str:
        return f"DeepSeek note {id_}: latent attention"

    @property
    def client(self) -> ArxivClient:
        return ArxivClient(
            api_url=f"{self.base}/api/query",
            eprint_url=f"{self.base}/e-print/",
            pdf_url=f"{self.base}/pdf/",
        )


def _tarball(text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("main.tex")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def imitation() -> Iterator[Imitation]:
    state = Imitation(base="", listed=["2611.00001", "2611.00002"])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send(self, body: bytes, ctype: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            q = parse_qs(parts.query)
            with lock:
                if parts.path == "/api/query" and "search_query" in q:
                    state.queries.append(q["search_query"][0])
                    n = int(q.get("max_results", ["10"])[0])
                    entries = "".join(
                        ENTRY.format(id=i, title=state.title(i)) for i in state.listed[:n]
                    )
                    return self.send(FEED.format(entries=entries).encode(), "application/atom+xml")
                if parts.path == "/api/query" and "id_list" in q:
                    id_ = q["id_list"][0].split("v")[0]
                    entry = ENTRY.format(id=id_, title=state.title(id_))
                    return self.send(FEED.format(entries=entry).encode(), "application/atom+xml")
                if parts.path.startswith("/e-print/"):
                    id_ = parts.path.rsplit("/", 1)[-1].split("v")[0]
                    state.eprints.append(id_)
                    return self.send(_tarball(TEX % state.title(id_)), "application/gzip")
                if parts.path == "/repos/deepseek-ai/DeepSeek-V3/releases":
                    return self.send(json.dumps(state.releases).encode(), "application/json")
                if parts.path == "/repos/broken/repo/releases":
                    return self.send(b"<html>not json</html>", "text/html")
            self.send(b"not found", "text/plain", 404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def _watch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPRODESK_")}
    env["REPRODESK_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "reprodesk", "watch", "--once", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def _waiting(home: Path) -> dict[str, str]:
    """title -> gate of every run in `home`."""
    app = build_app(Settings(home=home), sandbox=FakeSandbox(), store=ListStore())  # type: ignore[call-arg]
    try:
        return {v.title: str(v.gate) for v in app.runs.views()}
    finally:
        app.close()


def test_watch_once_queues_exactly_the_new_papers_once(home: Path, imitation: Imitation) -> None:
    first = _watch(home, "--arxiv-url", imitation.base)
    assert first.returncode == 0, first.stderr
    assert "poll: 2 new queued, 0 already seen" in first.stdout
    assert imitation.queries == [DEFAULT_QUERY]  # the default query: DeepSeek
    one, two = (imitation.title(i) for i in imitation.listed)
    assert _waiting(home) == {one: "plan", two: "plan"}

    again = _watch(home, "--arxiv-url", imitation.base)
    assert again.returncode == 0, again.stderr
    assert "poll: 0 new queued, 2 already seen" in again.stdout
    assert len(_waiting(home)) == 2 and sorted(imitation.eprints) == sorted(imitation.listed)

    imitation.listed.insert(0, "2612.00003")  # a new submission tops the listing
    third = _watch(home, "--arxiv-url", imitation.base)
    assert third.returncode == 0, third.stderr
    assert "poll: 1 new queued, 2 already seen" in third.stdout
    assert "queued arxiv:2612.00003" in third.stdout and "(paused at the plan gate)" in third.stdout
    assert _waiting(home) == {one: "plan", two: "plan", imitation.title("2612.00003"): "plan"}
    seen = json.loads((home / "watch" / "seen.json").read_text())
    assert sorted(seen) == [f"arxiv:{i}" for i in sorted(imitation.listed)]


def _watcher(home: Path, imitation: Imitation, sources: list[Any], max_new: int = 5) -> Watcher:
    app = build_app(
        Settings(home=home),
        sandbox=FakeSandbox(),
        store=ListStore(),  # type: ignore[call-arg]
    )
    return Watcher(app, sources, arxiv=imitation.client, max_new=max_new)


def test_github_releases_name_papers_and_meet_the_arxiv_ones(
    home: Path, imitation: Imitation
) -> None:
    imitation.releases = [
        {"tag_name": "v1.1", "name": "V3.1", "body": "Paper: https://arxiv.org/abs/2611.00002"},
        {"tag_name": "v1.2", "name": "V3.2", "body": "See arXiv:2612.00009v2 for details"},
        {"tag_name": "v0.9", "name": "weights only", "body": "no paper in this one"},
        {"tag_name": "v2", "name": "draft", "draft": True, "body": "arXiv:2612.00010"},
    ]
    arxiv = ArxivListing(client=imitation.client)
    releases = GithubReleases("deepseek-ai/DeepSeek-V3", api_url=imitation.base)
    watcher = _watcher(home, imitation, [arxiv, releases])
    report = watcher.poll_once()
    assert sorted(p.key for p, _ in report.queued) == [
        "arxiv:2611.00001",
        "arxiv:2611.00002",  # listed by both: one run
        "arxiv:2612.00009",
    ]
    views = {v.run_id: v for v in watcher.app.runs.views()}
    assert {views[r].gate for _, r in report.queued} == {"plan"}
    again = watcher.poll_once()
    assert again.queued == [] and again.known == 4


def test_a_failing_source_does_not_stop_the_others_and_polling_backs_off(
    home: Path, imitation: Imitation
) -> None:
    broken = GithubReleases("broken/repo", api_url=imitation.base)
    watcher = _watcher(home, imitation, [broken, ArxivListing(client=imitation.client)], 1)
    report = watcher.poll_once()
    assert report.sources_failed == 1 and "not JSON" in report.errors[0]
    assert len(report.queued) == 1 and report.deferred == 1  # bounded: one run per poll
    waits: list[float] = []
    watcher.sources = [broken]
    polls = watcher.run(interval_s=10, max_polls=4, sleep=waits.append, max_backoff_s=50)
    assert polls == 4 and waits == [20, 40, 50]  # doubles while every source fails, capped
    watcher.sources = [ArxivListing(client=imitation.client)]
    waits.clear()
    watcher.run(interval_s=10, max_polls=2, sleep=waits.append)
    assert waits == [10]
