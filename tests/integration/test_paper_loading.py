"""The paper loader against a real HTTP server on 127.0.0.1 and real files on disk.

The server is the stdlib ThreadingHTTPServer with scripted misbehaviour (flaky 5xx,
429, redirect chains and loops, lying Content-Type and Content-Length, stalls, an
HTML page where a PDF was promised). PDFs are real ones made by matplotlib
(tests/pdfgen.py), encrypted with pypdf's writer; LaTeX tarballs, hostile ones
included, are made in memory. A six-page two-column paper of our own making, drawn
row by row across both columns with running heads and page numbers, states MLA and
DeepSeekMoE hyperparameters and claims on known pages: the digest must find each,
on its page, and nothing from related work or references. Fetchers get tiny
timeouts and backoff so the whole file runs in seconds. Every failure must be one
UserError line that names the input and the reason.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import socket
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from pypdf import PdfWriter

from recipes.catalog import CATALOG
from reprodesk.schemas import Paper, UserError
from tools.digest import digest
from tools.papers import load_paper
from tools.papers.archive import ArchiveLimits
from tools.papers.cache import PARSER_VERSION
from tools.papers.fetch import USER_AGENT, Fetcher

try:
    from tests.pdfgen import ColumnPage, column, make_image_pdf, make_pdf, make_two_column_pdf
except ImportError:  # pytest's default import mode puts tests/integration, not the root, on path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.pdfgen import ColumnPage, column, make_image_pdf, make_pdf, make_two_column_pdf

ROOT = Path(__file__).resolve().parents[2]

PDF_PAGES = [
    ["DeepSeek-V2: A Strong, Economical, and Efficient MoE Model", "Abstract: we present MLA."],
    ["Multi-head Latent Attention compresses the KV cache.", "We set 𝑑𝑐 = 512 and 𝑑𝑅 ℎ = 64."],
    ["DeepSeekMoE uses fine-grained experts.", "Each token is routed to 6 experts."],
]
NOTE_MD = b"# MLA in one page\n\nLow-rank joint compression of keys and values.\n"
ARTICLE_HTML = b"""<!DOCTYPE html><html><head><title>Site | GRPO explained</title>
<meta name="citation_title" content="Group Relative Policy Optimization, explained">
<meta name="citation_author" content="Ada Lovelace">
<meta name="citation_author" content="Alan Turing">
<meta name="citation_publication_date" content="2024/02/05"></head><body>
<h1>GRPO, explained</h1><h2>Abstract</h2><p>We adopt Group Relative Policy Optimization.</p>
<h2>1 Method</h2><p>GRPO reduces memory by 38.5% compared with PPO.</p>
<table><caption>Table 1: Memory.</caption><tr><th>Method</th><th>Memory</th></tr>
<tr><td>PPO</td><td>100%</td></tr><tr><td>GRPO</td><td>61.5%</td></tr></table>
</body></html>"""
MAIN_TEX = rb"""\documentclass{article}
\newcommand{\model}{DeepSeek-V2}
\title{\model: A Strong and Economical MoE Model}
\author{Ada Lovelace \and Alan Turing}
\begin{document}\maketitle
\begin{abstract}\model{} reduces the KV cache by 93.3\%.\end{abstract}
\input{sections/intro}
\section{Hyperparameters}
The KV compression dimension $d_{c}$ is set to 512. % and a comment
\begin{equation} c_t = W^{DKV} h_t \end{equation}
\bibliographystyle{plain}\bibliography{refs}
\end{document}
"""
INTRO_TEX = rb"""\section{Introduction}
We adopt Multi-head Latent Attention (MLA)~\citep{mla}, with low-rank key-value joint compression.
"""
REFS_BBL = rb"""\begin{thebibliography}{1}
\bibitem{mla} DeepSeek-AI. \newblock DeepSeek-V2. \newblock 2024.
\end{thebibliography}
"""


def tarball(members: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz made in memory: regular files, plus symbolic links name -> target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


SOURCE_TARBALL = tarball(
    {"main.tex": MAIN_TEX, "sections/intro.tex": INTRO_TEX, "main.bbl": REFS_BBL, "fig.png": b"x"}
)


def _png() -> bytes:
    buf = io.BytesIO()
    Figure(figsize=(1, 1)).savefig(buf, format="png")
    return buf.getvalue()


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


def fast(**overrides: Any) -> Fetcher:
    """A fetcher with test-sized waits; the retry logic is the production one."""
    settings: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 2.0, "backoff_s": 0.01}
    return Fetcher(**(settings | overrides))


def error_for(source: str, **kwargs: Any) -> str:
    """The UserError message for loading `source`, checked to be one line naming it."""
    with pytest.raises(UserError) as info:
        load_paper(source, **kwargs)
    message = str(info.value)
    assert repr(source) in message, message
    assert "\n" not in message
    return message


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


# --------------------------------------------------------------------------- local files


def test_multi_page_pdf_puts_each_page_on_its_page(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "paper.pdf", PDF_PAGES)  # no /Title: first line is the title
    paper = load_paper(str(path))
    assert (paper.kind, paper.source, len(paper.pages)) == ("pdf", str(path), 3)
    assert paper.title == PDF_PAGES[0][0]
    for lines, text in zip(PDF_PAGES[::2], paper.pages[::2], strict=True):
        assert text.splitlines() == lines  # matplotlib keeps each fig.text line intact
    assert "compresses the KV cache" in paper.pages[1]
    assert "6 experts" not in paper.pages[1]


def test_markdown_file(tmp_path: Path) -> None:
    (tmp_path / "note.md").write_bytes(NOTE_MD)
    paper = load_paper(str(tmp_path / "note.md"))
    assert (paper.kind, paper.title, len(paper.pages)) == ("markdown", "MLA in one page", 1)


def test_md_extension_makes_markdown_without_headings(tmp_path: Path) -> None:
    (tmp_path / "plain.md").write_text("Just a *note* on GRPO.\n")
    assert load_paper(str(tmp_path / "plain.md")).kind == "markdown"


def test_text_file_splits_pages_on_form_feeds(tmp_path: Path) -> None:
    (tmp_path / "paper.txt").write_text("\n  GRPO paper\nintro\fmethod\fresults\f")
    paper = load_paper(str(tmp_path / "paper.txt"))
    assert (paper.kind, paper.title) == ("text", "GRPO paper")
    assert paper.pages == ["\n  GRPO paper\nintro", "method", "results"]  # no page after last \f


def test_tex_file_takes_its_title(tmp_path: Path) -> None:
    tex = r"""\documentclass{article}
\title{Multi-Token \textbf{Prediction}\thanks{Work done elsewhere.}}
\begin{document}\maketitle Predict two tokens.\end{document}
"""
    (tmp_path / "mtp.tex").write_text(tex)
    paper = load_paper(str(tmp_path / "mtp.tex"))
    assert (paper.kind, paper.title, paper.page_unit) == (
        "tex",
        "Multi-Token Prediction",
        "section",
    )
    assert paper.pages == ["Multi-Token Prediction\nPredict two tokens."]  # TeX read as text


def test_html_file_keeps_text_and_drops_scripts(tmp_path: Path) -> None:
    html = """
    <!DOCTYPE html><html><head><title> FP8 Training </title>
    <style>p { color: red }</style><script>var secret = 1;</script></head>
    <body><h1>FP8</h1><p>Scaling per tile &amp; per block.</p><div>one<br>two</div></body></html>
    """
    (tmp_path / "page.txt").write_text(html)  # the name says txt; the bytes say html
    paper = load_paper(str(tmp_path / "page.txt"))
    assert (paper.kind, paper.title) == ("html", "FP8 Training")
    assert paper.pages == ["FP8\n\nScaling per tile & per block.\n\none\ntwo"]


def test_html_navigation_and_footer_are_not_the_paper(tmp_path: Path) -> None:
    html = """<!DOCTYPE html><html><head><title>FP8</title></head><body>
    <nav><ul><li><a href="/">Home</a></li><li>Papers with 2x more news</li></ul></nav>
    <article><header><h1>FP8 Training</h1><p>Ada Lovelace</p></header>
    <p>Blockwise scaling reduces memory by 40%.</p>
    <aside>Related: our site is 3x faster.</aside></article>
    <footer>Subscribe: 10% off this week.</footer></body></html>"""
    (tmp_path / "page.html").write_text(html)
    paper = load_paper(str(tmp_path / "page.html"))
    assert paper.pages == [
        "FP8 Training\n\nAda Lovelace\n\nBlockwise scaling reduces memory by 40%."
    ]
    assert [c.text for c in digest(paper).claims] == ["Blockwise scaling reduces memory by 40%."]


def test_file_url_relative_path_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "my notes.md"
    path.write_bytes(NOTE_MD)
    assert load_paper(path.as_uri()).source == str(path)  # file:///...my%20notes.md
    monkeypatch.chdir(tmp_path)
    assert load_paper("my notes.md").source == str(path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_paper("~/my notes.md").source == str(path)


def test_sub_and_superscripts_stay_on_their_line(tmp_path: Path) -> None:
    lines = [
        "Scripts in MLA: multi-head latent attention.",
        r"The KV compression dimension $d_c$ is set to 512.",  # mathtext: lowered, smaller
        r"For the decoupled queries and key, we set the per-head dimension $d_h^R$ to 64.",
    ]
    paper = load_paper(str(make_pdf(tmp_path / "scripts.pdf", [lines])))
    assert paper.pages[0].splitlines()[1:] == [
        "The KV compression dimension dc is set to 512.",
        "For the decoupled queries and key, we set the per-head dimension dRh to 64.",
    ]
    stated = {h.name: h.value for h in digest(paper).hyperparameters}
    assert (stated.get("d_c"), stated.get("d_rope")) == (512, 64)


def test_encrypted_pdf_is_refused(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", PDF_PAGES))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    writer.write(tmp_path / "locked.pdf")
    message = error_for(str(tmp_path / "locked.pdf"))
    assert message == f"cannot read {str(tmp_path / 'locked.pdf')!r}: the PDF is encrypted"


def test_pdf_with_empty_user_password_opens(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", PDF_PAGES))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    writer.write(tmp_path / "no-print.pdf")
    assert "compresses the KV cache" in load_paper(str(tmp_path / "no-print.pdf")).pages[1]


def test_truncated_pdf_is_damaged(tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "full.pdf", PDF_PAGES).read_bytes()
    (tmp_path / "half.pdf").write_bytes(data[: len(data) // 2])
    assert "the PDF is damaged or truncated" in error_for(str(tmp_path / "half.pdf"))


def test_image_only_pdf_has_no_text_layer(tmp_path: Path) -> None:
    path = make_image_pdf(tmp_path / "scan.pdf")
    assert "the PDF has no text layer (scanned?)" in error_for(str(path))


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.md", b"", "is empty"),
        ("blank.txt", b" \n\t\n", "is empty"),
        ("paper.pdf.gz", gzip.compress(b"%PDF-1.7"), "the PDF is damaged or truncated"),
        ("nested.gz", gzip.compress(gzip.compress(b"x")), "an archive inside an archive"),
        ("blob.bin", b"\xff\xfe\x00garbage\x81", "not text, PDF or HTML"),
        ("fig.pdf", b"\x89PNG\r\n\x1a\n" + bytes(32), "is an image, not a paper"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(data)
    assert reason in error_for(str(tmp_path / name))


def test_zip_is_refused_with_what_to_give_instead(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        zf.writestr("main.tex", r"\documentclass{article}")
    message = error_for(str(tmp_path / "src.zip"))
    assert "it is a zip archive (give the PDF, the main .tex or a .tar.gz" in message


def test_missing_path_and_directory_are_refused(tmp_path: Path) -> None:
    assert error_for(str(tmp_path / "nope.pdf")).endswith(": no such file or directory")
    assert error_for(str(tmp_path)).endswith(": is a directory")
    assert error_for((tmp_path / "gone.md").as_uri()).endswith(": no such file or directory")


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


# --------------------------------------------------------------------------- LaTeX archives


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def test_local_tarball_and_a_gzipped_single_tex(tmp_path: Path) -> None:
    paper = load_paper(_write(tmp_path, "src.tar.gz", SOURCE_TARBALL))
    assert [s.heading for s in paper.sections][2:] == ["1 Introduction", "2 Hyperparameters"]
    single = load_paper(
        _write(
            tmp_path,
            "main.tex.gz",
            gzip.compress(INTRO_TEX.replace(b"\\section", b"\\documentclass{article}\\section", 1)),
        )
    )
    assert (single.kind, [s.heading for s in single.sections]) == ("tex", ["1 Introduction"])


@pytest.mark.parametrize(
    ("members", "links", "reason"),
    [
        ({"../evil.tex": b"x", "main.tex": MAIN_TEX}, {}, "member '../evil.tex' points outside"),
        ({"a/../../evil.tex": b"x"}, {}, "points outside the archive"),
        ({"/etc/evil.tex": b"x"}, {}, "member '/etc/evil.tex' has an absolute path"),
        ({"main.tex": MAIN_TEX}, {"sections/intro.tex": "../../etc/passwd"}, "points outside"),
        ({"main.tex": MAIN_TEX}, {"abs.tex": "/etc/passwd"}, "has an absolute path"),
        ({"notes.txt": b"no tex here"}, {}, "no main LaTeX file (none has \\documentclass)"),
    ],
)
def test_unsafe_or_useless_tarballs_are_refused(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str], reason: str
) -> None:
    path = _write(tmp_path, "src.tar.gz", tarball(members, links=links))
    assert reason in error_for(path)
    assert list(tmp_path.iterdir()) == [tmp_path / "src.tar.gz"]  # nothing unpacked to disk
    assert not (tmp_path.parent / "evil.tex").exists()


def test_a_decompression_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:  # 64 MB of zeros: ~64 KB packed
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 * 1024 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    path = _write(tmp_path, "bomb.tar.gz", buf.getvalue())
    assert len(buf.getvalue()) < 1024 * 1024
    limits = ArchiveLimits(max_unpacked_bytes=8 * 1024 * 1024)
    message = error_for(path, limits=limits)
    assert "it unpacks to more than 8 MB (a decompression bomb?)" in message
    single = _write(tmp_path, "bomb.gz", gzip.compress(bytes(16 * 1024 * 1024)))
    assert "unpacks to more than 8 MB" in error_for(single, limits=limits)


def test_too_many_members_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "many.tar.gz", tarball({f"f{i}.txt": b"" for i in range(50)}))
    message = error_for(path, limits=ArchiveLimits(max_members=20))
    assert "the archive has more than 20 members" in message


def test_truncated_tarball_is_damaged(tmp_path: Path) -> None:
    path = _write(tmp_path, "cut.tar.gz", SOURCE_TARBALL[: len(SOURCE_TARBALL) // 2])
    assert "the archive is damaged or truncated" in error_for(path)


# --------------------------------------------------------------------------- two columns

S = "\u00ad"  # soft hyphen: where column() breaks a word, as TeX would
TWO_COLUMN_PAGES = [
    ColumnPage(  # page 1
        top=[
            "# DeepSeek-V2-Mini: An Economical Mixture-of-Experts Model",
            "Ada Lovelace, Alan Turing and Grace Hopper",
            "",
            "## Abstract",
            "We present DeepSeek-V2-Mini, a Mixture-of-Experts (MoE) language model that adopts "
            "Multi-head",
            "Latent Attention (MLA) and DeepSeekMoE. Compared with its dense predecessor, it "
            "reduces the KV",
            "cache by 93.3% and boosts the maximum generation throughput to 5.76 times.",
        ],
        left=column(
            "## 1 Introduction",
            "Serving a large language model is bounded by the key-value cache, which grows with "
            "every "
            "token of context. We adopt Multi-head Latent Attention to shrink that cache, and the "
            "DeepSeekMoE architecture to train strong models at economical costs.",
            "Training DeepSeek-V2-Mini saves 42.5% of training costs compared with a dense model "
            "of "
            "the same quality, and the rest of this report explains where the",
        ),
        right=column(
            "savings come from. Section 2 describes the architecture, Section 3 the pre-training "
            "setup and its hyperparameters, and Section 4 the alignment stage.",
        ),
    ),
    ColumnPage(  # page 2
        left=column(
            "## 2 Architecture",
            "## 2.1 Multi-Head Latent Attention:",
            "## Boosting Inference Efficiency",
            "Standard multi-head attention caches the keys and values of every head. The core of "
            "MLA "
            f"is simply the low-rank key-value joint compres{S}sion of keys and values into one "
            f"latent "
            "vector, so that only this latent vector is cached during inference.",
            "Because RoPE is incompatible with low-rank compression, MLA uses a decoupled RoPE "
            "strategy with additional multi-head queries and a shared key.",
        ),
        right=column(
            "MLA requires only a small amount of KV cache, equal to GQA with only 2.25 groups, but "
            "achieves stronger performance than MHA.",
            "## 2.2 DeepSeekMoE: Training Strong",
            "## Models at Economical Costs",
            "DeepSeekMoE has two key ideas: the fine-grained expert segmentation for higher expert "
            "specialization, and shared experts isolation to mitigate knowledge redundancy among "
            "routed experts.",
        ),
    ),
    ColumnPage(  # page 3
        left=column(
            "## 3 Pre-Training",
            "## 3.1 Hyperparameters",
            "We set the number of Transformer layers to 60 and the hidden dimension to 5120. In "
            "MLA, "
            "we set the number of attention heads 𝑛ℎ to 128 and the per-head dimension 𝑑ℎ to 128. "
            "The KV compression dimension 𝑑𝑐 is",
        ),
        right=column(
            "set to 512, and the query compression dimension 𝑑′𝑐 is set to 1536. Each MoE layer "
            "has "
            "2 shared experts and 160 routed experts, of which 6 are activated for each token. For "
            "the decoupled queries and key, we set the per-head",
        ),
    ),
    ColumnPage(  # page 4
        left=column(
            "dimension 𝑑𝑅 ℎ to 64. All learnable parameters are randomly initialized with a "
            "standard deviation of 0.006.",
            "## 4 Alignment",
            "## 4.1 Reinforcement Learning",
            "To save the training costs of reinforcement learning, we adopt Group Relative Policy "
            "Optimization (GRPO), which foregoes the critic model and estimates the baseline from "
            "group scores instead.",
            "Compared with PPO, GRPO reduces the memory of the RL stage by 38.5%.",
        ),
        right=column("Table 1: KV cache per token, per layer."),
    ),
    ColumnPage(  # page 5
        left=column(
            "## 5 Related Work",
            "Multi-token prediction (Gloeckle et al., 2024) improves sample efficiency by 12%. FP8 "
            "training with fine-grained quantization reduces memory by 30% (Peng et al., 2023).",
            "## 6 Conclusion",
            "DeepSeek-V2-Mini is 3.1 times cheaper to serve than its dense predecessor.",
        ),
        right=column(
            "## References",
            "[1] F. Gloeckle et al. Better & faster large language models via multi-token "
            "prediction. 2024.",
            "[2] DeepSeek-AI. DeepSeekMoE: Towards ultimate expert specialization in "
            "mixture-of-experts language models. 2024.",
            "[3] Z. Shao et al. DeepSeekMath: Group Relative Policy Optimization improves "
            "mathematical reasoning by 50%. 2024.",
        ),
    ),
    ColumnPage(  # page 6: an appendix after the references still counts
        left=column(
            "## A DeepSeek-V2-Mini-Lite",
            "The lite model reduces the KV cache by 90% as well, with 15.7B total parameters.",
        ),
    ),
]
TABLE_ROWS = {
    3: [
        (0.86, ["Attention", "Cache", "Quality"]),
        (0.845, ["MHA", "32768", "Strong"]),
        (0.83, ["MLA", "576", "Stronger"]),
    ]
}


MLA_STATED = {
    "n_heads": (128, 3),
    "d_head": (128, 3),
    "d_c": (512, 3),  # the sentence crosses the gutter
    "d_rope": (64, 3),  # ... and this one the page break: its page is where it starts
    "n_layers": (60, 3),
    "d_model": (5120, 3),
}
MOE_STATED = {"n_shared": (2, 3), "n_routed": (160, 3), "n_activated": (6, 3)}


@pytest.fixture(scope="module")
def two_column(tmp_path_factory: pytest.TempPathFactory) -> Paper:
    path = tmp_path_factory.mktemp("two") / "mini.pdf"
    head = "DeepSeek-V2-Mini technical report"
    make_two_column_pdf(path, TWO_COLUMN_PAGES, running_head=head, tables=TABLE_ROWS)
    return load_paper(str(path))


def test_two_columns_read_column_by_column(two_column: Paper) -> None:
    page1 = two_column.pages[0].splitlines()
    # Left column, then the right one: the sentence across the gutter stays in order.
    assert page1.index("explains where the") + 1 == page1.index(
        "savings come from. Section 2 describes the"
    )
    assert "1 Introduction" in page1  # a heading alone, not spliced with the right column
    assert two_column.pages[1].count("compres-\nsion of keys") == 1
    assert not any("technical report" in p or p.rstrip().endswith("\n2") for p in two_column.pages)
    assert two_column.pages[3].startswith("dimension dR h to 64.")  # running head, number: gone


def test_two_column_structure(two_column: Paper) -> None:
    p = two_column
    assert p.title == "DeepSeek-V2-Mini: An Economical Mixture-of-Experts Model"
    assert p.authors == ["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert p.abstract.startswith("We present DeepSeek-V2-Mini, a Mixture-of-Experts (MoE)")
    assert p.abstract.endswith("to 5.76 times.")
    assert [(s.page, s.level, s.heading) for s in p.sections] == [
        (1, 1, ""),
        (1, 1, "Abstract"),
        (1, 1, "1 Introduction"),
        (2, 1, "2 Architecture"),
        (2, 2, "2.1 Multi-Head Latent Attention: Boosting Inference Efficiency"),
        (2, 2, "2.2 DeepSeekMoE: Training Strong Models at Economical Costs"),
        (3, 1, "3 Pre-Training"),
        (3, 2, "3.1 Hyperparameters"),
        (4, 1, "4 Alignment"),
        (4, 2, "4.1 Reinforcement Learning"),
        (5, 1, "5 Related Work"),
        (5, 1, "6 Conclusion"),
        (5, 1, "References"),
        (6, 1, "A DeepSeek-V2-Mini-Lite"),
    ]
    hyper = next(s for s in p.sections if s.heading == "3.1 Hyperparameters")
    assert hyper.text.count("\f") == 1  # it runs on to page 4
    assert [r[:22] for r in p.references] == [
        "[1] F. Gloeckle et al.",
        "[2] DeepSeek-AI. DeepS",
        "[3] Z. Shao et al. Dee",
    ]
    (table,) = p.tables
    assert (table.heading, table.page) == ("Table 1: KV cache per token, per layer.", 4)
    assert table.text == "Attention | Cache | Quality\nMHA | 32768 | Strong\nMLA | 576 | Stronger"


def test_digest_of_a_two_column_paper(two_column: Paper) -> None:
    found = digest(two_column)
    # MTP and FP8 appear only in related work and references: not this paper's mechanisms.
    assert {m.name for m in found.mechanisms} == {"mla", "deepseek_moe", "grpo"}
    assert [m.score for m in found.mechanisms] == sorted(
        (m.score for m in found.mechanisms), reverse=True
    )
    grpo = next(m for m in found.mechanisms if m.name == "grpo")
    assert grpo.quotes[0].page == 4
    stated = {h.name: (h.value, h.quote.page) for h in found.hyperparameters}
    assert {k: stated.get(k) for k in MLA_STATED} == MLA_STATED
    moe_specs = {spec.name for spec in CATALOG["deepseek_moe"].hyperparameters}
    assert {k: stated.get(k) for k in moe_specs & MOE_STATED.keys()} == {
        k: MOE_STATED[k] for k in moe_specs & MOE_STATED.keys()
    }
    assert len({h.name for h in found.hyperparameters}) == len(found.hyperparameters)
    rope = next(h for h in found.hyperparameters if h.name == "d_rope").quote.text
    assert rope == "For the decoupled queries and key, we set the per-head dimension d_h^R to 64."
    assert [(c.page, c.numbers) for c in found.claims] == [
        (1, ["93.3%", "5.76"]),
        (1, ["42.5%"]),
        (2, ["2.25"]),
        (4, ["38.5%"]),
        (5, ["3.1"]),
        (6, ["90%", "15.7"]),  # an appendix after the references is the paper again
    ]
    assert found.claims[1].text.endswith("explains where the savings come from.")
    assert not any("Boosting" in c.text for c in found.claims)  # a heading is no claim


def test_cli_read_prints_tables_with_pages_and_json(
    two_column: Paper, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reprodesk.cli import main

    path = tmp_path / "mini.pdf"
    make_two_column_pdf(path, TWO_COLUMN_PAGES, running_head="x", tables=TABLE_ROWS)
    with pytest.raises(SystemExit) as done:
        main(["read", str(path), "--json"])
    assert done.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in result["mechanisms"]} == {"mla", "deepseek_moe", "grpo"}
    assert result["paper"]["page_unit"] == "page"
    assert result["paper"]["sections"][2] == {"heading": "1 Introduction", "page": 1}
    with pytest.raises(SystemExit):
        main(["read", str(path)])
    shown = capsys.readouterr().out
    assert "Ada Lovelace, Alan Turing, Grace Hopper · pdf, 6 pages" in shown
    assert "p.4: To save the training costs" in shown
