"""Paper loading over HTTP: sniffing, retries, redirects, caps, deadlines, cache, HTML and
LaTeX sources from a real server on 127.0.0.1.

Local files and archives: test_paper_files.py; two-column layout: test_paper_layout.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reprodesk.schemas import Paper
from tests.paper_kit import (  # noqa: F401
    ARTICLE_HTML,
    INTRO_TEX,
    MAIN_TEX,
    NOTE_MD,
    PDF_PAGES,
    REFS_BBL,
    ROOT,
    SOURCE_TARBALL,
    _png,
    error_for,
    fast,
    tarball,
)
from tests.pdfgen import make_pdf
from tools.digest import digest
from tools.papers import load_paper
from tools.papers.cache import PARSER_VERSION
from tools.papers.fetch import USER_AGENT


@pytest.fixture(scope="module")
def pdf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("pdf") / "paper.pdf"
    return make_pdf(path, PDF_PAGES, title="DeepSeek-V2").read_bytes()


@dataclass
class Server:
    """The running server: its base URL, and what it saw (request counts, headers)."""

    base: str
    hits: Counter[str] = field(default_factory=Counter)
    user_agents: list[str] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)  # a client, mid-trickle

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server(pdf_bytes: bytes) -> Iterator[Server]:
    lock, release, png = threading.Lock(), threading.Event(), _png()
    state = Server(base="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest output clean

        def send(self, body: bytes, ctype: str, status: int = 200, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", headers.pop("length", str(len(body))))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            with lock:
                state.hits[self.path] += 1
                n = state.hits[self.path]
                state.user_agents.append(self.headers.get("User-Agent", ""))
            path, _, query = self.path.partition("?")
            if path == "/paper.pdf":  # served as octet-stream: the loader must sniff
                self.send(pdf_bytes, "application/octet-stream")
            elif path == "/note":
                self.send(NOTE_MD, "text/plain; charset=utf-8")
            elif path == "/missing":
                self.send_error(404)
            elif path == "/flaky" and n <= 2:
                self.send_error(500)
            elif path == "/down":
                self.send_error(503)
            elif path == "/busy" and n == 1:
                self.send(b"slow down", "text/plain", 429, Retry_After=query.split("=")[1])
            elif path in ("/flaky", "/busy"):
                self.send(NOTE_MD, "text/markdown")
            elif path.startswith("/hop/"):
                hops = int(path.rsplit("/", 1)[1])
                self.redirect(f"/hop/{hops - 1}" if hops > 0 else "/paper.pdf")
            elif path == "/loop":
                self.redirect("/loop")
            elif path == "/image.pdf":
                self.send(png, "application/pdf")
            elif path == "/huge":
                self.send(b"x" * 100_000, "text/plain")
            elif path == "/huge-stream":  # no Content-Length: only counting the stream stops it
                self.send_response(200)
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # the client hangs up past its cap
                    for _ in range(20):
                        self.wfile.write(b"y" * 10_000)
            elif path == "/claims-70mb":  # declares more than the default cap, sends little
                self.send(b"z" * 10, "application/pdf", length=str(70 * 1024 * 1024))
            elif path == "/slow":
                release.wait(5)  # never answers within the test's read timeout
            elif path in ("/trickle", "/trickle-headers"):  # a byte every 0.1 s, for 15 s
                if path == "/trickle":  # the body trickles
                    self.send_response(200)
                    self.end_headers()
                else:  # the headers never end
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                try:
                    for _ in range(150):
                        self.wfile.write(b"#")
                        self.wfile.flush()
                        if release.wait(0.1):
                            break
                except ConnectionError:  # the client hung up: its deadline
                    state.hung_up.set()
            elif path == "/fake.pdf":  # a login or error page where a PDF was promised
                self.send(ARTICLE_HTML, "application/pdf")
            elif path == "/article":
                self.send(ARTICLE_HTML, "text/html; charset=utf-8")
            elif path == "/src.tar.gz":
                self.send(SOURCE_TARBALL, "application/x-gzip")
            else:
                self.send_error(418)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- over HTTP


def test_pdf_over_http_is_sniffed_and_split_into_pages(server: Server, pdf_bytes: bytes) -> None:
    paper = load_paper(server.url("/paper.pdf"), fetcher=fast())
    assert paper.kind == "pdf"
    assert paper.source == server.url("/paper.pdf")
    assert paper.title == "DeepSeek-V2"
    assert paper.sha256 == hashlib.sha256(pdf_bytes).hexdigest()
    assert len(paper.pages) == 3
    assert "Abstract: we present MLA." in paper.pages[0]
    assert "dc = 512" in paper.pages[1]  # NFKC: math-italic 𝑑𝑐 becomes plain dc
    assert "routed to 6 experts" in paper.pages[2]
    assert server.user_agents == [USER_AGENT]


def test_markdown_over_http_is_sniffed_from_its_heading(server: Server) -> None:
    paper = load_paper(server.url("/note"), fetcher=fast())
    assert (paper.kind, paper.title) == ("markdown", "MLA in one page")
    assert paper.pages == [NOTE_MD.decode()]


def test_404_fails_at_once(server: Server) -> None:
    url = server.url("/missing")
    assert error_for(url, fetcher=fast()) == f"cannot fetch {url!r}: HTTP 404 Not Found"
    assert server.hits["/missing"] == 1


def test_500_twice_then_200_is_retried(server: Server) -> None:
    assert load_paper(server.url("/flaky"), fetcher=fast()).title == "MLA in one page"
    assert server.hits["/flaky"] == 3


def test_429_with_retry_after_zero_is_retried(server: Server) -> None:
    assert load_paper(server.url("/busy?after=0"), fetcher=fast()).kind == "markdown"
    assert server.hits["/busy?after=0"] == 2


def test_a_long_retry_after_is_capped(server: Server) -> None:
    started = time.monotonic()
    load_paper(server.url("/busy?after=20"), fetcher=fast(max_retry_after_s=0.05))
    assert time.monotonic() - started < 3
    assert server.hits["/busy?after=20"] == 2


def test_persistent_5xx_gives_up_with_the_last_reason(server: Server, tmp_path: Path) -> None:
    message = error_for(server.url("/down"), fetcher=fast(), cache_dir=tmp_path)
    assert "HTTP 503 Service Unavailable" in message
    assert "gave up after 3 attempts" in message
    assert server.hits["/down"] == 3
    assert list(tmp_path.rglob("*")) == []  # failures are never cached


def test_redirect_chain_is_followed(server: Server) -> None:
    paper = load_paper(server.url("/hop/3"), fetcher=fast())
    assert paper.kind == "pdf"
    assert paper.source == server.url("/hop/3")
    assert server.hits["/paper.pdf"] == 1


def test_redirect_loop_stops_at_the_cap(server: Server) -> None:
    assert "more than 5 redirects" in error_for(server.url("/loop"), fetcher=fast())
    assert server.hits["/loop"] == 6  # the first request and five redirects, no retries


def test_image_served_as_pdf_is_rejected(server: Server, tmp_path: Path) -> None:
    message = error_for(server.url("/image.pdf"), fetcher=fast(), cache_dir=tmp_path)
    assert "is an image, not a paper" in message
    assert list(tmp_path.rglob("*")) == []  # fetched fine, but not a paper: not cached


@pytest.mark.parametrize("path", ["/huge", "/huge-stream"])
def test_oversized_body_is_cut_off(server: Server, path: str) -> None:
    message = error_for(server.url(path), fetcher=fast(max_bytes=1000))
    assert "larger than 1000 bytes" in message
    assert server.hits[path] == 1


def test_declared_length_past_the_default_cap_is_refused(server: Server) -> None:
    assert "larger than 64 MB" in error_for(server.url("/claims-70mb"), fetcher=fast())


def test_slow_server_hits_the_read_timeout(server: Server) -> None:
    started = time.monotonic()
    message = error_for(server.url("/slow"), fetcher=fast(read_timeout=0.2, attempts=2))
    assert "read timeout" in message
    assert "gave up after 2 attempts" in message
    assert time.monotonic() - started < 3
    assert server.hits["/slow"] == 2


@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
def test_a_trickling_server_is_cut_off_at_the_fetch_deadline(server: Server, path: str) -> None:
    url = server.url(path)
    message = error_for(url, fetcher=fast(read_timeout=1.0, deadline_s=1.5))
    assert message == (
        f"cannot fetch {url!r}: not done within the 1.5 s deadline (the server is too slow)"
    )
    assert server.hung_up.wait(5)  # cut off mid-trickle, not at the server's own end
    assert server.hits[path] == 1  # a deadline is no transient failure: no retry


def test_retries_stop_at_the_fetch_deadline(server: Server) -> None:
    url = server.url("/down")
    message = error_for(url, fetcher=fast(attempts=10, backoff_s=0.4, deadline_s=1.0))
    assert "not done within the 1 s deadline" in message
    assert server.hits["/down"] < 10  # the deadline came before the attempts ran out


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    message = error_for(f"http://127.0.0.1:{port}/paper.pdf", fetcher=fast(attempts=2))
    assert "ConnectError" in message
    assert "gave up after 2 attempts" in message


def test_cache_serves_the_second_load_and_refresh_bypasses_it(
    server: Server, tmp_path: Path, pdf_bytes: bytes
) -> None:
    url = server.url("/paper.pdf")
    first = load_paper(url, cache_dir=tmp_path, fetcher=fast())
    second = load_paper(url, cache_dir=tmp_path, fetcher=fast())
    assert server.hits["/paper.pdf"] == 1
    assert second == first
    entry = tmp_path / "papers" / hashlib.sha256(url.encode()).hexdigest()
    assert entry.read_bytes() == pdf_bytes
    assert list(entry.parent.iterdir()) == [entry]  # no temp files left behind
    assert load_paper(url, cache_dir=tmp_path, refresh=True, fetcher=fast()) == first
    assert server.hits["/paper.pdf"] == 2


def test_unsupported_scheme_is_refused() -> None:
    assert "unsupported URL scheme 'ftp'" in error_for("ftp://example.org/paper.pdf")


# --------------------------------------------------------------------------- more sources


def test_html_where_a_pdf_was_promised_is_refused(server: Server, tmp_path: Path) -> None:
    url = server.url("/fake.pdf")
    message = error_for(url, fetcher=fast(), cache_dir=tmp_path)
    assert "a PDF was expected but the answer is an HTML page" in message
    assert list(tmp_path.rglob("*")) == []


def test_html_article_has_metadata_sections_and_tables(server: Server) -> None:
    paper = load_paper(server.url("/article"), fetcher=fast())
    assert paper.kind == "html"
    assert paper.title == "Group Relative Policy Optimization, explained"
    assert (paper.authors, paper.date) == (["Ada Lovelace", "Alan Turing"], "2024-02-05")
    assert paper.abstract == "We adopt Group Relative Policy Optimization."
    assert [s.heading for s in paper.sections] == ["GRPO, explained", "Abstract", "1 Method"]
    assert paper.tables[0].heading == "Table 1: Memory."
    assert paper.tables[0].text == "Method | Memory\nPPO | 100%\nGRPO | 61.5%"
    assert [c.page for c in digest(paper).claims] == [1]


def test_latex_tarball_over_http_is_parsed_and_cached(server: Server, tmp_path: Path) -> None:
    url = server.url("/src.tar.gz")
    paper = load_paper(url, cache_dir=tmp_path, fetcher=fast())
    assert (paper.kind, paper.page_unit) == ("tex", "section")
    assert paper.title == "DeepSeek-V2: A Strong and Economical MoE Model"
    assert paper.authors == ["Ada Lovelace", "Alan Turing"]
    assert paper.abstract == "DeepSeek-V2 reduces the KV cache by 93.3%."
    headings = [(s.page, s.heading) for s in paper.sections]
    assert headings == [(1, ""), (2, "Abstract"), (3, "1 Introduction"), (4, "2 Hyperparameters")]
    assert paper.pages[2].startswith("1 Introduction\n\nWe adopt Multi-head Latent Attention")
    assert paper.references == ["DeepSeek-AI. DeepSeek-V2. 2024."]
    assert [(q.text, q.page) for q in paper.equations] == [("c_t = W^{DKV} h_t", 4)]
    found = digest(paper)
    assert [m.name for m in found.mechanisms] == ["mla"]
    assert [(h.name, h.value, h.quote.page) for h in found.hyperparameters] == [("d_c", 512, 4)]
    assert load_paper(url, cache_dir=tmp_path, fetcher=fast()) == paper
    assert server.hits["/src.tar.gz"] == 1


def test_cache_keeps_the_parse_and_redoes_an_older_one(
    server: Server, tmp_path: Path, pdf_bytes: bytes
) -> None:
    url = server.url("/paper.pdf")
    first = load_paper(url, cache_dir=tmp_path, fetcher=fast())
    (entry,) = (tmp_path / "parsed").iterdir()
    stored = json.loads(entry.read_text())
    assert (stored["version"], stored["key"]) == (PARSER_VERSION, url)
    assert Paper.model_validate(stored["paper"]) == first
    started = time.perf_counter()
    assert load_paper(url, cache_dir=tmp_path, fetcher=fast()) == first
    assert time.perf_counter() - started < 0.5  # JSON, not a PDF parse (bench: ~ms)
    entry.write_text(json.dumps({**stored, "version": PARSER_VERSION - 1, "paper": {}}))
    assert load_paper(url, cache_dir=tmp_path, fetcher=fast()) == first  # parsed again
    assert server.hits["/paper.pdf"] == 1  # ... from the cached bytes, not fetched
    assert json.loads(entry.read_text())["version"] == PARSER_VERSION


def test_a_2_gb_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.pdf"
    with path.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: no disk used, and it must never be read
    started = time.monotonic()
    assert error_for(str(path)).endswith(": it is larger than 64 MB")
    assert time.monotonic() - started < 1


def test_markdown_has_sections_and_references(tmp_path: Path) -> None:
    note = (
        "# MTP\n\n## Abstract\n\nPredict two tokens.\n\n"
        "## References\n\n- [1] A. B. Title. 2024.\n- C. D. Other. 2023.\n"
    )
    (tmp_path / "mtp.md").write_text(note)
    paper = load_paper(str(tmp_path / "mtp.md"))
    assert [(s.level, s.heading) for s in paper.sections] == [
        (1, "MTP"),
        (2, "Abstract"),
        (2, "References"),
    ]
    assert paper.abstract == "Predict two tokens."
    assert paper.references == ["[1] A. B. Title. 2024.", "C. D. Other. 2023."]


def test_text_file_has_sections_from_numbered_headings(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text(
        "A paper\n\n1 Introduction\nWe study MTP.\n\fReferences\n[1] X.\n"
    )
    paper = load_paper(str(tmp_path / "p.txt"))
    assert [(s.page, s.heading) for s in paper.sections] == [
        (1, ""),
        (1, "1 Introduction"),
        (2, "References"),
    ]
    assert paper.references == ["[1] X."]
