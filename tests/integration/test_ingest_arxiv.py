"""arXiv ingestion against an imitation of arXiv on 127.0.0.1: API, e-print and PDF.

The imitation answers the way arXiv does: the API with Atom XML (an entry, no entry
for an unknown id, or a 5xx while it is down), /e-print/ID with a gzipped tarball
(or a 404 for PDF-only papers, or a hostile tarball), /pdf/ID with a PDF or, as
arXiv sometimes does, an HTML page served as 200. The client's base URLs point
there; the suite's loopback-only guard fails any attempt to reach arxiv.org itself.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from reprodesk.schemas import UserError
from tools.digest import digest
from tools.papers import load_paper
from tools.papers.arxiv import ArxivClient, arxiv_id
from tools.papers.fetch import Fetcher

try:
    from tests.pdfgen import make_pdf
except ImportError:  # pytest's default import mode puts tests/integration, not the root, on path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.pdfgen import make_pdf

MAIN_TEX = rb"""\documentclass{article}
\newcommand{\dsv}{DeepSeek-V2}
\title{\dsv: A Strong, Economical, and Efficient Mixture-of-Experts Language Model}
\author{DeepSeek-AI}
\begin{document}
\maketitle
\begin{abstract}
We present \dsv{}. It reduces the KV cache by 93.3\% and boosts the maximum generation
throughput to 5.76 times.
\end{abstract}
\section{Introduction}
We adopt Multi-head Latent Attention (MLA) and DeepSeekMoE~\citep{dai2024deepseekmoe}.
\section{Architecture}
\input{arch}
\section{Pre-Training}
We set the number of Transformer layers to 60 and the hidden dimension to 5120.
In MLA, we set the number of attention heads $n_h$ to 128 and the per-head dimension
$d_h$ to 128. The KV compression dimension $d_c$ is set to 512, and the query compression
dimension $d_c'$ is set to 1536. For the decoupled queries and key, we set the per-head
dimension $d_h^R$ to 64.
\section{Alignment}
We adopt Group Relative Policy Optimization (GRPO) to save training costs.
\begin{thebibliography}{1}
\bibitem{dai2024deepseekmoe} D.~Dai et al. \newblock DeepSeekMoE. \newblock 2024.
\end{thebibliography}
\end{document}
"""
ARCH_TEX = rb"""\subsection{Multi-Head Latent Attention}
The core of MLA is the low-rank key-value joint compression, with a decoupled RoPE.
\subsection{DeepSeekMoE}
DeepSeekMoE uses fine-grained expert segmentation and shared experts.
"""
ENTRY = """<entry><id>http://arxiv.org/abs/{id}</id><updated>2024-06-19T08:00:00Z</updated>
<published>2024-05-07T17:57:34Z</published>
<title>DeepSeek-V2: A Strong, Economical, and Efficient
  Mixture-of-Experts Language Model</title>
<summary>  We present DeepSeek-V2, a strong Mixture-of-Experts (MoE) language model.
</summary><author><name>DeepSeek-AI</name></author><author><name>Aixin Liu</name></author>
</entry>"""
FEED = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>ArXiv Query</title>{entry}</feed>"""
ERROR_PAGE = b"<!DOCTYPE html><html><body><h1>PDF unavailable for this paper</h1></body></html>"


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Arxiv:
    """The imitation's address, a client pointed at it, and what it was asked."""

    base: str
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def client(self) -> ArxivClient:
        return ArxivClient(
            api_url=f"{self.base}/api/query",
            eprint_url=f"{self.base}/e-print/",
            pdf_url=f"{self.base}/pdf/",
        )


@pytest.fixture(scope="module")
def pdf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("pdf") / "paper.pdf"
    pages = [["Multi-Token Prediction", "We adopt multi-token prediction (MTP)."], ["Depth 1."]]
    return make_pdf(path, pages).read_bytes()


@pytest.fixture
def arxiv(pdf_bytes: bytes) -> Iterator[Arxiv]:
    lock = threading.Lock()
    state = Arxiv(base="")
    source = _tarball({"ms.tex": MAIN_TEX, "arch.tex": ARCH_TEX, "fig1.pdf": pdf_bytes})
    hostile = _tarball({"ms.tex": MAIN_TEX, "../../escape.tex": b"x"})

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
            with lock:
                state.hits[self.path] += 1
            paper = parts.path.rsplit("/", 1)[-1]
            if parts.path == "/api/query":
                wanted = parse_qs(parts.query)["id_list"][0]
                if wanted.startswith("2401.00005"):
                    self.send_error(503)
                    return
                known = wanted.split("v")[0] != "2401.99999"
                entry = ENTRY.format(id=wanted if "v" in wanted else wanted + "v5") if known else ""
                self.send(FEED.format(entry=entry).encode(), "application/atom+xml")
            elif parts.path.startswith("/e-print/") and paper.startswith("2405.04434"):
                self.send(source, "application/x-eprint-tar")
            elif parts.path == "/e-print/2401.00003":
                self.send(hostile, "application/x-eprint-tar")
            elif parts.path == "/e-print/2401.00005":
                self.send(
                    gzip.compress(MAIN_TEX.replace(b"\\input{arch}", b"")), "application/x-eprint"
                )
            elif parts.path.startswith("/e-print/"):
                self.send_error(404)  # a PDF-only submission has no source
            elif parts.path == "/pdf/2401.00002":
                self.send(ERROR_PAGE, "text/html")  # arXiv's HTML page, status 200
            elif parts.path.startswith("/pdf/"):
                self.send(pdf_bytes, "application/pdf")
            else:
                self.send_error(404)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


FAST = Fetcher(connect_timeout=2.0, read_timeout=2.0, backoff_s=0.01, attempts=2)


def load(arxiv: Arxiv, source: str, **kwargs: Any) -> Any:
    return load_paper(source, fetcher=FAST, arxiv=arxiv.client, **kwargs)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("2405.04434", "2405.04434"),
        ("2405.04434v2", "2405.04434v2"),
        ("arxiv:2405.04434", "2405.04434"),
        ("arXiv: 2405.04434v2", "2405.04434v2"),
        ("https://arxiv.org/abs/2405.04434", "2405.04434"),
        ("https://arxiv.org/abs/2405.04434v2?context=cs", "2405.04434v2"),
        ("http://export.arxiv.org/abs/2405.04434", "2405.04434"),
        ("https://arxiv.org/pdf/2405.04434v2.pdf", "2405.04434v2"),
        ("https://www.arxiv.org/pdf/2405.04434", "2405.04434"),
        ("https://arxiv.org/html/2405.04434v2/", "2405.04434v2"),
        ("hep-th/9901001", "hep-th/9901001"),
        ("https://arxiv.org/abs/math.GT/0309136v1", "math.GT/0309136v1"),
        ("2405.04434.pdf", None),
        ("https://example.org/abs/2405.04434", None),
        ("https://arxiv.org/list/cs.CL/recent", None),
        ("paper.pdf", None),
    ],
)
def test_arxiv_spellings_normalise_to_the_id(source: str, expected: str | None) -> None:
    assert arxiv_id(source) == expected


def test_latex_source_is_preferred_and_metadata_comes_from_the_api(
    arxiv: Arxiv, tmp_path: Path
) -> None:
    paper = load(arxiv, "https://arxiv.org/abs/2405.04434", cache_dir=tmp_path)
    assert (paper.source, paper.kind, paper.page_unit) == ("arxiv:2405.04434", "tex", "section")
    assert paper.arxiv_id == "2405.04434v5"  # the version the API resolved
    title = "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model"
    assert (paper.title, paper.date) == (title, "2024-05-07")
    assert paper.authors == ["DeepSeek-AI", "Aixin Liu"]
    assert (
        paper.abstract
        == "We present DeepSeek-V2, a strong Mixture-of-Experts (MoE) language model."
    )
    assert [s.heading for s in paper.sections] == [
        "",
        "Abstract",
        "1 Introduction",
        "2 Architecture",
        "2.1 Multi-Head Latent Attention",
        "2.2 DeepSeekMoE",
        "3 Pre-Training",
        "4 Alignment",
    ]
    assert paper.references == ["D. Dai et al. DeepSeekMoE. 2024."]
    assert set(arxiv.hits) == {
        "/api/query?id_list=2405.04434&max_results=1",
        "/e-print/2405.04434",
    }  # no PDF needed
    found = digest(paper)
    assert {m.name for m in found.mechanisms} == {"mla", "deepseek_moe", "grpo"}
    section = {h.name: (h.value, h.quote.page) for h in found.hyperparameters}
    assert {
        k: section.get(k) for k in ("n_heads", "d_head", "d_c", "d_rope", "n_layers", "d_model")
    } == {  # page = section index: 7 is "3 Pre-Training"
        "n_heads": (128, 7),
        "d_head": (128, 7),
        "d_c": (512, 7),
        "d_rope": (64, 7),
        "n_layers": (60, 7),
        "d_model": (5120, 7),
    }
    assert [(c.page, c.numbers) for c in found.claims] == [(2, ["93.3%", "5.76"])]


def test_a_version_is_kept_and_the_cache_serves_the_next_load(arxiv: Arxiv, tmp_path: Path) -> None:
    first = load(arxiv, "arxiv:2405.04434v2", cache_dir=tmp_path)
    assert (first.source, first.arxiv_id) == ("arxiv:2405.04434v2", "2405.04434v2")
    assert arxiv.hits["/e-print/2405.04434v2"] == 1
    started = time.perf_counter()
    again = load(arxiv, "https://arxiv.org/pdf/2405.04434v2.pdf", cache_dir=tmp_path)
    assert time.perf_counter() - started < 0.5
    assert again == first  # another spelling of the same id: the same cache entry
    assert sum(arxiv.hits.values()) == 2
    assert load(arxiv, "2405.04434v2", cache_dir=tmp_path, refresh=True) == first
    assert arxiv.hits["/e-print/2405.04434v2"] == 2


def test_no_latex_source_falls_back_to_the_pdf(arxiv: Arxiv) -> None:
    paper = load(arxiv, "2401.00001")
    assert (paper.kind, paper.page_unit, paper.title) == ("pdf", "page", ENTRY_TITLE)
    assert paper.pages[0].startswith("Multi-Token Prediction")
    assert len(paper.notes) == 1
    assert paper.notes[0].startswith("LaTeX source not used: cannot fetch")
    assert "HTTP 404" in paper.notes[0]
    assert [m.name for m in digest(paper).mechanisms] == ["mtp"]


ENTRY_TITLE = "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model"


def test_an_html_page_where_the_pdf_should_be_is_an_error(arxiv: Arxiv, tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load(arxiv, "https://arxiv.org/pdf/2401.00002", cache_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("cannot load 'https://arxiv.org/pdf/2401.00002': neither the LaTeX")
    assert "HTTP 404" in message
    assert "a PDF was expected but the answer is an HTML page" in message
    assert "\n" not in message
    assert list(tmp_path.rglob("*")) == []


def test_a_hostile_source_tarball_is_not_used(arxiv: Arxiv, tmp_path: Path) -> None:
    paper = load(arxiv, "2401.00003", cache_dir=tmp_path)
    assert paper.kind == "pdf"
    assert "member '../../escape.tex' points outside the archive" in paper.notes[0]
    assert not (tmp_path.parent / "escape.tex").exists()
    assert {p.parent.name for p in tmp_path.rglob("*") if p.is_file()} == {"papers", "parsed"}


def test_an_unknown_id_is_a_clear_error(arxiv: Arxiv) -> None:
    with pytest.raises(UserError) as info:
        load(arxiv, "2401.99999")
    assert str(info.value) == "cannot load '2401.99999': arXiv has no paper '2401.99999'"
    assert not any(path.startswith(("/e-print", "/pdf")) for path in arxiv.hits)


def test_the_api_down_still_loads_the_paper(arxiv: Arxiv) -> None:
    paper = load(arxiv, "2401.00005")  # a gzipped single .tex, as arXiv serves them
    assert (paper.kind, paper.arxiv_id, paper.date) == ("tex", "2401.00005", "")
    assert paper.title.startswith("DeepSeek-V2: A Strong")  # from \title
    assert paper.authors == ["DeepSeek-AI"]
    assert paper.notes[0].startswith("no arXiv metadata: cannot fetch")
    assert "HTTP 503" in paper.notes[0]
    assert arxiv.hits["/api/query?id_list=2401.00005&max_results=1"] == 2  # retried


def test_the_real_arxiv_is_the_default() -> None:
    client = ArxivClient()
    assert client.api("2405.04434") == (
        "http://export.arxiv.org/api/query?id_list=2405.04434&max_results=1"
    )
    assert client.eprint("2405.04434v2") == "https://arxiv.org/e-print/2405.04434v2"
    assert client.pdf("hep-th/9901001") == "https://arxiv.org/pdf/hep-th/9901001"
