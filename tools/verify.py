"""The verifier: re-read a write-up and list everything in it that cannot be trusted.

Three checks, each quoting the offending text:

- numbers: every number a reader sees (outside code, link targets and page references,
  as `tools.evidence.numbers_in` counts them) must be in the evidence, and as often
  as it is printed: the Writer registers a number each time it prints one, so a
  number pasted in by hand next to an honest copy of it is caught too;
- figures: every image the text embeds exists under the run folder, is non-empty and
  is a valid PNG (signature, chunk checksums, a non-zero size);
- shareability: no secret, account or card number, contact data or internal host
  (`tools.shareable`).

`verify_run` checks a published run folder (writeup.md, evidence.json, figures/, and
writeup.zh.md when there is one: it must carry exactly the English numbers). The
publish step runs `verify_markdown` before it writes anything and refuses a write-up
that does not verify, including one edited by hand at the publish gate.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reprodesk.schemas import EvidenceItem
from tools.evidence import numbers_in
from tools.shareable import leaks

_FENCED = re.compile(r"```.*?```", re.DOTALL)
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Problem:
    kind: str  # "number", "figure", "shareability", "translation"
    message: str
    text: str = ""  # the offending text, quoted

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" + (f' — "{self.text}"' if self.text else "")


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    numbers: int = 0  # numbers checked
    figures: int = 0  # figures checked

    @property
    def ok(self) -> bool:
        return not self.problems


def _lines_outside_code(markdown: str) -> list[str]:
    """The Markdown's lines, fenced code blanked (line numbers kept)."""
    return _FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), markdown).splitlines()


def _shorten(line: str, number: str, width: int = 160) -> str:
    line = " ".join(line.split())
    if len(line) <= width:
        return line
    at = max(0, line.find(number) - width // 2)
    return ("…" if at else "") + line[at : at + width] + "…"


def check_numbers(markdown: str, evidence: list[EvidenceItem]) -> tuple[list[Problem], int]:
    """Each number printed more often than the evidence has it, with the lines it is on."""
    allowed = Counter(item.display for item in evidence)
    where: dict[str, list[str]] = {}
    for line in _lines_outside_code(markdown):
        for number in numbers_in(line):
            where.setdefault(number, []).append(line)
    problems: list[Problem] = []
    total = 0
    for number, lines in where.items():
        total += len(lines)
        extra = len(lines) - allowed[number]
        if extra <= 0:
            continue
        if allowed[number] == 0:
            message = f"{number} has no evidence"
            shown = lines
        else:
            message = (
                f"{number} is printed {len(lines)} times, the evidence has it "
                f"{allowed[number]} time(s)"
            )
            shown = lines[-extra:]  # the Writer prints in order: the extra copies come last
        for line in dict.fromkeys(shown):
            problems.append(Problem("number", message, _shorten(line, number)))
    return problems, total


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a valid PNG, or None: signature, every chunk's CRC, IEND."""
    if not data.startswith(_PNG):
        return None
    pos, size, ended = len(_PNG), None, False
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            return None
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            return None
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        if kind == b"IEND":
            ended = True
            break
        pos += 12 + length
    if not ended or size is None or 0 in size:
        return None
    return size[0], size[1]


def check_figures(markdown: str, folder: Path) -> tuple[list[Problem], int]:
    """Every embedded image exists under `folder`, is non-empty and a valid PNG."""
    problems: list[Problem] = []
    targets = list(dict.fromkeys(_IMAGE.findall(markdown)))
    for target in targets:
        path = (folder / target).resolve()
        if folder.resolve() not in path.parents:
            problems.append(Problem("figure", "points outside the run folder", target))
        elif not path.is_file():
            problems.append(Problem("figure", "file is missing", target))
        elif path.stat().st_size == 0:
            problems.append(Problem("figure", "file is empty", target))
        elif png_size(path.read_bytes()) is None:
            problems.append(Problem("figure", "not a valid PNG", target))
    return problems, len(targets)


def check_shareable(markdown: str) -> list[Problem]:
    return [
        Problem("shareability", f"contains {leak.what}; remove it before sharing", leak.text)
        for leak in leaks(markdown)
    ]


def verify_markdown(
    markdown: str, evidence: list[EvidenceItem], folder: Path | None = None
) -> Report:
    """All checks on one write-up; figures only when the run folder is given."""
    number_problems, n = check_numbers(markdown, evidence)
    report = Report(problems=number_problems, numbers=n)
    if folder is not None:
        figure_problems, report.figures = check_figures(markdown, folder)
        report.problems += figure_problems
    report.problems += check_shareable(markdown)
    return report


def same_numbers(english: str, other: str) -> list[Problem]:
    """A translation must print exactly the English numbers, each as often."""
    a = Counter(n for line in _lines_outside_code(english) for n in numbers_in(line))
    b = Counter(n for line in _lines_outside_code(other) for n in numbers_in(line))
    problems = []
    for number in sorted(set(a) | set(b)):
        if a[number] != b[number]:
            problems.append(
                Problem(
                    "translation",
                    f"{number} appears {b[number]} time(s) in the translation, "
                    f"{a[number]} in English",
                    number,
                )
            )
    return problems


def load_evidence(folder: Path) -> list[EvidenceItem]:
    data = json.loads((folder / "evidence.json").read_text(encoding="utf-8"))
    return [EvidenceItem.model_validate(item) for item in data.get("numbers", [])]


def verify_run(folder: Path) -> Report:
    """Verify a published run folder: its write-up(s) against its evidence and figures."""
    report = Report()
    writeup = folder / "writeup.md"
    if not writeup.is_file():
        report.problems.append(Problem("figure", "no writeup.md in the run folder", str(folder)))
        return report
    if not (folder / "evidence.json").is_file():
        report.problems.append(Problem("number", "no evidence.json: nothing is traceable"))
        return report
    markdown = writeup.read_text(encoding="utf-8")
    report = verify_markdown(markdown, load_evidence(folder), folder)
    for other in sorted(folder.glob("writeup.*.md")):
        translated = other.read_text(encoding="utf-8")
        for p in same_numbers(markdown, translated):
            report.problems.append(Problem(p.kind, f"{other.name}: {p.message}", p.text))
        figure_problems, _ = check_figures(translated, folder)
        report.problems += figure_problems
        report.problems += check_shareable(translated)
    return report
