"""An HTML page into a `Paper`: visible text, sections at headings, tables, citation meta.

The stdlib `HTMLParser` keeps the visible text with line breaks at block elements
(script, style and the like dropped, and a site's navigation, footer and asides, so
that "10% off" in a footer is no claim), marks headings so that sections can be cut,
keeps tables apart as rows of cells, and reads the `<meta name="citation_*">` tags
that journals and arXiv's HTML pages carry (title, authors, abstract, date, arXiv id).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from reprodesk.schemas import Paper, Section

# Not the paper: code, styling, the <title> (kept apart), and a site's chrome around it
# (<header> stays: an article's own header holds its title and authors).
_SKIP_TAGS = {"script", "style", "noscript", "template", "title", "nav", "footer", "aside"}
_BLOCK_TAG = re.compile(
    r"address|article|aside|blockquote|br|d[dlt]|div|fig(caption|ure)|footer|h[1-6r]|header"
    r"|li|main|nav|ol|p|pre|section|t[dhr]|table|ul"
)
_HEADING_MARK = re.compile(r"\x00H([1-6])\x00(.*?)\x00/H\x00", re.DOTALL)


def html_paper(html: str, source: str, digest: str) -> Paper:
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
