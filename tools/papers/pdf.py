"""A PDF into a `Paper`: open it with PDFium, refuse what is no paper, lay out its text.

PDFium (pypdfium2, the PDF engine of Chromium) opens the file: a permission-only PDF
has an empty user password and opens for anyone, one that needs a password is
refused, and so is one PDFium cannot parse (damaged or truncated). Every page's text
comes as runs, one a PDF text object (a piece of text in one font, as the producer
drew it) with its baseline origin, size and font name, and `layout` puts the runs in
reading order and finds the structure. A PDF whose pages hold (almost) no text is a
scan and refused; a metadata title that is a file name or a tool's default is no title.

Why PDFium and not pypdf (measured in bench/paper_libs.py): it reads the DeepSeek-V3
report several times faster in one process, and it places the text of figures drawn
as form XObjects where they are on the page, so a chart's labels no longer land in
the middle of the abstract. PDFium is not thread-safe: one lock serialises its use.
"""

from __future__ import annotations

import ctypes
import re
import threading

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from reprodesk.schemas import Paper, UserError
from tools.papers.layout import PdfText, Run, drop_margins, layout, structure

MAX_PDF_PAGES = 600
_BOLD = re.compile(r"bold|black|heavy|semibold|demi|medi(?:um)?\b|-bd\b|cmbx|cmb\d|sfbx", re.I)
_LOCK = threading.Lock()  # PDFium keeps global state: one document at a time
_PASSWORD_ERROR = 4  # FPDF_ERR_PASSWORD
_HYPHENS = (2, 0xFFFE)  # PDFium's codes for a hyphen at a line's end (soft or not)
# FPDFText_GetTextObject answering a plain address (an int, None for no object): the
# per-character call is the hot loop, and a pointer object costs a cast to compare.
_TEXT_OBJECT = ctypes.cast(
    pdfium_c.FPDFText_GetTextObject,
    ctypes.CFUNCTYPE(ctypes.c_void_p, *pdfium_c.FPDFText_GetTextObject.argtypes),
)


def pdf_paper(data: bytes, source: str, label: str, digest: str) -> Paper:
    with _LOCK:
        found, title = _read(data, label)
    pages = found.pages
    # A scan may still carry a stamp or page numbers: judge the text per page, not in total.
    if sum(len("".join(p.split())) for p in pages) < max(16, 10 * len(pages)):
        raise UserError(f"cannot read {label!r}: the PDF has no text layer (scanned?)")
    return Paper(
        source=source,
        kind="pdf",
        title=_plausible_title(title) or found.title,
        pages=pages,
        sha256=digest,
        authors=found.authors,
        abstract=found.abstract,
        sections=found.sections,
        references=found.references,
        tables=found.tables,
    )


def _read(data: bytes, label: str) -> tuple[PdfText, str]:
    """The laid-out text and the metadata title; UserError for what cannot be read."""
    try:
        doc = pdfium.PdfDocument(data)  # an empty password is tried by PDFium itself
    except pdfium.PdfiumError as exc:
        if exc.err_code == _PASSWORD_ERROR:
            raise UserError(f"cannot read {label!r}: the PDF is encrypted") from exc
        reason = f"the PDF is damaged or truncated ({exc})"
        raise UserError(f"cannot read {label!r}: {reason}") from exc
    try:
        if len(doc) > MAX_PDF_PAGES:
            reason = f"the PDF has {len(doc)} pages, more than {MAX_PDF_PAGES}"
            raise UserError(f"cannot read {label!r}: {reason}")
        if len(doc) == 0:
            raise UserError(f"cannot read {label!r}: the PDF is damaged or truncated (no pages)")
        try:
            raw = [page_runs(doc[i]) for i in range(len(doc))]
            title = doc.get_metadata_value("Title")
        except pdfium.PdfiumError as exc:
            reason = f"the PDF is damaged or truncated ({exc})"
            raise UserError(f"cannot read {label!r}: {reason}") from exc
    finally:
        doc.close()
    kept = drop_margins(raw)
    pages = [layout(runs, box) for runs, (_, box) in zip(kept, raw, strict=True)]
    return structure(pages), title


def _plausible_title(title: str) -> str:
    """PDF metadata titles are often a file name or a tool's default: those are no title."""
    title = " ".join(title.split())
    if len(title) < 4 or re.search(
        r"\.(?:dvi|tex|docx?|pdf)$|^untitled|^microsoft word", title, re.I
    ):
        return ""
    return title


def page_runs(page: pdfium.PdfPage) -> tuple[list[Run], tuple[float, float, float, float]]:
    """Text runs of a page with their positions, and the page box (x0, y0, w, h).

    A run is a text object's characters on one baseline; rotated, mirrored or skewed
    text (margin stamps, axis labels) is dropped. PDFium's generated characters (the
    spaces and line ends it infers between objects) belong to no object: a space ends
    the run before it with a space, which is how `layout` knows the words were apart.
    """
    textpage = page.get_textpage()
    try:
        raw = textpage.raw
        count = pdfium_c.FPDFText_CountChars(raw)
        buffer = (ctypes.c_ushort * (count + 1))()  # UTF-16 code units and a final NUL
        got = pdfium_c.FPDFText_GetText(raw, 0, count, buffer)
        codes = list(buffer[: max(0, got - 1)])  # char i is code unit i (pairs for astral)
        runs = _runs(raw, codes)
    finally:
        textpage.close()
    x0, y0, x1, y1 = page.get_mediabox()
    return runs, (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def _runs(raw: object, codes: list[int]) -> list[Run]:
    runs: list[Run] = []
    x, y = ctypes.c_double(), ctypes.c_double()
    matrix = pdfium_c.FS_MATRIX()
    name = ctypes.create_string_buffer(256)
    flags = ctypes.c_int()
    run: Run | None = None
    text: list[str] = []
    owner: int | None = None  # the text object the current run comes from
    last = -1  # the run's last visible character, whose box ends the run
    high = 0  # a UTF-16 high surrogate waiting for its low half
    left, right, bottom, top = (ctypes.c_double() for _ in range(4))

    def close() -> None:
        if run is not None and "".join(text).strip():
            run.text = "".join(text)
            if pdfium_c.FPDFText_GetCharBox(raw, last, left, right, bottom, top):
                run.right = right.value
            runs.append(run)

    for i, code in enumerate(codes):
        if 0xD800 <= code < 0xDC00:
            high = code
            continue
        if 0xDC00 <= code < 0xE000 and high:
            char, high = chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)), 0
        else:
            char = "-" if code in _HYPHENS else chr(code) if code else ""
        address = _TEXT_OBJECT(raw, i)
        if address is None:  # generated by PDFium
            if char == " " and run is not None:
                text.append(" ")
            continue
        pdfium_c.FPDFText_GetCharOrigin(raw, i, x, y)
        if address != owner or run is None or abs(y.value - run.y) > 0.4 * run.size:
            close()
            owner, text, run = address, [], None
            pdfium_c.FPDFText_GetMatrix(raw, i, matrix)
            a, b, c, d = matrix.a, matrix.b, matrix.c, matrix.d
            if a <= 0 or d <= 0 or abs(b) > 0.05 * a or abs(c) > 0.05 * d:
                continue  # rotated, mirrored or skewed
            size = float(pdfium_c.FPDFText_GetFontSize(raw, i)) or 10.0
            pdfium_c.FPDFText_GetFontInfo(raw, i, name, len(name), flags)
            bold = bool(_BOLD.search(name.value.decode("latin-1")))
            run = Run(x.value, y.value, size, bold, "")
        if run is not None and char not in ("\r", "\n", ""):
            text.append(char)
            last = i if not char.isspace() else last
    close()
    return runs
