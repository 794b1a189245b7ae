"""Our paper readers against well-kept libraries, as JSON: speed and what the Reader gets.

PDF (the tests' two-column paper, bench/ingest.py's 50-page paper, and
../shared/papers/deepseek-v3.pdf when it is there):

- `reprodesk`: what `load_paper` does now: PDFium text runs + our column layout;
- `pypdf+layout`: the previous reader, pypdf's `visitor_text` runs + the same layout;
- `pypdfium2-text`: PDFium's own plain text per page (`get_text_range`), no layout;
- `pdfplumber-text`: pdfplumber's `extract_text` per page (pdfminer.six underneath).

TeX (the tests' LaTeX papers): our `parse_tex` against pylatexenc's `LatexNodes2Text`.
HTML (the tests' article and an arXiv-like page with navigation and a footer, made
here): our `HTMLParser` reader against trafilatura's `extract` and selectolax's text.

For each: pages (or documents) per second, best of `--repeats`, and what the digest
finds (mechanisms, hyperparameters, claims), the title, and reading-order checks:
the sentence that crosses the gutter of the two-column paper, and the first sentence
of the DeepSeek-V3 abstract, each read whole. A library that is not installed is
reported as such. Usage: python bench/paper_libs.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import paper_pages  # noqa: E402
from reprodesk.schemas import Paper  # noqa: E402
from tests.integration import test_ingest_arxiv as arxiv_case  # noqa: E402
from tests.integration import test_paper_loading as loading_case  # noqa: E402
from tests.pdfgen import make_two_column_pdf  # noqa: E402
from tests.unit import test_latex as latex_case  # noqa: E402
from tools.digest import digest  # noqa: E402
from tools.papers import layout, load_paper  # noqa: E402
from tools.papers.load import parse_paper  # noqa: E402
from tools.papers.tex import tex_paper  # noqa: E402

DEEPSEEK = ROOT.parent / "shared" / "papers" / "deepseek-v3.pdf"
GUTTER = "the rest of this report explains where the savings come from."
V3_FIRST = (
    "We present DeepSeek-V3, a strong Mixture-of-Experts (MoE) language model with 671B total "
    "parameters with 37B activated for each token."
)
BOLD = re.compile(r"bold|black|heavy|semibold|demi|medi(?:um)?\b|-bd\b|cmbx|cmb\d|sfbx", re.I)


def flat(text: str) -> str:
    """Whitespace folded and line-end hyphens rejoined, to look for a sentence."""
    return " ".join(re.sub(r"-\s*\n\s*", "", text).split())


def paper_of(pages: list[str], source: str, kind: str = "pdf") -> Paper:
    """A plain-text reader's pages as a Paper, the way ours would finish it (NFKC)."""
    return parse_paper("\f".join(pages).encode(), source + ".txt", source).model_copy(
        update={"kind": kind, "source": source}
    )


# --------------------------------------------------------------------------- PDF readers


def ours(path: Path) -> Paper:
    return load_paper(str(path))


def pypdf_layout(path: Path) -> Paper:
    from pypdf import PdfReader

    def runs(page: Any) -> tuple[list[layout.Run], tuple[float, float, float, float]]:
        found: list[layout.Run] = []

        def visit(text: str, cm: list[float], tm: list[float], font: Any, size: float) -> None:
            if not text or text.isspace():
                return
            a, b = tm[0] * cm[0] + tm[1] * cm[2], tm[0] * cm[1] + tm[1] * cm[3]
            c, d = tm[2] * cm[0] + tm[3] * cm[2], tm[2] * cm[1] + tm[3] * cm[3]
            if a <= 0 or d <= 0 or abs(b) > 0.05 * a or abs(c) > 0.05 * d:
                return
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            name = str(font.get("/BaseFont", "")) if isinstance(font, dict) else ""
            height = float(size) * (c * c + d * d) ** 0.5 or 10.0
            for i, part in enumerate(p for p in text.split("\n") if p.strip()):
                found.append(
                    layout.Run(x, y - 1.2 * height * i, height, bool(BOLD.search(name)), part)
                )

        page.extract_text(visitor_text=visit)
        box = page.mediabox
        return found, (float(box.left), float(box.bottom), float(box.width), float(box.height))

    data = path.read_bytes()
    raw = [runs(page) for page in PdfReader(io.BytesIO(data)).pages]
    kept = layout.drop_margins(raw)
    text = layout.structure([layout.layout(r, box) for r, (_, box) in zip(kept, raw, strict=True)])
    return Paper(
        source=str(path),
        kind="pdf",
        title=text.title,
        pages=text.pages,
        sha256=hashlib.sha256(data).hexdigest(),
        sections=text.sections,
        abstract=text.abstract,
    )


def pdfium_text(path: Path) -> Paper:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(path.read_bytes())
    pages = [doc[i].get_textpage().get_text_range() for i in range(len(doc))]
    return paper_of([p.replace("\r\n", "\n").replace("\ufffe", "-") for p in pages], str(path))


def pdfplumber_text(path: Path) -> Paper:
    import pdfplumber

    with pdfplumber.open(path) as pdf:
        return paper_of([page.extract_text() or "" for page in pdf.pages], str(path))


PDF_READERS: dict[str, tuple[str | None, Callable[[Path], Paper]]] = {
    "reprodesk": (None, ours),
    "pypdf+layout": ("pypdf", pypdf_layout),
    "pypdfium2-text": ("pypdfium2", pdfium_text),
    "pdfplumber-text": ("pdfplumber", pdfplumber_text),
}


# --------------------------------------------------------------------------- TeX and HTML


def tex_ours(tex: str) -> Paper:
    return tex_paper(tex, "", "paper.tex", "0")


def tex_pylatexenc(tex: str) -> Paper:
    from pylatexenc.latex2text import LatexNodes2Text

    return paper_of([LatexNodes2Text().latex_to_text(tex)], "paper.tex", "tex")


def html_ours(html: str) -> Paper:
    return parse_paper(html.encode(), "page.html", "page.html")


def html_trafilatura(html: str) -> Paper:
    import trafilatura

    text = trafilatura.extract(html, output_format="markdown", include_tables=True) or ""
    meta = trafilatura.extract_metadata(html)
    paper = parse_paper(text.encode(), "page.md", "page.md")
    return paper.model_copy(update={"kind": "html", "title": (meta and meta.title) or ""})


def html_selectolax(html: str) -> Paper:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    for node in tree.css("script, style, noscript, template"):
        node.decompose()
    title = tree.css_first("title")
    body = tree.body.text(separator="\n") if tree.body else ""
    return paper_of([body], "page.html", "html").model_copy(
        update={"title": title.text() if title else ""}
    )


def arxiv_like_html() -> str:
    """The two-column test paper's text as an arXiv (LaTeXML) HTML page with chrome."""
    blocks: list[str] = []
    paragraph: list[str] = []  # lines run on across columns and pages, as the text does
    for page in loading_case.TWO_COLUMN_PAGES:
        for line in [*page.top, *page.left, *page.right]:
            if (not line or line.startswith("#")) and paragraph:
                blocks.append(f'<p class="ltx_p">{" ".join(paragraph)}</p>')
                paragraph = []
            if line.startswith("#"):
                level = 1 if line.startswith("# ") else 2
                text = line.lstrip("# ")
                blocks.append(f'<h{level} class="ltx_title">{text}</h{level}>')
            elif line:
                paragraph.append(line.replace("\u00ad", ""))
    if paragraph:
        blocks.append(f'<p class="ltx_p">{" ".join(paragraph)}</p>')
    chrome = "".join(f'<li><a href="/{w}">{w} and more news</a></li>' for w in "abcdefgh")
    return (
        "<!DOCTYPE html><html><head><title>[2405.00000] DeepSeek-V2-Mini</title>"
        '<meta name="citation_title" content="DeepSeek-V2-Mini: An Economical MoE Model">'
        f"</head><body><nav><ul>{chrome}</ul></nav><article class='ltx_document'>"
        f"{''.join(blocks)}</article><footer>Subscribe to our newsletter. "
        "Our site is 10% faster than before.</footer></body></html>"
    )


# --------------------------------------------------------------------------- measuring


def findings(paper: Paper) -> dict[str, Any]:
    found = digest(paper)
    return {
        "title": paper.title[:80],
        "mechanisms": sorted(m.name for m in found.mechanisms),
        "hyperparameters": {h.name: h.value for h in found.hyperparameters},
        "claims": len(found.claims),
        "sections": len(paper.sections),
    }


def timed(run: Callable[[], Paper], repeats: int) -> tuple[Paper, float]:
    best, paper = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        paper = run()
        best = min(best, time.perf_counter() - start)
    assert paper is not None
    return paper, best


def pdf_checks(name: str, paper: Paper, row: dict[str, Any]) -> None:
    text = flat("\n".join(paper.pages))
    if name == "two_column":
        row["gutter_sentence_whole"] = GUTTER in text
        stated = loading_case.MLA_STATED | loading_case.MOE_STATED
        row["stated_hyperparameters_right"] = sum(
            row["hyperparameters"].get(k) == v for k, (v, _) in stated.items()
        )
        row["stated_hyperparameters_of"] = len(stated)
    if name == "deepseek_v3":
        row["abstract_first_sentence_whole"] = V3_FIRST in text
    if name == "bench_50":
        del row["hyperparameters"]


def html_checks(name: str, paper: Paper, row: dict[str, Any]) -> None:
    row["boilerplate_kept"] = "newsletter" in "\n".join(paper.pages)


def measure(
    docs: dict[str, Any],
    readers: dict[str, tuple[str | None, Callable[[Any], Paper]]],
    repeats: int,
    checks: Callable[[str, Paper, dict[str, Any]], None] | None = None,
    per_page: bool = False,
) -> dict[str, Any]:
    """Every reader on every document: speed (pages or documents per second) and findings."""
    results: dict[str, Any] = {}
    for reader, (module, read) in readers.items():
        if module and importlib.util.find_spec(module) is None:
            results[reader] = "not installed"
            continue
        results[reader] = {}
        for name, doc in docs.items():
            paper, seconds = timed(lambda: read(doc), repeats)  # noqa: B023
            speed = {"pages_per_s": round(len(paper.pages) / seconds, 1)} if per_page else {}
            row = speed or {"docs_per_s": round(1 / seconds, 1)}
            row |= findings(paper)
            if checks:
                checks(name, paper, row)
            results[reader][name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reprodesk-libs-") as tmp:
        pdfs = {
            "two_column": make_two_column_pdf(
                Path(tmp) / "two.pdf",
                loading_case.TWO_COLUMN_PAGES,
                running_head="DeepSeek-V2-Mini technical report",
                tables=loading_case.TABLE_ROWS,
            ),
            "bench_50": make_two_column_pdf(Path(tmp) / "fifty.pdf", paper_pages(50)),
        }
        if DEEPSEEK.is_file():
            pdfs["deepseek_v3"] = DEEPSEEK
        pdf = measure(pdfs, PDF_READERS, args.repeats, pdf_checks, per_page=True)
    arch = arxiv_case.ARCH_TEX.decode()
    tex_docs = {
        "arxiv_test": arxiv_case.MAIN_TEX.decode().replace("\\input{arch}", arch),
        "latex_unit_test": latex_case.DOC,
    }
    tex = measure(
        tex_docs,
        {"reprodesk": (None, tex_ours), "pylatexenc": ("pylatexenc", tex_pylatexenc)},
        args.repeats,
    )
    html_docs = {
        "article_test": loading_case.ARTICLE_HTML.decode(),
        "arxiv_like": arxiv_like_html(),
    }
    html = measure(
        html_docs,
        {
            "reprodesk": (None, html_ours),
            "trafilatura": ("trafilatura", html_trafilatura),
            "selectolax": ("selectolax", html_selectolax),
        },
        args.repeats,
        html_checks,
    )
    print(json.dumps({"pdf": pdf, "tex": tex, "html": html}, indent=1))


if __name__ == "__main__":
    main()
