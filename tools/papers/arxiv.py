"""arXiv: recognise ids and URLs, read the API's Atom metadata, name the source files.

Accepted spellings of one paper: `2405.04434`, `2405.04434v2`, `arxiv:2405.04434`,
`arXiv:2405.04434v2`, old-style `hep-th/9901001`, and arxiv.org `abs/`, `pdf/`
(with or without `.pdf`) and `html/` URLs (also on `export.` and `www.`). All
normalise to the id, with the version only when the user gave one.

`ArxivClient` only knows where things are (its base URLs are fields, so tests point
them at a local server) and how to read the answers; the bytes come through the
caller's fetch function, so retries, size caps and timeouts stay in one place
(`tools.papers.fetch.Fetcher`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from reprodesk.schemas import UserError

_NEW_ID = r"\d{4}\.\d{4,5}"
_OLD_ID = r"[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7}"
_ID = re.compile(rf"(?P<id>{_NEW_ID}|{_OLD_ID})(?P<version>v\d+)?")
_BARE = re.compile(rf"^(?:arxiv:\s*)?(?:{_NEW_ID}|{_OLD_ID})(?:v\d+)?$", re.IGNORECASE)
_HOSTS = ("arxiv.org", "www.arxiv.org", "export.arxiv.org")
_ATOM = "{http://www.w3.org/2005/Atom}"

Fetch = Callable[[str], bytes]


def arxiv_id(source: str) -> str | None:
    """The arXiv id that `source` names (e.g. '2405.04434v2'), or None if it names none."""
    given = source.strip()
    if _BARE.match(given):
        m = _ID.search(given.split(":", 1)[-1].strip())
        return m.group(0) if m else None
    if not re.match(r"https?://", given, re.IGNORECASE):
        return None
    parts = urlsplit(given)
    if (parts.hostname or "").lower() not in _HOSTS:
        return None
    m = re.match(r"^/(?:abs|pdf|html|format)/(.+?)(?:\.pdf)?/?$", parts.path)
    if not m:
        return None
    found = _ID.fullmatch(m.group(1))
    return found.group(0) if found else None


@dataclass(frozen=True)
class ArxivMeta:
    """What the arXiv API says about a paper."""

    arxiv_id: str  # with the version the API resolved, e.g. '2405.04434v5'
    title: str
    authors: list[str] = field(default_factory=list)
    abstract: str = ""
    date: str = ""  # first version's date, YYYY-MM-DD


class NotOnArxiv(UserError):
    """The API answered, and has no such paper."""


@dataclass(frozen=True)
class ArxivClient:
    """Where arXiv keeps metadata, LaTeX sources and PDFs. Fields so tests can move them."""

    api_url: str = "http://export.arxiv.org/api/query"
    eprint_url: str = "https://arxiv.org/e-print/"
    pdf_url: str = "https://arxiv.org/pdf/"

    def api(self, arxiv_id: str) -> str:
        return f"{self.api_url}?id_list={quote(arxiv_id)}&max_results=1"

    def eprint(self, arxiv_id: str) -> str:
        return self.eprint_url.rstrip("/") + "/" + quote(arxiv_id)

    def pdf(self, arxiv_id: str) -> str:
        return self.pdf_url.rstrip("/") + "/" + quote(arxiv_id)

    def metadata(self, arxiv_id: str, fetch: Fetch) -> ArxivMeta:
        """Title, authors, abstract and date from the API; NotOnArxiv if it has no such id."""
        return parse_atom(fetch(self.api(arxiv_id)), arxiv_id)


def parse_atom(data: bytes, wanted: str) -> ArxivMeta:
    """The first entry of an arXiv API answer (Atom XML)."""
    label = f"arxiv:{wanted}"
    if b"<!DOCTYPE" in data[:2048].upper() or b"<!ENTITY" in data.upper():
        raise UserError(f"cannot read {label!r}: the arXiv API answer declares entities")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        reason = f"the arXiv API answer is not Atom XML ({exc})"
        raise UserError(f"cannot read {label!r}: {reason}") from exc
    entry = root.find(f"{_ATOM}entry")
    if entry is None:
        raise NotOnArxiv(f"cannot load {label!r}: arXiv has no paper with this id")

    def text(node: ET.Element, tag: str) -> str:
        found = node.find(f"{_ATOM}{tag}")
        return " ".join((found.text or "").split()) if found is not None else ""

    entry_id = text(entry, "id")
    if "/api/errors" in entry_id or text(entry, "title").lower() == "error":
        reason = text(entry, "summary") or "the arXiv API reports an error"
        raise NotOnArxiv(f"cannot load {label!r}: {reason}")
    found = _ID.search(entry_id.rsplit("/abs/", 1)[-1])
    return ArxivMeta(
        arxiv_id=found.group(0) if found else wanted,
        title=text(entry, "title"),
        authors=[text(a, "name") for a in entry.findall(f"{_ATOM}author") if text(a, "name")],
        abstract=text(entry, "summary"),
        date=text(entry, "published")[:10],
    )
