"""Text runs into lines in reading order, then into sections, references and tables.

A PDF's text comes in content-stream order, which is drawing order: fine for a
single column, wrong when a producer draws both columns of a row before the next
row (a naive extraction then splices unrelated sentences). Here every text run
comes with its position and font (`pdf.page_runs`), and each page is laid out again:

1. Runs (a text object's characters on one baseline) are placed by their baseline.
   Rotated text (the arXiv stamp in the margin) was dropped already.
2. Running heads, running feet and page numbers (short lines in the top or bottom
   band that repeat across pages, or are a bare number) are dropped, so that a
   sentence running over a page break stays whole.
3. Columns: a right column shows as many runs starting at one x in the middle of
   the page. Runs left of that edge are the left column unless they reach across
   it (full width: title, abstract, wide tables). The page is read band by band
   between full-width lines: left column, then right column.
4. Lines are runs on one baseline within a column; a paragraph break is a vertical
   gap well over the page's usual leading.

Structure comes from the fonts: a heading is a short line, bold or larger than the
body text, that is numbered ("2.1 Multi-Head Latent Attention", "A. Appendix") or
is one of the usual unnumbered names (Abstract, References, ...). Run widths are
estimated from the character count: good enough to tell a full-width line from a
column line, not to measure text.

What it does not do: read text inside images (scans: refused by the caller), order
more than two columns, rebuild tables beyond rows of cells, or split a producer's
single text run that itself spans both columns. A single-column page with a table
column in the middle may be taken for two columns: its text stays whole, the table
rows do not.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from reprodesk.schemas import Section

_BARE_NUMBER = re.compile(
    r"^(?:page\s+)?[-–—(]*\s*(?:\d{1,4}|[ivxlc]{1,7})\s*[-–—)]*(?:\s*of\s*\d+)?$", re.I
)
_NUMBERED = re.compile(
    r"^(?P<num>\d{1,2}(?:\.\d{1,2}){0,3}|[A-H](?:\.\d{1,2}){0,3})\.?\s+(?P<rest>\S.*)$"
)
_NAMED = re.compile(
    r"^(?:\d{1,2}\.?\s+)?(?:abstract|introduction|related works?|background|conclusions?"
    r"|(?:conclusions? and|discussion and) [a-z ]+|references|bibliography|acknowledge?ments?"
    r"|appendix(?:es)?|appendices|limitations|discussion|contents|table of contents)$",
    re.IGNORECASE,
)
_APPENDIX = re.compile(r"^appendix\s+[A-Z](?:[.:]|\s)\s*\S.*$", re.IGNORECASE)
_REFERENCES = re.compile(r"^(?:\d{1,2}\.?\s+)?(?:references|bibliography)$", re.IGNORECASE)
_REF_MARKER = re.compile(r"^\s*(?:\[\d{1,4}\]|\d{1,4}\.)\s+")
# "Table 1:", "Table 1." and "Table 1 |", as DeepSeek's reports set it.
_CAPTION = re.compile(r"^table\s+[A-Z]?\d{1,3}\s*[:.|]", re.IGNORECASE)
_AUTHOR_NOISE = re.compile(r"[\d*†‡§¶∗⋆♠♣♦♥]+")
_NAME = r"[A-Z][\w'’-]*\.?(?:\s+[A-Z][\w'’-]*\.?)+"
_NAME_LIST = re.compile(rf"^{_NAME}(?:\s*(?:,|\band\b|&)\s*(?:and\s+)?{_NAME})*$")
_ORG_WORDS = re.compile(
    r"universit|institut|laborator|\blab\b|school|college|department|inc\b|ltd|corp"
    r"|research|academy|center|centre|@|http",
    re.IGNORECASE,
)


@dataclass
class Run:
    x: float
    y: float
    size: float
    bold: bool
    text: str
    right: float = 0.0  # the right edge where the reader knows it, else 0

    @property
    def end(self) -> float:
        """The right edge: as read, or estimated as half an em per character."""
        return self.right or self.x + 0.5 * self.size * len(self.text)


@dataclass
class Line:
    """One line of a page as read: text, where it sits, how it is set."""

    text: str
    x: float
    y: float
    size: float
    bold: bool
    cells: list[str]  # the line cut at wide gaps: more than one means a table row
    column: int  # 0 full width, 1 left, 2 right
    paragraph: bool = False  # a paragraph starts here (vertical gap above)


@dataclass
class PdfText:
    """What `read_pdf` found; the caller turns it into a `Paper`."""

    pages: list[str]
    sections: list[Section]
    title: str = ""
    abstract: str = ""
    authors: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    tables: list[Section] = field(default_factory=list)


def drop_margins(
    pages: list[tuple[list[Run], tuple[float, float, float, float]]],
) -> list[list[Run]]:
    """Remove running heads and feet and page numbers: short lines in the margin bands
    that are a bare number or repeat (digits aside) on several pages."""

    def band(run: Run, box: tuple[float, float, float, float]) -> bool:
        _, y0, _, h = box
        return run.y > y0 + 0.93 * h or run.y < y0 + 0.07 * h

    def key(run: Run) -> str:
        return re.sub(r"\d+", "#", " ".join(run.text.split()).lower())

    seen: Counter[str] = Counter()
    for runs, box in pages:
        seen.update({key(r) for r in runs if band(r, box) and len(r.text) < 120})
    repeat = max(2, math.ceil(0.5 * len(pages))) if len(pages) < 6 else 3
    kept: list[list[Run]] = []
    for runs, box in pages:
        kept.append(
            [
                r
                for r in runs
                if not (
                    band(r, box)
                    and len(r.text) < 120
                    and (_BARE_NUMBER.match(r.text.strip()) or seen[key(r)] >= repeat)
                )
            ]
        )
    return kept


# --------------------------------------------------------------------------- layout


def _right_edge(runs: list[Run], x0: float, width: float) -> float | None:
    """The right column's left edge, if this page has two columns."""
    middle = [r.x for r in runs if x0 + 0.3 * width <= r.x <= x0 + 0.7 * width]
    if len(middle) < 3:
        return None
    bins = Counter(round(x / 2.0) for x in middle)
    best, _ = bins.most_common(1)[0]
    cluster = [x for x in middle if abs(x / 2.0 - best) <= 1.0]
    rows = {round(r.y) for r in runs}
    if len(cluster) < max(3, 0.1 * len(rows)):
        return None
    edge = min(cluster)
    left_starts = [r.x for r in runs if r.x < edge - 0.1 * width]
    if len(left_starts) < 3:
        return None
    return edge


def layout(runs: list[Run], box: tuple[float, float, float, float]) -> list[Line]:
    """Lines of one page in reading order."""
    if not runs:
        return []
    x0, _, width, _ = box
    edge = _right_edge(runs, x0, width)
    if edge is None:
        columns = [0] * len(runs)
    else:
        columns = [2 if r.x >= edge - 1.0 else (0 if r.end > edge + r.size else 1) for r in runs]
        full_rows = [r.y for r, c in zip(runs, columns, strict=True) if c == 0]
        columns = [  # a run on the baseline of a full-width line belongs to that line
            0 if any(abs(r.y - y) < 0.4 * r.size for y in full_rows) else c
            for r, c in zip(runs, columns, strict=True)
        ]
    by_column: dict[int, list[Run]] = {0: [], 1: [], 2: []}
    for run, col in zip(runs, columns, strict=True):
        by_column[col].append(run)
    lines = {col: _lines(col_runs, col) for col, col_runs in by_column.items()}
    ordered: list[Line] = []
    pending = {1: list(lines[1]), 2: list(lines[2])}
    for full in lines[0]:
        for col in (1, 2):
            while pending[col] and pending[col][0].y > full.y:
                ordered.append(pending[col].pop(0))
        ordered.append(full)
    ordered += pending[1] + pending[2]
    _mark_paragraphs(ordered)
    return ordered


def _lines(runs: list[Run], column: int) -> list[Line]:
    """Runs on one baseline (within 0.4 em) become one line, top to bottom.

    A line's baseline is that of its largest run, and a run set clearly smaller may sit
    up to 0.6 em off it: sub- and superscripts (lowered or raised) join the line they
    belong to, even one stacked under another.
    """
    runs = sorted(runs, key=lambda r: (-r.y, r.x))
    groups: list[list[Run]] = []
    base: Run | None = None  # the current line's largest run
    for run in runs:
        if base is not None and abs(base.y - run.y) < _reach(run, base):
            groups[-1].append(run)
            base = run if run.size > base.size else base
        else:
            groups.append([run])
            base = run
    out: list[Line] = []
    for group in groups:
        # Left to right; a superscript stacked over a subscript (d^R_h) reads first.
        group.sort(key=lambda r: r.x)
        for k in range(len(group) - 1):
            a, b = group[k], group[k + 1]
            if b.x - a.x < 0.15 * a.size and b.y > a.y:
                group[k], group[k + 1] = b, a
        # The reader ends a run with a space where it saw the words apart; where it knows
        # the edges, a gap of a space's width between runs is a space too (after a
        # subscript, say). A wide gap after a space starts a table cell.
        text, cells = group[0].text, [group[0].text]
        for prev, run in itertools.pairwise(group):
            spaced = text[-1:].isspace() or run.text[:1].isspace()
            gap = run.x - prev.end
            if spaced and gap > 1.5 * run.size:
                cells.append(run.text)
            elif not spaced and prev.right and gap > 0.15 * run.size:
                cells[-1] += " " + run.text
                text += " "
            else:
                cells[-1] += run.text
            text += run.text
        main = max(group, key=lambda r: len(r.text))
        out.append(
            Line(
                text=" ".join(text.split()),
                x=group[0].x,
                y=group[0].y,
                size=main.size,
                bold=all(r.bold for r in group),
                cells=[" ".join(c.split()) for c in cells],
                column=column,
            )
        )
    return out


def _reach(run: Run, base: Run) -> float:
    """How far off a line's baseline a run may sit and still be on that line."""
    big, small = max(run.size, base.size), min(run.size, base.size)
    return (0.6 if small < 0.85 * big else 0.4) * big


def _mark_paragraphs(lines: list[Line]) -> None:
    """A paragraph starts where the gap to the line above, in the same column, is well
    over the usual leading. Moving on to the next column is no break: sentences flow."""
    gaps = [a.y - b.y for a, b in itertools.pairwise(lines) if a.column == b.column and a.y > b.y]
    leading = statistics.median(gaps) if gaps else 0.0
    for prev, line in itertools.pairwise(lines):
        if prev.column == line.column and prev.y > line.y:
            line.paragraph = leading > 0 and (prev.y - line.y) > 1.4 * leading
        elif line.column == 0 or prev.column == 0:
            line.paragraph = True


# --------------------------------------------------------------------------- structure


def structure(pages: list[list[Line]], *, plain: bool = False, keep_pages: bool = True) -> PdfText:
    """Sections, title, abstract, authors, references and tables from laid-out lines.

    `plain`: the lines carry no fonts (plain text), so a numbered line is a heading when
    it stands alone after a blank line. `keep_pages=False` skips rebuilding page texts.
    """
    sizes: Counter[float] = Counter()
    for lines in pages:
        for line in lines:
            sizes[round(line.size * 2) / 2] += len(line.text)
    body = sizes.most_common(1)[0][0] if sizes else 10.0
    texts: list[str] = []
    sections = [Section(heading="", level=1, page=1, text="")]
    members: list[list[tuple[int, Line]]] = [[]]
    tables: list[Section] = []
    for number, lines in enumerate(pages, start=1):
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            level = _heading_level(line, body, plain)
            if level:
                heading = line.text
                while (  # a heading set over two lines
                    not plain
                    and i + 1 < len(lines)
                    and lines[i + 1].column == line.column
                    and line.y - lines[i + 1].y < 1.6 * line.size
                    and lines[i + 1].bold == line.bold
                    and abs(lines[i + 1].size - line.size) < 0.3
                    and (line.bold or line.size > body * 1.1)
                    and not _heading_level(lines[i + 1], body, plain)
                    and len(heading) + len(lines[i + 1].text) < 160
                ):
                    i += 1
                    heading += " " + lines[i].text
                out += ["", heading, ""]
                sections.append(Section(heading=heading, level=level, page=number, text=""))
                members.append([])
            else:
                if line.paragraph and out and out[-1]:
                    out.append("")
                out.append(line.text)
                members[-1].append((number, line))
            i += 1
        if keep_pages:
            texts.append("\n".join(out).strip("\n"))
            tables += _tables(lines, number)
    references: list[str] = []
    for section, lines_in in zip(sections, members, strict=True):
        section.text = _section_text(lines_in, section.page)
        if _REFERENCES.match(section.heading):
            references += _references([line for _, line in lines_in])
    if not sections[0].text and len(sections) > 1:
        sections.pop(0)  # nothing before the first heading
    front = pages[0] if pages else []
    title_lines = [] if plain else _title_lines(front, body)
    return PdfText(
        pages=texts,
        sections=sections,
        title=" ".join(line.text for line in title_lines),
        abstract=_abstract(sections, front),
        authors=_authors(front, title_lines),
        references=references,
        tables=tables,
    )


def _heading_level(line: Line, body: float, plain: bool = False) -> int:
    """0 for body text, else the heading level (1 section, 2 subsection, ...)."""
    text = line.text.strip()
    if not text or len(text) > 120 or len(line.cells) > 1:
        return 0
    if _NAMED.match(text.rstrip(":")):
        return 1
    styled = line.bold or line.size >= body * 1.1 or (plain and line.paragraph)
    if styled and _APPENDIX.match(text):
        return 1
    m = _NUMBERED.match(text)
    if not (styled and m) or text[-1] in ".,;":
        return 0
    rest = m.group("rest")
    words = re.findall(r"[A-Za-z]{2,}", rest)
    if not rest[0].isupper() or not words or sum(c.isdigit() for c in rest) > len(rest) / 3:
        return 0
    return m.group("num").count(".") + 1


def _section_text(numbered: list[tuple[int, Line]], first_page: int) -> str:
    parts: list[str] = []
    page = first_page
    for number, line in numbered:
        if number != page:
            parts.append("\f" * (number - page))
            page = number
        elif line.paragraph and parts and parts[-1] != "\f":
            parts.append("")
        parts.append(line.text)
    text = "\n".join(parts)
    return re.sub(r"\n?(\f+)\n?", r"\1", text).strip(" \n")


def _tables(lines: list[Line], page: int) -> list[Section]:
    """Runs of table rows (lines cut into cells), each with its caption when one is near."""
    found: list[Section] = []
    i = 0
    while i < len(lines):
        if len(lines[i].cells) < 2:
            i += 1
            continue
        j = i
        while j < len(lines) and len(lines[j].cells) >= 2:
            j += 1
        if j - i >= 2:
            near = lines[max(0, i - 3) : i] + lines[j : j + 3]
            caption = next((ln.text for ln in near if _CAPTION.match(ln.text)), "")
            rows = "\n".join(" | ".join(line.cells) for line in lines[i:j])
            found.append(Section(heading=caption, level=1, page=page, text=rows))
        i = j
    return found


def _references(lines: list[Line]) -> list[str]:
    """Split a references section into entries: by markers ([1], 1.), else by hanging
    indent, else by paragraph."""
    if not lines:
        return []
    entries: list[list[str]] = []
    marked = sum(bool(_REF_MARKER.match(line.text)) for line in lines)
    if marked >= max(2, len(lines) // 4):
        for line in lines:
            if _REF_MARKER.match(line.text) or not entries:
                entries.append([])
            entries[-1].append(line.text)
    else:
        margins = {
            col: min(ln.x for ln in lines if ln.column == col)
            for col in {ln.column for ln in lines}
        }
        indented = any(ln.x > margins[ln.column] + 0.5 * ln.size for ln in lines)
        for line in lines:
            start = line.x <= margins[line.column] + 0.5 * line.size if indented else line.paragraph
            if start or not entries:
                entries.append([])
            entries[-1].append(line.text)
    return [_join_hyphenated(entry) for entry in entries if entry]


def _join_hyphenated(lines: Iterable[str]) -> str:
    text = ""
    for line in lines:
        if text.endswith("-") and line[:1].islower():
            text = text[:-1] + line
        else:
            text = f"{text} {line}".strip()
    return text


def _title_lines(front: list[Line], body: float) -> list[Line]:
    """The largest words on page 1, when clearly larger than the body.

    The whole page is searched, not its first lines in reading order: a figure at the
    top of page 1 puts its legend and labels (set larger than the body, smaller than the
    title) before the title, and the title must not become a legend entry. A line with
    fewer than two words of letters (a number, an axis tick) is never a title.
    """
    words = [line for line in front if len(re.findall(r"[A-Za-z]{2,}", line.text)) >= 2]
    if not words:
        return []
    biggest = max(line.size for line in words)
    if biggest < body * 1.25:
        return []
    start = next(i for i, line in enumerate(front) if line in words and line.size == biggest)
    chosen = [front[start]]
    for line in front[start + 1 :]:
        if abs(line.size - biggest) > 0.3:
            break
        chosen.append(line)
    return chosen


def _abstract(sections: list[Section], front: list[Line]) -> str:
    for section in sections:
        if section.heading.strip().rstrip(":").lower() == "abstract":
            return " ".join(section.text.replace("\f", " ").split())
    for i, line in enumerate(front):  # "Abstract: we present ..." run into the text
        if m := re.match(r"^abstract\s*[:.—–-]\s*(\S.*)$", line.text, re.IGNORECASE):
            parts = [m.group(1)]
            for nxt in front[i + 1 :]:
                if nxt.paragraph:
                    break
                parts.append(nxt.text)
            return _join_hyphenated(parts)
    return ""


def _authors(front: list[Line], title: list[Line]) -> list[str]:
    """Names between the title and the abstract: lines that read as a list of names."""
    if not title:
        return []
    start = front.index(title[-1]) + 1
    names: list[str] = []
    for line in front[start : start + 8]:
        if _NAMED.match(line.text.strip().rstrip(":")) or line.text.lower().startswith("abstract"):
            break
        text = unicodedata.normalize("NFKC", _AUTHOR_NOISE.sub(" ", line.text))
        text = " ".join(text.replace(" ,", ",").split()).strip(" ,")
        if text and _NAME_LIST.match(text) and not _ORG_WORDS.search(text):
            names += [n.strip() for n in re.split(r",|\band\b|&", text) if n.strip()]
        elif names:
            break
    return names
