"""Real PDFs for tests, made with matplotlib's PDF backend.

A checked-in binary fixture hides what it contains; these helpers say it in the
test. Text is placed with `fig.text`, one figure per page, with TrueType fonts
embedded (`pdf.fonttype` 42) and STIX as a fallback so that Unicode math-italic
letters (𝑑𝑐) come out as real glyphs; pypdf extracts each line intact.
No pyplot: figures are built directly, so no GUI backend or global state is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

_RC = {"pdf.fonttype": 42, "font.family": ["DejaVu Sans", "STIXGeneral"]}
_LETTER = (8.5, 11.0)  # inches


def make_pdf(path: Path, pages: list[list[str]], *, title: str | None = None) -> Path:
    """Write a PDF with one page per item of `pages`, each a list of text lines.

    `title` goes into the /Title metadata; without it the PDF has none, which is
    how the loader's first-line fallback gets exercised. Keep pages to ~40 short
    lines: text past the bottom edge is still written but may extract oddly.
    """
    metadata = {"Title": title} if title else {}
    with matplotlib.rc_context(_RC), PdfPages(path, metadata=metadata) as pdf:
        for lines in pages:
            fig = Figure(figsize=_LETTER)
            for i, line in enumerate(lines):
                fig.text(0.08, 0.94 - 0.022 * i, line, fontsize=11)
            pdf.savefig(fig)
    return path


def make_image_pdf(path: Path) -> Path:
    """Write a one-page PDF holding only a raster image: a stand-in for a scanned paper."""
    pixels = np.random.default_rng(0).random((96, 72))
    with PdfPages(path) as pdf:
        fig = Figure(figsize=_LETTER)
        fig.figimage(pixels, xo=40, yo=40, cmap="gray")
        pdf.savefig(fig)
    return path


# --------------------------------------------------------------------------- two columns

_SOFT_HYPHEN = "\u00ad"
_COLUMN_X = (0.07, 0.52)  # left edges of the two columns, as fractions of the page width
_LEADING = 0.0145  # one body line, as a fraction of the page height (11.5 pt)


@dataclass(frozen=True)
class ColumnPage:
    """One page: full-width lines on top, then two columns of lines.

    A line starting with "# " is set as a title (15 pt bold), "## " as a heading
    (10 pt bold), anything else as body text (8.5 pt); an empty line is a paragraph
    gap. `column()` turns paragraphs into such lines.
    """

    top: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    right: list[str] = field(default_factory=list)


def column(*paragraphs: str, width: int = 46) -> list[str]:
    """Wrap paragraphs into column lines, an empty line between paragraphs.

    Headings ("## ...") pass through; two in a row make one heading set over two
    lines. A soft hyphen (U+00AD) inside a word is a place where the word may break:
    the line then ends in "-" and the rest of the word starts the next line, as TeX
    hyphenates. A hyphen in a compound ("key-value") is a break point too, as in TeX.
    """
    lines: list[str] = []
    for paragraph in paragraphs:
        if lines and not paragraph.startswith("#") and not lines[-1].startswith("#"):
            lines.append("")  # headings bring their own space
        if paragraph.startswith("#"):
            lines.append(paragraph)
            continue
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}".strip()
            if len(candidate.replace(_SOFT_HYPHEN, "")) <= width:
                current = candidate
                continue
            pieces = word.split(_SOFT_HYPHEN)
            head = next(
                (
                    k
                    for k in range(len(pieces) - 1, 0, -1)
                    if len(f"{current} {''.join(pieces[:k])}-".strip()) <= width
                ),
                0,
            )
            if head:
                lines.append(f"{current} {''.join(pieces[:head])}-".strip())
                current = "".join(pieces[head:])
            elif "-" in word[:-1] and len(f"{current} {word.split('-')[0]}-") <= width:
                first, _, rest = word.partition("-")  # break after a compound's hyphen
                lines.append(f"{current} {first}-".strip())
                current = rest
            else:
                lines.append(current.replace(_SOFT_HYPHEN, ""))
                current = word
        lines.append(current.replace(_SOFT_HYPHEN, ""))
    return [line.replace(_SOFT_HYPHEN, "") for line in lines]


def make_two_column_pdf(
    path: Path,
    pages: list[ColumnPage],
    *,
    title: str | None = None,
    running_head: str | None = None,
    tables: dict[int, list[tuple[float, list[str]]]] | None = None,
) -> Path:
    """Write a two-column paper: the hard case for reading order.

    Lines are drawn row by row across both columns (left line i, then right line
    i, at the same height), so the content stream interleaves the columns and a
    naive extraction would splice unrelated sentences together. Every page gets a
    centred page number at the bottom, and `running_head` (when given) at the top
    of every page but the first, as journals do. `tables` maps a 0-based page index
    to rows drawn as separate cells in the right column, below its text: each row
    is (height as a fraction of the page, [cell texts]).
    """
    metadata = {"Title": title} if title else {}
    with matplotlib.rc_context(_RC), PdfPages(path, metadata=metadata) as pdf:
        for number, page in enumerate(pages, start=1):
            fig = Figure(figsize=_LETTER)
            if running_head and number > 1:
                fig.text(0.07, 0.965, running_head, fontsize=7.5)
            y = 0.93
            for line in page.top:
                y -= _draw(fig, 0.07, y, line)
            top = y - (_LEADING if page.top else 0.0)
            heights = [top, top]
            for row in range(max(len(page.left), len(page.right))):
                for side, lines in enumerate((page.left, page.right)):
                    if row < len(lines):
                        after_heading = row > 0 and lines[row - 1].startswith("## ")
                        if lines[row].startswith("## ") and row > 0 and not after_heading:
                            heights[side] -= 0.6 * _LEADING  # space above a heading
                        heights[side] -= _draw(fig, _COLUMN_X[side], heights[side], lines[row])
            for height, cells in (tables or {}).get(number - 1, []):
                for i, cell in enumerate(cells):
                    fig.text(_COLUMN_X[1] + 0.13 * i, height, cell, fontsize=8)
            fig.text(0.5, 0.035, str(number), fontsize=8.5, ha="center")
            pdf.savefig(fig)
    return path


def _draw(fig: Figure, x: float, y: float, line: str) -> float:
    """Draw one line at (x, y); return how far down the next line starts. A heading over
    two lines is two "## " lines in a row: set closer, as one heading."""
    if line.startswith("# "):
        fig.text(x, y, line[2:], fontsize=15, fontweight="bold")
        return 2.2 * _LEADING
    if line.startswith("## "):
        fig.text(x, y, line[3:], fontsize=10, fontweight="bold")
        return 1.3 * _LEADING
    if line:
        fig.text(x, y, line, fontsize=8.5)
        return _LEADING
    return 0.6 * _LEADING  # a paragraph gap


@dataclass(frozen=True)
class Placed:
    """Text at a place on the page: x and y as fractions (y from the bottom), a size in
    points, bold or not. For pages whose reading order is the trap (a figure's legend
    above the title)."""

    x: float
    y: float
    text: str
    size: float = 9.0
    bold: bool = False


def make_placed_pdf(path: Path, pages: list[list[Placed]], *, title: str | None = None) -> Path:
    """Write a PDF whose text is placed item by item, in the order given."""
    metadata = {"Title": title} if title else {}
    with matplotlib.rc_context(_RC), PdfPages(path, metadata=metadata) as pdf:
        for items in pages:
            fig = Figure(figsize=_LETTER)
            for item in items:
                fig.text(
                    item.x,
                    item.y,
                    item.text,
                    fontsize=item.size,
                    fontweight="bold" if item.bold else "normal",
                )
            pdf.savefig(fig)
    return path
