"""Number tracing: every number a write-up prints must be in its evidence.

The Writer registers each number as it prints it (`EvidenceBook`), and the
verifier re-reads the finished Markdown and lists every number it cannot trace.
Code (fenced or inline) holds commands and identifiers, not claims, and page
references (p.3) are citations: both are skipped. Everything else counts,
including numbers quoted from the paper — those are registered as paper values.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from reprodesk.schemas import EvidenceItem, Quote

NUMBER = re.compile(r"(?<![\w.^])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?%?")
_FENCED = re.compile(r"```.*?```", re.DOTALL)
_INLINE = re.compile(r"`[^`\n]*`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_PAGE_REF = re.compile(r"\b(?:pp?|s)\.\s?\d+(?:[-–]\d+)?")  # p.3, pp.3-4, s.2 (TeX section)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def fmt(value: float) -> str:
    """One way to print a number, so that the verifier can match it exactly."""
    if value == 0:
        return "0"
    if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def numbers_in(text: str) -> list[str]:
    """The numbers a reader sees, outside code, link targets and page references."""
    for pattern in (_FENCED, _COMMENT, _INLINE, _LINK_TARGET, _PAGE_REF):
        text = pattern.sub(" ", text)
    return [m.group(0).lstrip("+") for m in NUMBER.finditer(text)]


def untraceable(markdown: str, evidence: list[EvidenceItem]) -> list[str]:
    allowed = {item.display for item in evidence}
    return sorted({n for n in numbers_in(markdown) if n not in allowed})


Kind = Literal["measured", "paper", "config", "derived", "environment", "catalog"]


class EvidenceBook:
    """Collects evidence while the Writer formats numbers; ids are unique."""

    def __init__(self) -> None:
        self.items: list[EvidenceItem] = []
        self._ids: set[str] = set()

    def _add(
        self, id: str, value: float, unit: str, kind: Kind, source: dict[str, Any], display: str
    ) -> str:
        base, n = id, 1
        while id in self._ids:
            n += 1
            id = f"{base}#{n}"
        self._ids.add(id)
        self.items.append(
            EvidenceItem(id=id, display=display, value=value, unit=unit, kind=kind, source=source)
        )
        return display

    def measured(
        self, id: str, value: float, unit: str, *, job: str, metric: str, percent: bool = False
    ) -> str:
        display = fmt(100 * value) + "%" if percent else fmt(value)
        source = {"job": job, "metric": metric, "artifact": f"results/{job}/metrics.json"}
        return self._add(id, value, unit, "measured", source, display)

    def paper(self, id: str, value: float, unit: str, quote: Quote, display: str = "") -> str:
        source = {"page": quote.page, "quote": quote.text}
        return self._add(id, value, unit, "paper", source, display or fmt(value))

    def paper_quote(self, id: str, quote: Quote) -> str:
        """Register every number inside a quote that the write-up prints verbatim."""
        for i, number in enumerate(numbers_in(quote.text)):
            value = float(number.rstrip("%"))
            self.paper(f"{id}.n{i}", value, "%" if number.endswith("%") else "", quote, number)
        return quote.text

    def text_numbers(self, id: str, text: str, *, job: str, catalog: bool = False) -> str:
        """Numbers inside prose the write-up prints verbatim.

        A recipe's claim wording (printed by a job: kind measured, with the job) or the
        catalog's curated text (gotchas, labels, finance angle: kind catalog).
        """
        for i, number in enumerate(numbers_in(text)):
            value = float(number.rstrip("%"))
            if catalog:
                self._add(f"{id}.n{i}", value, "", "catalog", {"text": text}, number)
            else:
                self._add(f"{id}.n{i}", value, "", "measured", {"job": job, "text": text}, number)
        return text

    def config(self, id: str, value: float, unit: str = "", *, where: str) -> str:
        return self._add(id, value, unit, "config", {"where": where}, fmt(value))

    def derived(
        self, id: str, value: float, unit: str, *, formula: str, percent: bool = False
    ) -> str:
        display = fmt(100 * value) + "%" if percent else fmt(value)
        return self._add(id, value, unit, "derived", {"formula": formula}, display)

    def environment(self, id: str, value: float, *, what: str) -> str:
        return self._add(id, value, "", "environment", {"what": what}, fmt(value))
