"""A LaTeX paper into a `Paper`: the main file, its inputs, its macros, its structure.

TeX to text is a reader's approximation, not TeX: the main file (the one with
\\documentclass) gets its \\input/\\include files inlined (bounded depth, paths
inside the archive only), comments go, simple user macros (\\newcommand, \\def) are
expanded, sections are kept with their numbers (letters after \\appendix), and the
title, authors, abstract and bibliography are read apart. The text inside each
section is `texconvert`'s job; the brace and environment scanning is `texsyntax`'s.

There are no pages before typesetting: a `TexDocument`'s sections are numbered
1, 2, ... (front matter first) and that index is what a LaTeX paper's quotes
carry as their "page" (`Paper.page_unit == "section"`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from reprodesk.schemas import Paper, Quote, Section, UserError
from tools.papers.archive import MB, ArchiveLimits
from tools.papers.texconvert import Converter, tidy
from tools.papers.texsyntax import braced, find_environment, skip_optional

_MAIN_NAMES = ("main", "ms", "paper", "arxiv", "root", "article", "manuscript")


def strip_comments(tex: str) -> str:
    """Drop `%` comments (not `\\%`); like TeX, a comment also eats the line end and the
    next line's indentation, so "compres%\\n  sion" reads "compression"."""
    out: list[str] = []
    lines = tex.split("\n")
    joined = False
    for line in lines:
        if joined:
            line = line.lstrip()
        joined = False
        for m in re.finditer(r"%", line):
            slashes = len(line[: m.start()]) - len(line[: m.start()].rstrip("\\"))
            if slashes % 2 == 0:
                line, joined = line[: m.start()], True
                break
        out.append(line + ("" if joined else "\n"))
    text = "".join(out)
    if not tex.endswith("\n") and text.endswith("\n"):
        text = text[:-1]
    text = re.sub(r"\\iffalse\b.*?\\fi\b", "", text, flags=re.DOTALL)
    return re.sub(r"\\begin\{comment\}.*?\\end\{comment\}", "", text, flags=re.DOTALL)


def main_file(files: dict[str, str], label: str) -> str:
    """The root document: has \\documentclass, best with \\begin{document} and a usual name."""

    def rank(name: str) -> tuple[bool, bool, bool, int]:
        text = files[name]
        stem = posixpath.splitext(posixpath.basename(name))[0].lower()
        return (
            "\\begin{document}" in text,
            stem in _MAIN_NAMES,
            "/" not in name,
            len(text),
        )

    candidates = [
        n
        for n, t in files.items()
        if n.lower().endswith((".tex", ".ltx")) and re.search(r"\\document(?:class|style)\b", t)
    ]
    if not candidates:
        reason = "no main LaTeX file (none has \\documentclass)"
        raise UserError(f"cannot read {label!r}: {reason}")
    return max(candidates, key=rank)


def inline_inputs(files: dict[str, str], main: str, limits: ArchiveLimits | None = None) -> str:
    """The main file with \\input, \\include, \\subfile and \\import inlined.

    Paths resolve from the archive's root (as LaTeX does from the main file's folder)
    and must stay inside it; a missing file or one past `max_depth` is left out.
    """
    limits = limits or ArchiveLimits()
    root = posixpath.dirname(main)
    total = 0
    pattern = re.compile(
        r"\\(?:input|include|subfile)\s*\{([^{}]+)\}|\\(?:sub)?import\s*\{([^{}]*)\}\s*\{([^{}]+)\}"
        r"|\\input\s+([^\s{}\\]+)"
    )

    def find(path: str, base: str) -> str | None:
        path = path.strip().strip('"')
        if path.startswith("/") or "\0" in path:
            return None
        joined = posixpath.normpath(posixpath.join(base, path))
        if joined == ".." or joined.startswith("../"):
            return None
        for candidate in (joined, joined + ".tex"):
            if candidate in files:
                return candidate
        return None

    def expand(name: str, depth: int) -> str:
        nonlocal total
        text = files[name]
        total += len(text)
        if total > limits.max_text_bytes:
            raise UserError(f"the inlined LaTeX is larger than {limits.max_text_bytes / MB:g} MB")

        def replace(m: re.Match[str]) -> str:
            if depth >= limits.max_depth:
                return ""
            if m.group(1) is not None:
                target = find(m.group(1), root)
            elif m.group(3) is not None:
                target = find(posixpath.join(m.group(2), m.group(3)), root)
            else:
                target = find(m.group(4), root)
            return "\n" + expand(target, depth + 1) + "\n" if target else ""

        return pattern.sub(replace, text)

    return expand(main, 0)


def source_text(
    unpacked: bytes | dict[str, bytes], label: str, limits: ArchiveLimits | None = None
) -> tuple[str, str]:
    """(the whole document as one TeX string, the bibliography .bbl text or '')."""
    if isinstance(unpacked, bytes):
        return _decode(unpacked), ""
    files = {name: strip_comments(_decode(data)) for name, data in unpacked.items()}
    main = main_file(files, label)
    try:
        tex = inline_inputs(files, main, limits)
    except UserError as exc:
        raise UserError(f"cannot read {label!r}: {exc}") from exc
    stem = posixpath.splitext(main)[0]
    bbls = sorted(n for n in files if n.lower().endswith(".bbl"))
    bbl = files.get(stem + ".bbl") or (files[bbls[0]] if bbls else "")
    return tex, bbl


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # old sources: every byte is some character


@dataclass
class TexDocument:
    """A LaTeX paper as text. Section i (1-based) is `sections[i - 1]`."""

    title: str = ""
    authors: list[str] = field(default_factory=list)
    abstract: str = ""
    sections: list[Section] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    tables: list[Section] = field(default_factory=list)
    equations: list[Quote] = field(default_factory=list)


_SECTIONING = re.compile(r"\\(part|chapter|section|subsection|subsubsection)(\*?)\s*(?=[\[{])")
_LEVEL = {"part": 1, "chapter": 1, "section": 1, "subsection": 2, "subsubsection": 3}


_MAX_MACRO_PASSES = 6


def _macros(tex: str) -> tuple[str, dict[str, tuple[int, str]]]:
    """Remove \\newcommand / \\renewcommand / \\providecommand / \\def definitions and
    return them as name -> (number of arguments, body)."""
    macros: dict[str, tuple[int, str]] = {}
    out: list[str] = []
    pos = 0
    pattern = re.compile(
        r"\\(?:(?:re)?newcommand|providecommand|DeclareRobustCommand)\*?\s*(?:\{\s*\\([A-Za-z@]+)\s*\}|\\([A-Za-z@]+))"
        r"|\\(?:g|e|x)?def\s*\\([A-Za-z@]+)(#[0-9#]*)?"
        r"|\\DeclareMathOperator\*?\s*\{\s*\\([A-Za-z@]+)\s*\}"
    )
    while m := pattern.search(tex, pos):
        out.append(tex[pos : m.start()])
        name = m.group(1) or m.group(2) or m.group(3) or m.group(5)
        i = m.end()
        nargs = 0
        if m.group(1) or m.group(2):
            if arg := braced(tex, i, "[", "]"):
                nargs = int(arg[0]) if arg[0].strip().isdigit() else 0
                i = arg[1]
                i = skip_optional(tex, i)  # a default for the first argument
        elif m.group(4):
            nargs = m.group(4).count("#")
        body = braced(tex, i)
        if body is None:
            pos = m.end()
            continue
        macros[name] = (nargs, body[0])
        pos = body[1]
    out.append(tex[pos:])
    return "".join(out), macros


def _expand_macros(tex: str, macros: dict[str, tuple[int, str]], cap: int) -> str:
    if not macros:
        return tex
    pattern = re.compile(
        r"\\("
        + "|".join(re.escape(n) for n in sorted(macros, key=len, reverse=True))
        + r")(?![A-Za-z@])"
    )
    for _ in range(_MAX_MACRO_PASSES):
        out: list[str] = []
        pos = 0
        changed = False
        while m := pattern.search(tex, pos):
            nargs, body = macros[m.group(1)]
            i = m.end()
            args: list[str] = []
            for _n in range(nargs):
                group = braced(tex, i)
                if group is None:
                    break
                args.append(group[0])
                i = group[1]
            for k, arg in enumerate(args, start=1):
                body = body.replace(f"#{k}", arg)
            if nargs == 0 and i < len(tex) and tex[i] == " ":
                body += " "  # \name swallows the space after it; keep words apart
            out += [tex[pos : m.start()], body]
            pos = i
            changed = True
        out.append(tex[pos:])
        tex = "".join(out)
        if len(tex) > cap:
            raise UserError(f"macros expand to more than {cap / MB:g} MB")
        if not changed:
            break
    return tex


def _command_args(tex: str, name: str) -> list[str]:
    """The {} argument of every \\name[..]{..} in `tex`."""
    found: list[str] = []
    for m in re.finditer(r"\\" + name + r"\*?(?![A-Za-z])", tex):
        group = braced(tex, skip_optional(tex, m.end()))
        if group:
            found.append(group[0])
    return found


def _authors(tex: str) -> list[str]:
    names: list[str] = []
    for raw in _command_args(tex, "author"):
        for part in re.split(r"\\(?:and|And|AND)\b|\\\\\s*\\\\|,\s*\\\\", raw):
            first = re.split(r"\\\\|\\newline|\n\s*\n", part.strip())[0]
            first = re.sub(
                r"\$[^$]*\$|\\textsuperscript\s*\{[^{}]*\}|\\(?:inst|footnotemark)\s*(?:\{[^{}]*\}|\[[^\]]*\])?",
                "",
                first,
            )
            text = tidy(Converter().text(first)).replace("\n", " ")
            text = re.sub(r"[\d*†‡§¶∗⋆]+", " ", text)
            for name in re.split(r",|\band\b|;", text):
                name = " ".join(name.split())
                if name and "@" not in name and len(name) < 60 and re.search(r"[A-Za-z]", name):
                    names.append(name)
    return names


def _bibliography(tex: str) -> list[str]:
    span = find_environment(tex, "thebibliography")
    if span is None:
        return []
    body = tex[span[1] : span[2]]
    body = re.sub(r"^\s*\{[^{}]*\}", "", body)
    entries: list[str] = []
    converter = Converter()
    for chunk in re.split(r"\\bibitem\b", body)[1:]:
        j = skip_optional(chunk, 0)
        group = braced(chunk, j)
        rest = chunk[group[1] :] if group else chunk[j:]
        rest = rest.replace("\\newblock", " ")
        text = " ".join(tidy(converter.text(rest)).split())
        if text:
            entries.append(text)
    return entries


def parse_tex(tex: str, bbl: str = "", limits: ArchiveLimits | None = None) -> TexDocument:
    """A whole LaTeX document (inputs already inlined) as text with its structure."""
    limits = limits or ArchiveLimits()
    tex = strip_comments(tex)
    tex, macros = _macros(tex)
    tex = _expand_macros(tex, macros, limits.max_text_bytes)
    doc = TexDocument()
    converter = Converter()
    titles = _command_args(tex, "title")
    if titles:
        title = re.sub(r"\\(?:thanks|footnote)\s*\{(?:[^{}]|\{[^{}]*\})*\}", "", titles[0])
        doc.title = " ".join(tidy(converter.text(title)).split())
    doc.authors = _authors(tex)
    begin = re.search(r"\\begin\s*\{document\}", tex)
    end = re.search(r"\\end\s*\{document\}", tex)
    body = tex[begin.end() if begin else 0 : end.start() if end else len(tex)]
    if span := find_environment(body, "abstract"):
        doc.abstract = " ".join(
            tidy(converter.text(converter.blocks(body[span[1] : span[2]]))).split()
        )
        body = body[: span[0]] + body[span[3] :]
    doc.references = _bibliography(body) or _bibliography(bbl)
    front = re.sub(
        r"\\title\s*(?:\[[^\]]*\])?\s*\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}", "", body
    )
    heads = list(_SECTIONING.finditer(front))
    preamble = front[: heads[0].start()] if heads else front
    numbers = [0, 0, 0]
    appendix = False
    front_text = converter.section(
        re.sub(r"\\(?:author|date)\s*\{(?:[^{}]|\{[^{}]*\})*\}", "", preamble), 1
    )
    lead = "\n".join(x for x in (doc.title, ", ".join(doc.authors), front_text) if x)
    if lead:
        doc.sections.append(Section(heading="", level=1, page=1, text=lead))
    if doc.abstract:
        index = len(doc.sections) + 1
        doc.sections.append(Section(heading="Abstract", level=1, page=index, text=doc.abstract))
    for k, head in enumerate(heads):
        kind, starred = head.group(1), bool(head.group(2))
        j = skip_optional(front, head.end())
        group = braced(front, j)
        title_tex, start = (group[0], group[1]) if group else ("", j)
        stop = heads[k + 1].start() if k + 1 < len(heads) else len(front)
        chunk = front[start:stop]
        if "\\appendix" in chunk:
            before, _, after = chunk.partition("\\appendix")
            chunk = before
            flip = True
        else:
            flip, after = False, ""
        level = _LEVEL[kind]
        heading = " ".join(tidy(converter.text(title_tex)).split())
        if not starred:
            numbers[level - 1] += 1
            for deeper in range(level, 3):
                numbers[deeper] = 0
            first = chr(ord("A") + numbers[0] - 1) if appendix else str(numbers[0])
            label = ".".join([first, *map(str, numbers[1:level])])
            heading = f"{label} {heading}".strip()
        index = len(doc.sections) + 1
        doc.sections.append(
            Section(heading=heading, level=level, page=index, text=converter.section(chunk, index))
        )
        if flip:
            appendix, numbers = True, [0, 0, 0]
            if after.strip():
                doc.sections[-1].text += "\n\n" + converter.section(after, index)
    doc.tables = converter.tables
    doc.equations = converter.equations
    return doc


def tex_paper(tex: str, bbl: str, source: str, digest: str) -> Paper:
    doc = parse_tex(tex, bbl)
    pages = ["\n\n".join(x for x in (s.heading, s.text) if x) for s in doc.sections]
    return Paper(
        source=source,
        kind="tex",
        title=doc.title,
        pages=pages,
        sha256=digest,
        page_unit="section",
        authors=doc.authors,
        abstract=doc.abstract,
        sections=doc.sections,
        references=doc.references,
        tables=doc.tables,
        equations=doc.equations,
    )
