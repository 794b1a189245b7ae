"""Load a paper from a path or URL into a `Paper`: fetch, sniff, extract text.

Sources may be flaky, redirect, lie about their type or never end; every failure is one
`UserError` naming the input and the reason (the CLI prints it as one line). The format is
sniffed from the bytes, never the name or Content-Type. Text is NFKC-normalised so that
math-italic letters (𝑑𝑐) and ligatures (ﬁ) in PDFs match plain ASCII names later on.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import unicodedata
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

from reprodesk.schemas import Paper, UserError

Kind = Literal["pdf", "markdown", "text", "tex", "html"]
MB = 1024 * 1024
USER_AGENT = "reprodesk/0.1 (+https://github.com/reprodesk)"
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b")
_MD_HEADING = re.compile(r"^#{1,6}[ \t]+\S", re.MULTILINE)
_MD_TITLE = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_TEX_TITLE = re.compile(r"\\title\s*(?:\[[^\]]*\])?\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_SKIP_TAGS = {"script", "style", "noscript", "template", "title"}
_BLOCK_TAG = re.compile(
    r"address|article|aside|blockquote|br|d[dlt]|div|fig(caption|ure)|footer|h[1-6r]|header"
    r"|li|main|nav|ol|p|pre|section|t[dhr]|table|ul"
)


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
) -> Paper:
    """Load a paper from a local path (`~` expanded), a `file://` or an `http(s)://` URL.

    Fetched bytes are cached under `cache_dir/papers/` only once they parsed, so a
    truncated download or an error page served as 200 is fetched again next time.
    """
    given = source.strip()
    scheme = m.group(1).lower() if (m := re.match(r"([a-zA-Z][\w+.-]*)://", given)) else ""
    if scheme in ("http", "https"):
        key = hashlib.sha256(given.encode()).hexdigest()
        cached = Path(cache_dir).expanduser() / "papers" / key if cache_dir else None
        if cached is not None and cached.is_file() and not refresh:
            return parse_paper(cached.read_bytes(), given, given)
        data = (fetcher or Fetcher()).fetch(given)
        paper = parse_paper(data, given, given)
        if cached is not None:
            _write_atomic(cached, data)
        return paper
    if scheme == "file":
        host, _, rest = given[len("file://") :].partition("/")
        if host not in ("", "localhost"):
            raise UserError(f"cannot read {given!r}: file:// URLs with a host are not supported")
        path = Path(url2pathname(unquote("/" + rest)))
    elif scheme:
        hint = "use a local path, file://, http:// or https://"
        raise UserError(f"cannot load {given!r}: unsupported URL scheme {scheme!r} ({hint})")
    else:
        path = Path(given).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:  # missing, a directory, no permission: the OS names it best
        raise UserError(f"cannot read {given!r}: {(exc.strerror or str(exc)).lower()}") from exc
    return parse_paper(data, str(path.resolve()), given)


def parse_paper(data: bytes, source: str, label: str) -> Paper:
    """Turn raw bytes into a `Paper`; `label` is how error messages name the input."""
    name = urlsplit(source).path if "://" in source else source
    kind = sniff_kind(data, label, markdown_hint=name.lower().endswith((".md", ".markdown")))
    if kind == "pdf":
        title, pages = _parse_pdf(data, label)
    elif kind == "html":
        title, pages = _HTMLText.extract(data.decode("utf-8-sig"))
    else:
        text = data.decode("utf-8-sig").replace("\r\n", "\n")
        pages = text.split("\f")
        if len(pages) > 1 and not pages[-1].strip():
            pages.pop()  # pdftotext ends every page with \f; that is no extra page
        title = ""
        if kind == "markdown" and (m := _MD_TITLE.search(text)):
            title = m.group(1)
        elif kind == "tex" and (m := _TEX_TITLE.search(text)):  # one level of {} nesting
            title = re.sub(r"\\thanks\{[^{}]*\}", "", m.group(1))  # footnotes are no title
            title = re.sub(r"\\[a-zA-Z]+\*?\{([^{}]*)\}", r"\1", title).replace("\\\\", " ")
    pages = [unicodedata.normalize("NFKC", p) for p in pages]
    if not any(p.strip() for p in pages):
        raise UserError(f"cannot read {label!r}: it has no visible text")
    first_line = next(ln.strip() for p in pages for ln in p.splitlines() if ln.strip())
    title = " ".join(unicodedata.normalize("NFKC", title).split()) or first_line[:200]
    digest = hashlib.sha256(data).hexdigest()
    return Paper(source=source, kind=kind, title=title, pages=pages, sha256=digest)


def sniff_kind(data: bytes, label: str, *, markdown_hint: bool = False) -> Kind:
    """The format from the bytes alone; refuses what is clearly not a paper."""
    if data.lstrip()[:5] == b"%PDF-":
        return "pdf"
    if data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        raise UserError(f"cannot read {label!r}: it is an image, not a paper")
    if data.startswith(_ARCHIVE_MAGIC):
        raise UserError(f"cannot read {label!r}: it is an archive; tarball support comes later")
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


def _parse_pdf(data: bytes, label: str) -> tuple[str, list[str]]:
    try:
        reader = PdfReader(io.BytesIO(data))
        # Permission-only PDFs have an empty user password and open for anyone.
        locked = reader.is_encrypted and not reader.decrypt("")
        pages = [] if locked else [page.extract_text() or "" for page in reader.pages]
        title = "" if locked or not reader.metadata else reader.metadata.title or ""
    except DependencyError as exc:  # AES without the optional `cryptography` package
        raise UserError(f"cannot read {label!r}: the PDF is encrypted ({exc})") from exc
    except Exception as exc:  # pypdf raises many types on bad input; all mean the same here
        reason = f"the PDF is damaged or truncated ({type(exc).__name__}: {exc})"
        raise UserError(f"cannot read {label!r}: {reason}") from exc
    if locked:
        raise UserError(f"cannot read {label!r}: the PDF is encrypted")
    # A scan may still carry a stamp or page numbers: judge the text per page, not in total.
    if sum(len("".join(p.split())) for p in pages) < max(16, 10 * len(pages)):
        raise UserError(f"cannot read {label!r}: the PDF has no text layer (scanned?)")
    return str(title), pages


class _HTMLText(HTMLParser):
    """Visible text with line breaks at block elements; the <title> kept apart."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skipping: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skipping.append(tag)
        elif _BLOCK_TAG.fullmatch(tag):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()
        elif _BLOCK_TAG.fullmatch(tag):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)
        elif self.skipping == ["title"]:
            self.title.append(data)

    @classmethod
    def extract(cls, html: str) -> tuple[str, list[str]]:
        """(title, [body]) with spaces collapsed and at most one blank line in a row."""
        parser = cls()
        parser.feed(html)
        parser.close()
        lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        return " ".join("".join(parser.title).split()), [body]


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
