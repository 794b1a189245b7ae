"""Load a paper from an arXiv id, a URL or a file into a `Paper`: fetch, sniff, parse.

Sources: arXiv ids and arxiv.org URLs (metadata from the arXiv API; the LaTeX source
preferred over the PDF, for exact equations and values), any PDF or HTML URL, and
local `.pdf .md .tex .txt .tar.gz` files or `file://` URLs. Sources may be flaky,
redirect, lie about their type or never end; every failure is one `UserError` naming
the input and the reason (the CLI prints it as one line). The format is sniffed from
the bytes, never the name or Content-Type; a name only adds a promise that is checked
(an HTML page where `.pdf` was promised is an error page, not a paper). Text is
NFKC-normalised so that math-italic letters (𝑑𝑐) and ligatures (ﬁ) in PDFs match
plain ASCII names later on. Archives are unpacked in memory, never on disk.

This module only routes: the bytes come from `fetch`, the cache is `cache`, and each
format has its own module (`pdf`, `html`, `tex`, `text`; `archive` for tarballs).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from reprodesk.schemas import Paper, Section, UserError
from tools.papers.archive import ArchiveLimits, is_tar, unpack
from tools.papers.arxiv import ArxivClient, NotOnArxiv, arxiv_id
from tools.papers.cache import cached
from tools.papers.fetch import Fetcher, read_file
from tools.papers.html import html_paper
from tools.papers.pdf import pdf_paper
from tools.papers.tex import source_text, tex_paper
from tools.papers.text import text_paper

Kind = Literal["pdf", "markdown", "text", "tex", "html"]
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
_MD_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)


def load_paper(
    source: str,
    *,
    cache_dir: Path | None = None,
    refresh: bool = False,
    fetcher: Fetcher | None = None,
    arxiv: ArxivClient | None = None,
    limits: ArchiveLimits | None = None,
) -> Paper:
    """Load a paper from an arXiv id or URL, an `http(s)://` or `file://` URL, or a path.

    `refresh` fetches again even when the cache has the source. `fetcher`, `arxiv`
    and `limits` are there for tests and for settings: timeouts and size caps, the
    arXiv base URLs, and what an archive may unpack to. A local file larger than
    `fetcher.max_bytes` is refused before it is read.
    """
    given = source.strip()
    fetcher = fetcher or Fetcher()
    cache = Path(cache_dir).expanduser() if cache_dir else None
    if found := arxiv_id(given):
        client = arxiv or ArxivClient()
        return cached(
            cache,
            f"arxiv:{found}",
            refresh,
            lambda: _load_arxiv(given, found, client, fetcher, limits),
            reparse=None,  # the metadata is not in the bytes: a stale entry is fetched anew
        )
    scheme = m.group(1).lower() if (m := re.match(r"([a-zA-Z][\w+.-]*)://", given)) else ""
    if scheme in ("http", "https"):

        def fetch() -> tuple[Paper, bytes]:
            data = fetcher.fetch(given)
            return parse_paper(data, given, given, limits=limits), data

        return cached(
            cache,
            given,
            refresh,
            fetch,
            reparse=lambda data: parse_paper(data, given, given, limits=limits),
        )
    if scheme == "file":
        host, _, rest = given[len("file://") :].partition("/")
        if host not in ("", "localhost"):
            raise UserError(f"cannot read {given!r}: file:// URLs with a host are not supported")
        path = Path(url2pathname(unquote("/" + rest)))
    elif scheme:
        hint = "use an arXiv id, a local path, file://, http:// or https://"
        raise UserError(f"cannot load {given!r}: unsupported URL scheme {scheme!r} ({hint})")
    else:
        path = Path(given).expanduser()
    data = read_file(path, given, fetcher.max_bytes)
    return parse_paper(data, str(path.resolve()), given, limits=limits)


def _load_arxiv(
    given: str,
    found: str,
    client: ArxivClient,
    fetcher: Fetcher,
    limits: ArchiveLimits | None,
) -> tuple[Paper, bytes]:
    """Metadata from the API, text from the LaTeX source, else from the PDF."""
    source = f"arxiv:{found}"
    notes: list[str] = []
    meta = None
    try:
        meta = client.metadata(found, fetcher.fetch)
    except NotOnArxiv as exc:
        raise UserError(f"cannot load {given!r}: arXiv has no paper {found!r}") from exc
    except UserError as exc:  # the API down or odd: the paper itself still has a title
        notes.append(f"no arXiv metadata: {exc}")
    try:
        data = fetcher.fetch(client.eprint(found))
        paper = parse_paper(data, source, f"{source} (LaTeX source)", limits=limits)
    except UserError as first:
        notes.append(f"LaTeX source not used: {first}")
        try:
            data = fetcher.fetch(client.pdf(found))
            paper = parse_paper(data, source, f"{source} (PDF)", limits=limits, expect_pdf=True)
        except UserError as second:
            msg = (
                f"cannot load {given!r}: neither the LaTeX source ({first}) nor the PDF ({second})"
            )
            raise UserError(msg) from second
    update: dict[str, object] = {"notes": paper.notes + notes, "arxiv_id": found}
    if meta is not None:
        update |= {
            "arxiv_id": meta.arxiv_id,
            "title": meta.title or paper.title,
            "authors": meta.authors or paper.authors,
            "abstract": meta.abstract or paper.abstract,
            "date": meta.date,
        }
    return paper.model_copy(update=update), data


def parse_paper(
    data: bytes,
    source: str,
    label: str,
    *,
    limits: ArchiveLimits | None = None,
    expect_pdf: bool = False,
) -> Paper:
    """Turn raw bytes into a `Paper`; `label` is how error messages name the input.

    `expect_pdf` (or a name ending in .pdf) makes an HTML answer an error: it is a
    landing or error page, not the paper.
    """
    name = urlsplit(source).path if "://" in source else source
    digest = hashlib.sha256(data).hexdigest()
    content = data
    if data.startswith(_GZIP_MAGIC) or is_tar(data[:512]):
        unpacked = unpack(data, label, limits)
        if isinstance(unpacked, dict):
            tex, bbl = source_text(unpacked, label, limits)
            return _finish(tex_paper(tex, bbl, source, digest), label)
        if unpacked.startswith(_GZIP_MAGIC) or is_tar(unpacked[:512]):
            raise UserError(f"cannot read {label!r}: it is an archive inside an archive")
        content = unpacked  # one gzipped file: a .tex, a PDF, ...
    promised = expect_pdf or name.lower().endswith(".pdf")
    kind = sniff_kind(content, label, markdown_hint=name.lower().endswith((".md", ".markdown")))
    if promised and kind == "html":
        reason = "a PDF was expected but the answer is an HTML page (an error or landing page?)"
        raise UserError(f"cannot read {label!r}: {reason}")
    if kind == "pdf":
        paper = pdf_paper(content, source, label, digest)
    elif kind == "html":
        paper = html_paper(content.decode("utf-8-sig"), source, digest)
    elif kind == "tex":
        paper = tex_paper(_decode_text(content), "", source, digest)
    else:
        paper = text_paper(
            _decode_text(content), "markdown" if kind == "markdown" else "text", source, digest
        )
    return _finish(paper, label)


def _decode_text(data: bytes) -> str:
    return data.decode("utf-8-sig").replace("\r\n", "\n")


def _finish(paper: Paper, label: str) -> Paper:
    """NFKC everywhere, a title in any case, and a refusal for a paper with no text."""
    pages = [unicodedata.normalize("NFKC", p) for p in paper.pages]
    if not any(p.strip() for p in pages):
        raise UserError(f"cannot read {label!r}: it has no visible text")
    first_line = next(ln.strip() for p in pages for ln in p.splitlines() if ln.strip())
    title = " ".join(unicodedata.normalize("NFKC", paper.title).split()) or first_line[:200]

    def nfkc(section: Section) -> Section:
        return section.model_copy(
            update={
                "heading": unicodedata.normalize("NFKC", section.heading),
                "text": unicodedata.normalize("NFKC", section.text),
            }
        )

    return paper.model_copy(
        update={
            "pages": pages,
            "title": title,
            "sections": [nfkc(s) for s in paper.sections],
            "tables": [nfkc(t) for t in paper.tables],
            "abstract": unicodedata.normalize("NFKC", paper.abstract),
            "authors": [unicodedata.normalize("NFKC", a) for a in paper.authors],
            "references": [unicodedata.normalize("NFKC", r) for r in paper.references],
        }
    )


def sniff_kind(data: bytes, label: str, *, markdown_hint: bool = False) -> Kind:
    """The format from the bytes alone; refuses what is clearly not a paper."""
    if data.lstrip()[:5] == b"%PDF-":
        return "pdf"
    if data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        raise UserError(f"cannot read {label!r}: it is an image, not a paper")
    if data.startswith(_ZIP_MAGIC):
        hint = "give the PDF, the main .tex or a .tar.gz of the LaTeX source"
        raise UserError(f"cannot read {label!r}: it is a zip archive ({hint})")
    if data.startswith(_GZIP_MAGIC) or is_tar(data[:512]):
        raise UserError(f"cannot read {label!r}: it is an archive")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:  # NUL bytes decode as UTF-8 but no paper text has them
        raise UserError(f"cannot read {label!r}: it is not text, PDF or HTML (binary data)")
    if not text.strip():
        raise UserError(f"cannot read {label!r}: it is empty")
    if text.lstrip()[:14].lower().startswith(("<!doctype html", "<html")):
        return "html"
    if "\\documentclass" in text or "\\begin{document}" in text:
        return "tex"
    if markdown_hint or _MD_HEADING.search(text):
        return "markdown"
    return "text"
