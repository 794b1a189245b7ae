"""A PDF into a `Paper`: open it with pypdf, refuse what is no paper, lay out its text.

pypdf opens the file (a permission-only PDF has an empty user password and opens for
anyone; a locked or AES-without-`cryptography` one is refused), every page's text
runs come with their position and font (`visitor_text`), and `layout` puts them in
reading order and finds the structure. A PDF whose pages hold (almost) no text is a
scan and refused; a metadata title that is a file name or a tool's default is no title.

Long PDFs are read by one worker process per core (pypdf's content-stream interpreter
is pure Python and takes nearly all the time); the layout is the same either way.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from pypdf import PdfReader
from pypdf.errors import DependencyError

from reprodesk.schemas import Paper, UserError
from tools.papers.layout import PdfText, Run, drop_margins, layout, structure

MAX_PDF_PAGES = 600
_BOLD = re.compile(r"bold|black|heavy|semibold|demi|medi(?:um)?\b|-bd\b|cmbx|cmb\d|sfbx", re.I)


def pdf_paper(data: bytes, source: str, label: str, digest: str) -> Paper:
    try:
        reader = PdfReader(io.BytesIO(data))
        # Permission-only PDFs have an empty user password and open for anyone.
        locked = reader.is_encrypted and not reader.decrypt("")
        if not locked and len(reader.pages) > MAX_PDF_PAGES:
            reason = f"the PDF has {len(reader.pages)} pages, more than {MAX_PDF_PAGES}"
            raise UserError(f"cannot read {label!r}: {reason}")
        found = None if locked else read_pdf(reader, data)
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


def page_runs(page: Any) -> tuple[list[Run], tuple[float, float, float, float]]:
    """Text runs of a pypdf page with their positions, and the page box (x0, y0, w, h)."""
    runs: list[Run] = []

    def visit(text: str, cm: list[float], tm: list[float], font: Any, size: float) -> None:
        if not text or text.isspace():
            return
        a = tm[0] * cm[0] + tm[1] * cm[2]
        b = tm[0] * cm[1] + tm[1] * cm[3]
        c = tm[2] * cm[0] + tm[3] * cm[2]
        d = tm[2] * cm[1] + tm[3] * cm[3]
        if a <= 0 or d <= 0 or abs(b) > 0.05 * a or abs(c) > 0.05 * d:
            return  # rotated, mirrored or skewed: margin stamps, axis labels
        x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        name = str(font.get("/BaseFont", "")) if isinstance(font, dict) else ""
        parts = [p for p in text.split("\n") if p.strip()]
        height = float(size) * math.hypot(c, d) or 10.0
        for i, part in enumerate(parts):
            runs.append(Run(x, y - 1.2 * height * i, height, bool(_BOLD.search(name)), part))

    page.extract_text(visitor_text=visit)
    box = page.mediabox
    return runs, (float(box.left), float(box.bottom), float(box.width), float(box.height))


def read_pdf(reader: Any, data: bytes | None = None) -> PdfText:
    """Lay out every page of an open `PdfReader` and find its structure.

    With the PDF's bytes and a long document, pages are read in worker processes (pypdf's
    interpreter is pure Python: one core reads ~25 pages/s); any trouble there and the
    pages are read here instead.
    """
    raw = _parallel_runs(data, len(reader.pages)) if data is not None else None
    if raw is None:
        raw = [page_runs(page) for page in reader.pages]
    kept = drop_margins(raw)
    pages = [layout(runs, box) for runs, (_, box) in zip(kept, raw, strict=True)]
    return structure(pages)


PARALLEL_MIN_PAGES = 16  # fewer pages are read in this process; a huge value: never in parallel


def _parallel_runs(
    data: bytes, count: int
) -> list[tuple[list[Run], tuple[float, float, float, float]]] | None:
    """Runs of every page from worker processes, or None where that is not worth it or
    not safe: few pages or cores, no fork, or threads in this process (a forked child
    of a threaded process may inherit a held lock)."""
    workers = min(os.cpu_count() or 1, 4)
    if (
        count < PARALLEL_MIN_PAGES
        or workers < 2
        or "fork" not in multiprocessing.get_all_start_methods()
        or threading.active_count() > 1
    ):
        return None
    step = math.ceil(count / workers)
    chunks = [(data, range(i, min(i + step, count))) for i in range(0, count, step)]
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=len(chunks), mp_context=context) as pool:
            parts = list(pool.map(_runs_of, chunks))
    except Exception:  # a broken pool, a pickling problem: read the pages here
        return None
    return [page for part in parts for page in part]


def _runs_of(
    job: tuple[bytes, range],
) -> list[tuple[list[Run], tuple[float, float, float, float]]]:
    """In a worker: the runs of some pages of the PDF in `job`."""
    data, indices = job
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        reader.decrypt("")  # the caller opened it, so the empty password works
    return [page_runs(reader.pages[i]) for i in indices]
