"""Markdown and plain text into a `Paper`: pages at form feeds, sections from headings.

Markdown sections come from `#` headings (not inside fenced code), its abstract and
references from the sections of those names. Plain text has no fonts, so it goes
through the PDF layout's structure finder with `plain=True`: a numbered line standing
alone after a blank line is a heading.
"""

from __future__ import annotations

import re
from typing import Literal

from reprodesk.schemas import Paper, Section
from tools.papers.layout import Line, PdfText, structure

_MD_TITLE = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_MD_SECTION = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")


def text_paper(text: str, kind: Literal["markdown", "text"], source: str, digest: str) -> Paper:
    """Markdown and plain text: one page per form feed, sections from headings."""
    pages = text.split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()  # pdftotext ends every page with \f; that is no extra page
    title = ""
    if kind == "markdown":
        if m := _MD_TITLE.search(text):
            title = m.group(1)
        sections = _markdown_sections(pages)
        found = PdfText(pages=pages, sections=sections)
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
        found = structure([_plain_lines(page) for page in pages], plain=True, keep_pages=False)
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


def _plain_lines(page: str) -> list[Line]:
    lines: list[Line] = []
    blank = True
    for row, raw in enumerate(page.splitlines()):
        text = " ".join(raw.split())
        if not text:
            blank = True
            continue
        lines.append(Line(text, 0.0, -float(row), 10.0, False, [text], 0, paragraph=blank))
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
