"""Real PDFs for tests, made with matplotlib's PDF backend.

A checked-in binary fixture hides what it contains; these helpers say it in the
test. Text is placed with `fig.text`, one figure per page, with TrueType fonts
embedded (`pdf.fonttype` 42) and STIX as a fallback so that Unicode math-italic
letters (𝑑𝑐) come out as real glyphs; pypdf extracts each line intact.
No pyplot: figures are built directly, so no GUI backend or global state is touched.
"""

from __future__ import annotations

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
