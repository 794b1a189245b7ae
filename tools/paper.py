"""Load a paper from an arXiv id, a URL or a file into a `Paper`: fetch, sniff, parse.

Sources: arXiv ids and arxiv.org URLs (metadata from the arXiv API; the LaTeX source
preferred over the PDF, for exact equations and values), any PDF or HTML URL, and
local `.pdf .md .tex .txt .tar.gz` files or `file://` URLs. Sources may be flaky,
redirect, lie about their type or never end; every failure is one `UserError` naming
the input and the reason (the CLI prints it as one line). The format is sniffed from
the bytes, never the name or Content-Type; a name only adds a promise that is checked
(an HTML page where `.pdf` was promised is an error page, not a paper). Text is
NFKC-normalised so that math-italic letters (𝑑𝑐) and ligatures (ﬁ) in PDFs match
plain ASCII names later on.

Cache: under `cache_dir`, keyed by the source as given (an arXiv paper by its id):
`papers/<key>` holds the bytes that parsed and `parsed/<key>.json` the `Paper`, so a
second load reads JSON and parses nothing. Nothing is written before a source parsed:
failures are never cached. Archives are unpacked in memory, never on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx
import tenacity
from pypdf import PdfReader
from pypdf.errors import DependencyError

from reprodesk.schemas import Paper, Section, UserError
from tools import pdftext
from tools.arxiv import ArxivClient, NotOnArxiv, arxiv_id
from tools.latex import ArchiveLimits, is_tar, parse_tex, source_text, unpack

Kind = Literal["pdf", "markdown", "text", "tex", "html"]
MB = 1024 * 1024
USER_AGENT = "reprodesk/0.1 (+https://github.com/reprodesk)"
PARSER_VERSION = 2  # bump when parsing changes: parsed/ entries of older versions are redone
MAX_PDF_PAGES = 600
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
_MD_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)
_MD_TITLE = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_MD_SECTION = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SKIP_TAGS = {"script", "style", "noscript", "template", "title"}
_BLOCK_TAG = re.compile(
    r"address|article|aside|blockquote|br|d[dlt]|div|fig(caption|ure)|footer|h[1-6r]|header"
    r"|li|main|nav|ol|p|pre|section|t[dhr]|table|ul"
)
_HEADING_MARK = re.compile(r"\x00H([1-6])\x00(.*?)\x00/H\x00", re.DOTALL)


class _Transient(Exception):
    """A fetch failure worth another try (network, timeout, 5xx, 429)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Fetcher:
    """Downloads one URL's bytes politely and boundedly; fields so tests can shrink limits."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_bytes: int = 64 * MB
    max_redirects: int = 5
    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 30.0
    transport: httpx.BaseTransport | None = None

    def fetch(self, url: str) -> bytes:
        """The body of `url`; retries transient failures, then gives up with one UserError."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Transient),
            reraise=True,
        )
        with httpx.Client(
            timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=True,
            max_redirects=self.max_redirects,
            transport=self.transport,
        ) as client:
            try:
                return retrying(self._get_once, client, url)
            except _Transient as exc:
                msg = f"cannot fetch {url!r}: {exc} (gave up after {self.attempts} attempts)"
                raise UserError(msg) from exc

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """A server's numeric Retry-After wins (capped, so it cannot stall us); else backoff."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after_s)
        return float(tenacity.wait_exponential(self.backoff_s, self.max_backoff_s)(state))

    def _get_once(self, client: httpx.Client, url: str) -> bytes:
        try:
            with client.stream("GET", url) as resp:
                status = f"HTTP {resp.status_code} {resp.reason_phrase}".strip()
                if resp.status_code == 429 or resp.status_code >= 500:
                    after = resp.headers.get("Retry-After", "").strip()  # a date: our backoff
                    seconds = float(after) if re.fullmatch(r"\d+(\.\d*)?", after) else None
                    raise _Transient(status, seconds)
                if not resp.is_success:
                    raise UserError(f"cannot fetch {url!r}: {status}")
                return self._read_capped(resp, url)
        except httpx.TooManyRedirects as exc:
            msg = f"cannot fetch {url!r}: more than {self.max_redirects} redirects"
            raise UserError(msg) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise UserError(f"cannot fetch {url!r}: {exc}") from exc
        except httpx.ConnectTimeout as exc:
            raise _Transient(f"could not connect within {self.connect_timeout:g} s") from exc
        except httpx.TimeoutException as exc:
            raise _Transient(f"no data for {self.read_timeout:g} s (read timeout)") from exc
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    def _read_capped(self, resp: httpx.Response, url: str) -> bytes:
        """Stream the body and stop past the cap: a wrong link must not fill memory."""
        cap = f"{self.max_bytes / MB:g} MB" if self.max_bytes >= MB else f"{self.max_bytes} bytes"
        too_big = UserError(f"cannot fetch {url!r}: the response is larger than {cap}")
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise too_big
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise too_big
        return bytes(body)


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
        return _cached(
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

        return _cached(
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
    data = _read_file(path, given, fetcher.max_bytes)
    return parse_paper(data, str(path.resolve()), given, limits=limits)


def _read_file(path: Path, label: str, max_bytes: int) -> bytes:
    """The file's bytes, refusing by size before reading (a 2 GB file is not a paper)."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        if size > max_bytes:
            raise UserError(f"cannot read {label!r}: it is larger than {_size(max_bytes)}")
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)  # a file that grew since stat() is still capped
    except OSError as exc:  # missing, a directory, no permission: the OS names it best
        raise UserError(f"cannot read {label!r}: {(exc.strerror or str(exc)).lower()}") from exc
    if len(data) > max_bytes:
        raise UserError(f"cannot read {label!r}: it is larger than {_size(max_bytes)}")
    return data


def _size(n: int) -> str:
    return f"{n / MB:g} MB" if n >= MB else f"{n} bytes"


# --------------------------------------------------------------------------- cache


def _cached(
    cache: Path | None,
    key: str,
    refresh: bool,
    load: Callable[[], tuple[Paper, bytes]],
    reparse: Callable[[bytes], Paper] | None,
) -> Paper:
    """The parsed paper from the cache, else `load()` and store the bytes and the result."""
    if cache is None:
        return load()[0]
    name = hashlib.sha256(key.encode()).hexdigest()
    raw, parsed = cache / "papers" / name, cache / "parsed" / f"{name}.json"
    if not refresh:
        if (paper := _read_parsed(parsed, key)) is not None:
            return paper
        if reparse is not None and raw.is_file():
            paper = reparse(raw.read_bytes())
            _write_atomic(parsed, _parsed_json(paper, key))
            return paper
    paper, data = load()
    _write_atomic(raw, data)
    _write_atomic(parsed, _parsed_json(paper, key))
    return paper


def _parsed_json(paper: Paper, key: str) -> bytes:
    return json.dumps(
        {"version": PARSER_VERSION, "key": key, "paper": paper.model_dump(mode="json")}
    ).encode()


def _read_parsed(path: Path, key: str) -> Paper | None:
    """A cached parse of this parser version, or None (missing, older, unreadable)."""
    try:
        entry = json.loads(path.read_bytes())
        if entry.get("version") != PARSER_VERSION or entry.get("key") != key:
            return None
        return Paper.model_validate(entry["paper"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


# --------------------------------------------------------------------------- arXiv


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


# --------------------------------------------------------------------------- parsing


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
            return _finish(_tex_paper(tex, bbl, source, digest), label)
        if unpacked.startswith(_GZIP_MAGIC) or is_tar(unpacked[:512]):
            raise UserError(f"cannot read {label!r}: it is an archive inside an archive")
        content = unpacked  # one gzipped file: a .tex, a PDF, ...
    promised = expect_pdf or name.lower().endswith(".pdf")
    kind = sniff_kind(content, label, markdown_hint=name.lower().endswith((".md", ".markdown")))
    if promised and kind == "html":
        reason = "a PDF was expected but the answer is an HTML page (an error or landing page?)"
        raise UserError(f"cannot read {label!r}: {reason}")
    if kind == "pdf":
        paper = _pdf_paper(content, source, label, digest)
    elif kind == "html":
        paper = _html_paper(content.decode("utf-8-sig"), source, digest)
    elif kind == "tex":
        paper = _tex_paper(_decode_text(content), "", source, digest)
    else:
        paper = _text_paper(_decode_text(content), kind, source, digest)
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


def _pdf_paper(data: bytes, source: str, label: str, digest: str) -> Paper:
    try:
        reader = PdfReader(io.BytesIO(data))
        # Permission-only PDFs have an empty user password and open for anyone.
        locked = reader.is_encrypted and not reader.decrypt("")
        if not locked and len(reader.pages) > MAX_PDF_PAGES:
            reason = f"the PDF has {len(reader.pages)} pages, more than {MAX_PDF_PAGES}"
            raise UserError(f"cannot read {label!r}: {reason}")
        found = None if locked else pdftext.read_pdf(reader, data)
        title = "" if locked or not reader.metadata else reader.metadata.title or ""
    except UserError:
        raise
    except DependencyError as exc:  # AES without the optional `cryptography` package
        raise UserError(f"cannot read {label!r}: the PDF is encrypted ({exc})") from exc
    except Exception as exc:  # pypdf raises many types on bad input; all mean the same here
        reason = f"the PDF is damaged or truncated ({type(exc).__name__}: {exc})"
        raise UserError(f"cannot read {label!r}: {reason}") from exc
    if found is None:
        raise UserError(f"cannot read {label!r}: the PDF is encrypted")
    pages = found.pages
    # A scan may still carry a stamp or page numbers: judge the text per page, not in total.
    if sum(len("".join(p.split())) for p in pages) < max(16, 10 * len(pages)):
        raise UserError(f"cannot read {label!r}: the PDF has no text layer (scanned?)")
    return Paper(
        source=source,
        kind="pdf",
        title=_plausible_title(str(title)) or found.title,
        pages=pages,
        sha256=digest,
        authors=found.authors,
        abstract=found.abstract,
        sections=found.sections,
        references=found.references,
        tables=found.tables,
    )


def _plausible_title(title: str) -> str:
    """PDF metadata titles are often a file name or a tool's default: those are no title."""
    title = " ".join(title.split())
    if len(title) < 4 or re.search(
        r"\.(?:dvi|tex|docx?|pdf)$|^untitled|^microsoft word", title, re.I
    ):
        return ""
    return title


def _tex_paper(tex: str, bbl: str, source: str, digest: str) -> Paper:
    doc = parse_tex(tex, bbl)
    pages = ["\n\n".join(x for x in (s.heading, s.text) if x) for s in doc.sections]
    return Paper(
        source=source,
        kind="tex",
        title=doc.title,
        pages=pages,
        sha256=digest,
        page_unit="section",
        authors=doc.authors,
        abstract=doc.abstract,
        sections=doc.sections,
        references=doc.references,
        tables=doc.tables,
        equations=doc.equations,
    )


def _text_paper(text: str, kind: Kind, source: str, digest: str) -> Paper:
    """Markdown and plain text: one page per form feed, sections from headings."""
    pages = text.split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()  # pdftotext ends every page with \f; that is no extra page
    title = ""
    if kind == "markdown":
        if m := _MD_TITLE.search(text):
            title = m.group(1)
        sections = _markdown_sections(pages)
        found = pdftext.PdfText(pages=pages, sections=sections)
        named = {s.heading.strip().lower(): s for s in sections}
        found.abstract = " ".join(named["abstract"].text.split()) if "abstract" in named else ""
        refs = named.get("references") or named.get("bibliography")
        if refs:
            found.references = [
                re.sub(r"^\s*[-*•]\s+", "", e).strip()
                for e in re.split(r"\n(?=\s*(?:[-*•]|\[\d+\]|\d+\.)\s)|\n\s*\n", refs.text)
                if e.strip()
            ]
    else:
        found = pdftext.structure(
            [_plain_lines(page) for page in pages], plain=True, keep_pages=False
        )
    return Paper(
        source=source,
        kind=kind,
        title=title,
        pages=pages,
        sha256=digest,
        abstract=found.abstract,
        sections=found.sections,
        references=found.references,
    )


def _plain_lines(page: str) -> list[pdftext.Line]:
    lines: list[pdftext.Line] = []
    blank = True
    for row, raw in enumerate(page.splitlines()):
        text = " ".join(raw.split())
        if not text:
            blank = True
            continue
        lines.append(pdftext.Line(text, 0.0, -float(row), 10.0, False, [text], 0, paragraph=blank))
        blank = False
    return lines


def _markdown_sections(pages: list[str]) -> list[Section]:
    sections = [Section(heading="", level=1, page=1, text="")]
    bodies: list[list[str]] = [[]]
    fenced = False
    for number, page in enumerate(pages, start=1):
        if number > 1:
            bodies[-1].append("\f")
        for line in page.split("\n"):
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            m = None if fenced else _MD_SECTION.match(line)
            if m:
                level = min(len(m.group(1)), 3)
                sections.append(Section(heading=m.group(2), level=level, page=number, text=""))
                bodies.append([])
            else:
                bodies[-1].append(line)
    for section, body in zip(sections, bodies, strict=True):
        section.text = re.sub(r"\n?\f\n?", "\f", "\n".join(body)).strip()
    return [s for s in sections if s.heading or s.text]


def _html_paper(html: str, source: str, digest: str) -> Paper:
    parser = _HTMLText.parse(html)
    marked = parser.marked_text()
    body = _HEADING_MARK.sub(lambda m: " ".join(m.group(2).split()), marked)
    body = _tidy_lines(body)
    sections = [Section(heading="", level=1, page=1, text="")]
    pos = 0
    for m in _HEADING_MARK.finditer(marked):
        sections[-1].text = _tidy_lines(marked[pos : m.start()])
        heading = " ".join(m.group(2).split())
        sections.append(Section(heading=heading, level=min(int(m.group(1)), 3), page=1, text=""))
        pos = m.end()
    sections[-1].text = _tidy_lines(marked[pos:])
    meta = parser.meta
    named = {s.heading.lower(): s for s in sections}
    abstract = (meta.get("citation_abstract") or [""])[0]
    if not abstract and "abstract" in named:
        abstract = " ".join(named["abstract"].text.split())
    date = (meta.get("citation_publication_date") or meta.get("citation_date") or [""])[0]
    return Paper(
        source=source,
        kind="html",
        title=(meta.get("citation_title") or [""])[0] or " ".join("".join(parser.title).split()),
        pages=[body],
        sha256=digest,
        authors=meta.get("citation_author", []),
        abstract=abstract,
        date=date.replace("/", "-")[:10],
        arxiv_id=next(iter(meta.get("citation_arxiv_id", [])), None),
        sections=[s for s in sections if s.heading or s.text],
        tables=parser.tables,
    )


def _tidy_lines(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class _HTMLText(HTMLParser):
    """Visible text with line breaks at block elements; the <title>, <meta name=citation_*>
    tags and tables kept apart, headings marked so that sections can be cut."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skipping: list[str] = []
        self.meta: dict[str, list[str]] = {}
        self.tables: list[Section] = []
        self._tables: list[tuple[list[str], list[list[str]]]] = []  # (caption, rows) open
        self._cell: list[str] | None = None
        self._caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            found = dict(attrs)
            name, content = (found.get("name") or "").lower(), found.get("content")
            if name.startswith("citation_") and content:
                self.meta.setdefault(name, []).append(" ".join(content.split()))
            return
        if tag in _SKIP_TAGS:
            self.skipping.append(tag)
        elif _BLOCK_TAG.fullmatch(tag):
            self.parts.append("\n")
        if re.fullmatch(r"h[1-6]", tag) and not self.skipping:
            self.parts.append(f"\x00H{tag[1]}\x00")
        if tag == "table":
            self._tables.append(([], []))
        elif self._tables and tag == "tr":
            self._tables[-1][1].append([])
        elif self._tables and tag in ("td", "th"):
            self._cell = []
        elif self._tables and tag == "caption":
            self._caption = True

    def handle_endtag(self, tag: str) -> None:
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()
            return
        if re.fullmatch(r"h[1-6]", tag) and not self.skipping:
            self.parts.append("\x00/H\x00")
        if _BLOCK_TAG.fullmatch(tag):
            self.parts.append("\n")
        if tag in ("td", "th") and self._cell is not None and self._tables:
            rows = self._tables[-1][1] or [[]]
            if not self._tables[-1][1]:
                self._tables[-1][1].append(rows[0])
            rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "caption":
            self._caption = False
        elif tag == "table" and self._tables:
            caption, rows = self._tables.pop()
            text = "\n".join(" | ".join(r) for r in rows if any(r))
            if text:
                heading = " ".join("".join(caption).split())
                self.tables.append(Section(heading=heading, level=1, page=1, text=text))

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)
            if self._cell is not None:
                self._cell.append(data)
            elif self._caption and self._tables:
                self._tables[-1][0].append(data)
        elif self.skipping == ["title"]:
            self.title.append(data)

    @classmethod
    def parse(cls, html: str) -> _HTMLText:
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser

    def marked_text(self) -> str:
        """The text with headings between \\x00H<level>\\x00 and \\x00/H\\x00 marks."""
        text = "".join(self.parts)
        if text.count("\x00H") != text.count("\x00/H"):  # a heading never closed: no marks
            text = re.sub(r"\x00/?H[1-6]?\x00", "", text)
        return text


def _write_atomic(target: Path, data: bytes) -> None:
    """Temp file + rename in the same directory: a crash never leaves a half-written entry."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the paper cache {str(target.parent)!r}: {exc}") from exc
