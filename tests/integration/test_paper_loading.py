"""The paper loader against a real HTTP server on 127.0.0.1 and real files on disk.

The server is the stdlib ThreadingHTTPServer with scripted misbehaviour (flaky 5xx,
429, redirect chains and loops, lying Content-Type and Content-Length, stalls).
PDFs are real ones made by matplotlib (tests/pdfgen.py), encrypted with pypdf's
writer. Fetchers get tiny timeouts and backoff so the whole file runs in seconds.
Every failure must be one UserError line that names the input and the reason.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import socket
import sys
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

from reprodesk.schemas import UserError
from tools.paper import USER_AGENT, Fetcher, load_paper

try:
    from tests.pdfgen import make_image_pdf, make_pdf
except ImportError:  # pytest's default import mode puts tests/integration, not the root, on path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.pdfgen import make_image_pdf, make_pdf

PDF_PAGES = [
    ["DeepSeek-V2: A Strong, Economical, and Efficient MoE Model", "Abstract: we present MLA."],
    ["Multi-head Latent Attention compresses the KV cache.", "We set 𝑑𝑐 = 512 and 𝑑𝑅 ℎ = 64."],
    ["DeepSeekMoE uses fine-grained experts.", "Each token is routed to 6 experts."],
]
NOTE_MD = b"# MLA in one page\n\nLow-rank joint compression of keys and values.\n"


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
    assert (paper.kind, paper.title, paper.pages) == ("tex", "Multi-Token Prediction", [tex])


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


def test_file_url_relative_path_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "my notes.md"
    path.write_bytes(NOTE_MD)
    assert load_paper(path.as_uri()).source == str(path)  # file:///...my%20notes.md
    monkeypatch.chdir(tmp_path)
    assert load_paper("my notes.md").source == str(path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_paper("~/my notes.md").source == str(path)


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
        ("paper.pdf.gz", gzip.compress(b"%PDF-1.7"), "is an archive; tarball support comes later"),
        ("blob.bin", b"\xff\xfe\x00garbage\x81", "not text, PDF or HTML"),
        ("fig.pdf", b"\x89PNG\r\n\x1a\n" + bytes(32), "is an image, not a paper"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(data)
    assert reason in error_for(str(tmp_path / name))


def test_zip_is_an_archive(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        zf.writestr("main.tex", r"\documentclass{article}")
    assert "is an archive" in error_for(str(tmp_path / "src.zip"))


def test_missing_path_and_directory_are_refused(tmp_path: Path) -> None:
    assert error_for(str(tmp_path / "nope.pdf")).endswith(": no such file or directory")
    assert error_for(str(tmp_path)).endswith(": is a directory")
    assert error_for((tmp_path / "gone.md").as_uri()).endswith(": no such file or directory")
