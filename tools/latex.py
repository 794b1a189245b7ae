"""LaTeX sources into text: safe unpacking of a source archive, then TeX to plain text.

Unpacking happens in memory, never on disk: a tarball (gzip or plain) is streamed
member by member, and only the text files a paper needs (.tex, .ltx, .bbl) are
kept. The archive is refused as a whole, with one UserError, when a member's path
is absolute or climbs out with `..`, when a link points outside the archive, when
a member is a device, or when it unpacks to more bytes or members than the limits
allow (a decompression bomb is stopped while it inflates, not after).

TeX to text is a reader's approximation, not TeX: the main file (the one with
\\documentclass) gets its \\input/\\include files inlined (bounded depth, paths
inside the archive only), comments go, simple user macros (\\newcommand, \\def
without parameters) are expanded, sections are kept with their numbers (letters
after \\appendix), formatting commands give way to their text, citations become
[key], cross-references "?", and math stays as its LaTeX source with a few
symbols spelled in Unicode (×, ≤, Greek letters), which is what the digest's
patterns read. Display math is also collected apart, tables become rows of cells.

There are no pages before typesetting: a `TexDocument`'s sections are numbered
1, 2, ... (front matter first) and that index is what a LaTeX paper's quotes
carry as their "page" (`Paper.page_unit == "section"`).
"""

from __future__ import annotations

import gzip
import io
import posixpath
import re
import tarfile
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from reprodesk.schemas import Quote, Section, UserError

MB = 1024 * 1024
_TEXT_SUFFIXES = (".tex", ".ltx", ".bbl")
_SINGLE_FILE_CAP = 64 * MB  # a gzipped single file (a .tex or a PDF) is held whole
_MAIN_NAMES = ("main", "ms", "paper", "arxiv", "root", "article", "manuscript")


# --------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what an archive may unpack to; fields so that tests can shrink them."""

    max_unpacked_bytes: int = 512 * MB  # the whole decompressed stream, figures included
    max_members: int = 5000
    max_text_bytes: int = 16 * MB  # one .tex/.bbl file, and all inlined text together
    max_depth: int = 8  # nested \input


class _TooBig(Exception):
    pass


class _Capped(io.RawIOBase):
    """A read-only stream that counts what passes through and stops past a cap."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile, cap: int) -> None:
        self.inner, self.cap, self.count = inner, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.cap:
            raise _TooBig
        buffer[: len(data)] = data
        return len(data)


def is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def unpack(
    data: bytes, label: str, limits: ArchiveLimits | None = None
) -> bytes | dict[str, bytes]:
    """A gzip file's content, or a tarball's text files by path; refuses unsafe archives."""
    limits = limits or ArchiveLimits()
    cap = limits.max_unpacked_bytes
    try:
        stream: IO[bytes] | gzip.GzipFile
        if data[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                head = gz.read(512)
            if not is_tar(head):  # one compressed file: held whole, so a tighter cap
                cap = min(cap, _SINGLE_FILE_CAP)
                with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                    return io.BufferedReader(_Capped(gz, cap)).read()
            stream = gzip.GzipFile(fileobj=io.BytesIO(data))
        else:
            stream = io.BytesIO(data)
        return _read_tar(io.BufferedReader(_Capped(stream, cap)), label, limits)
    except _TooBig as exc:
        reason = f"it unpacks to more than {cap / MB:g} MB (a decompression bomb?)"
        raise UserError(f"cannot read {label!r}: {reason}") from exc
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        reason = f"the archive is damaged or truncated ({type(exc).__name__}: {exc})"
        raise UserError(f"cannot read {label!r}: {reason}") from exc


def _read_tar(stream: BinaryIO, label: str, limits: ArchiveLimits) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for count, member in enumerate(tar, start=1):
            if count > limits.max_members:
                reason = f"the archive has more than {limits.max_members} members"
                raise UserError(f"cannot read {label!r}: {reason}")
            name = _inside(member.name, "", label, member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(name) if member.issym() else ""
                links[name] = _inside(member.linkname, base, label, member.name)
            elif member.isdev() or member.isfifo():
                raise UserError(f"cannot read {label!r}: member {member.name!r} is a device file")
            elif member.isfile() and name.lower().endswith(_TEXT_SUFFIXES):
                if member.size > limits.max_text_bytes:
                    reason = f"{member.name!r} is larger than {limits.max_text_bytes / MB:g} MB"
                    raise UserError(f"cannot read {label!r}: {reason}")
                handle = tar.extractfile(member)
                files[name] = handle.read() if handle else b""
    for name, target in links.items():  # links within the archive read as their target
        for _ in range(8):
            target = links.get(target, target)
        if name.lower().endswith(_TEXT_SUFFIXES) and target in files:
            files[name] = files[target]
    return files


def _inside(path: str, base: str, label: str, member: str) -> str:
    """`path` (relative to `base`) normalised, or a UserError if it leaves the archive."""
    if "\0" in path or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        raise UserError(f"cannot read {label!r}: member {member!r} has an absolute path")
    joined = posixpath.normpath(posixpath.join(base, path.replace("\\", "/")))
    if joined == ".." or joined.startswith("../"):
        raise UserError(f"cannot read {label!r}: member {member!r} points outside the archive")
    return joined


# --------------------------------------------------------------------------- main file


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


# --------------------------------------------------------------------------- TeX to text


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
_DISPLAY_ENVS = (
    "equation",
    "align",
    "gather",
    "multline",
    "eqnarray",
    "displaymath",
    "flalign",
    "alignat",
    "math",
)
_DROP_ENVS = ("tikzpicture", "pgfpicture", "picture", "thebibliography", "filecontents")
_CITE = re.compile(r"(?:no)?cite[a-zA-Z]*|parencite|textcite|autocite|footcite")
_REF = re.compile(r"(?:auto|eq|page|name|c|C|v|V|sub)?refs?")
# Commands whose arguments are layout, not text: (name -> number of {} arguments).
_DROP_ARGS = {
    "label": 1,
    "vspace": 1,
    "hspace": 1,
    "includegraphics": 1,
    "bibliographystyle": 1,
    "bibliography": 1,
    "addbibresource": 1,
    "usepackage": 1,
    "documentclass": 1,
    "setlength": 2,
    "addtolength": 2,
    "setcounter": 2,
    "addtocounter": 2,
    "newcounter": 1,
    "fontsize": 2,
    "color": 1,
    "pagestyle": 1,
    "thispagestyle": 1,
    "definecolor": 3,
    "hypersetup": 1,
    "captionsetup": 1,
    "newlength": 1,
    "pagenumbering": 1,
    "renewenvironment": 3,
    "newenvironment": 3,
    "newtheorem": 2,
    "theoremstyle": 1,
    "geometry": 1,
    "resizebox": 2,
    "scalebox": 1,
    "multirow": 2,
    "rule": 2,
    "phantom": 1,
    "vphantom": 1,
    "hphantom": 1,
    "enlargethispage": 1,
    "linenumbers": 0,
    "footnotetext": 0,
    "affil": 1,
    "affiliation": 1,
    "email": 1,
    "institute": 1,
    "thanks": 1,
    "orcid": 1,
    "icmlaffiliation": 2,
    "icmlcorrespondingauthor": 2,
    "icmlkeywords": 1,
    "keywords": 1,
}
_KEEP_LAST = {
    "textcolor": 2,
    "colorbox": 2,
    "href": 2,
    "raisebox": 2,
    "multicolumn": 3,
    "makebox": 1,
}
_SYMBOLS = {
    "times": "×",
    "cdot": "·",
    "approx": "≈",
    "leq": "≤",
    "le": "≤",
    "geq": "≥",
    "ge": "≥",
    "neq": "≠",
    "ne": "≠",
    "ll": "≪",
    "gg": "≫",
    "sim": "~",
    "in": "∈",
    "to": "→",
    "rightarrow": "→",
    "leftarrow": "←",
    "Rightarrow": "⇒",
    "infty": "∞",
    "sum": "Σ",
    "prod": "Π",
    "pm": "±",
    "mp": "∓",
    "propto": "∝",
    "partial": "∂",
    "nabla": "∇",
    "top": "⊤",
    "odot": "⊙",
    "otimes": "⊗",
    "oplus": "⊕",
    "circ": "∘",
    "ldots": "…",
    "dots": "…",
    "cdots": "⋯",
    "textbackslash": "\\",
    "textasciitilde": "~",
    "textasciicircum": "^",
    "textbar": "|",
    "textless": "<",
    "textgreater": ">",
    "textendash": "–",
    "textemdash": "—",
    "textdagger": "†",
    "dag": "†",
    "S": "§",
    "copyright": "©",
    "LaTeX": "LaTeX",
    "TeX": "TeX",
    "degree": "°",
    "checkmark": "✓",
    "cmark": "✓",
    "xmark": "✗",
}
_GREEK = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "pi",
    "varpi",
    "rho",
    "varrho",
    "sigma",
    "varsigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Pi",
    "Sigma",
    "Upsilon",
    "Phi",
    "Psi",
    "Omega",
]
_GREEK_CHARS = "αβγδεεζηθϑικλμνξπϖρϱσςτυφϕχψωΓΔΘΛΞΠΣΥΦΨΩ"
_SYMBOLS.update(zip(_GREEK, _GREEK_CHARS, strict=True))
_SPACES = {",", ";", ":", "!", " ", "quad", "qquad", "enspace", "thinspace", "noindent"}
_ACCENTS = {
    "'": "\u0301",
    "`": "\u0300",
    '"': "\u0308",
    "^": "\u0302",
    "~": "\u0303",
    "=": "\u0304",
    ".": "\u0307",
    "c": "\u0327",
    "v": "\u030c",
    "u": "\u0306",
    "H": "\u030b",
    "k": "\u0328",
    "r": "\u030a",
}
_ESCAPES = {"&": "&", "%": "%", "$": "$", "#": "#", "_": "_", "{": "{", "}": "}"}
_MAX_MACRO_PASSES = 6


def _group(text: str, i: int, open_: str = "{", close: str = "}") -> tuple[str, int] | None:
    """The balanced group starting at text[i] (after spaces): (content, index after it)."""
    j = i
    while j < len(text) and text[j] in " \t\n":
        j += 1
    if j >= len(text) or text[j] != open_:
        return None
    depth = 0
    k = j
    while k < len(text):
        ch = text[k]
        if ch == "\\":
            k += 2
            continue
        if ch == open_:
            depth += 1
        elif ch == close:
            depth -= 1
            if depth == 0:
                return text[j + 1 : k], k + 1
        k += 1
    return text[j + 1 :], len(text)  # unbalanced: the rest of the text


def _optional(text: str, i: int) -> int:
    """Skip one optional [..] argument at text[i] (after spaces), if there is one."""
    found = _group(text, i, "[", "]")
    return found[1] if found else i


def _environment(text: str, name: str, start: int = 0) -> tuple[int, int, int, int] | None:
    """(begin, body start, body end, end) of the first \\begin{name} from `start`, nesting aware."""
    begin = re.compile(r"\\begin\s*\{" + re.escape(name) + r"\}")
    both = re.compile(r"\\(begin|end)\s*\{" + re.escape(name) + r"\}")
    m = begin.search(text, start)
    if not m:
        return None
    depth = 0
    for tag in both.finditer(text, m.start()):
        depth += 1 if tag.group(1) == "begin" else -1
        if depth == 0:
            return m.start(), m.end(), tag.start(), tag.end()
    return m.start(), m.end(), len(text), len(text)


def _environments(text: str, names: tuple[str, ...]) -> list[tuple[str, int, int, int, int]]:
    """Top-level occurrences of any of `names` (starred too), in order."""
    pattern = re.compile(r"\\begin\s*\{(" + "|".join(re.escape(n) for n in names) + r")(\*?)\}")
    found: list[tuple[str, int, int, int, int]] = []
    pos = 0
    while m := pattern.search(text, pos):
        name = m.group(1) + m.group(2)
        span = _environment(text, name, m.start())
        if span is None:
            break
        found.append((name, *span))
        pos = span[3]
    return found


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
            if arg := _group(tex, i, "[", "]"):
                nargs = int(arg[0]) if arg[0].strip().isdigit() else 0
                i = arg[1]
                i = _optional(tex, i)  # a default for the first argument
        elif m.group(4):
            nargs = m.group(4).count("#")
        body = _group(tex, i)
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
                group = _group(tex, i)
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


def math_text(math: str) -> str:
    """Math kept as its source, lightly: labels go, common symbols become Unicode."""
    math = re.sub(
        r"\\(?:label|tag)\s*\{[^{}]*\}|\\(?:nonumber|notag|displaystyle|limits)\b", "", math
    )
    math = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*", "", math)
    math = re.sub(
        r"\\(?:mathbf|mathrm|mathit|mathsf|mathtt|mathcal|mathbb|boldsymbol|bm|text|textrm|textit"
        r"|textbf|operatorname|mbox|hat|tilde|bar|vec)\s*\{([^{}]*)\}",
        r"\1",
        math,
    )
    math = math.replace("{,}", ",").replace("\\%", "%").replace("\\{", "{").replace("\\}", "}")
    math = re.sub(r"\\\\(?:\[[^\]]*\])?", "\n", math).replace("&", " ")

    def symbol(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in _SPACES:
            return " "
        return _SYMBOLS.get(name, m.group(0))

    math = re.sub(r"\\([A-Za-z]+|[,;:! ])", symbol, math)
    return "\n".join(" ".join(line.split()) for line in math.split("\n") if line.strip())


class _Converter:
    """TeX body to text, one section at a time; keeps tables and equations found on the way."""

    def __init__(self) -> None:
        self.tables: list[Section] = []
        self.equations: list[Quote] = []
        self.n_tables = 0
        self.n_figures = 0
        self.index = 1

    def section(self, tex: str, index: int) -> str:
        self.index = index
        return _tidy(self.text(self.blocks(tex)))

    def blocks(self, tex: str) -> str:
        """Floats, display math and dropped environments out of the way, captions kept."""
        out: list[str] = []
        pos = 0
        names = ("table", "figure", "wraptable", "wrapfigure", *_DISPLAY_ENVS, *_DROP_ENVS)
        for name, begin, start, end, stop in _environments(tex, names):
            out.append(tex[pos:begin])
            body = tex[start:end]
            base = name.rstrip("*")
            if base in ("table", "wraptable"):
                out.append(self.table(body))
            elif base in ("figure", "wrapfigure"):
                self.n_figures += 1
                caption = _caption(body)
                out.append(f"\n\nFigure {self.n_figures}: {caption}\n\n" if caption else "")
            elif base in _DISPLAY_ENVS:
                out.append(self.equation(body))
            pos = stop
        out.append(tex[pos:])
        text = "".join(out)
        text = re.sub(r"\$\$(.+?)\$\$", lambda m: self.equation(m.group(1)), text, flags=re.DOTALL)
        return re.sub(r"\\\[(.+?)\\\]", lambda m: self.equation(m.group(1)), text, flags=re.DOTALL)

    def equation(self, tex: str) -> str:
        """Record display math; leave it inline (as $..$) where the sentence has it."""
        text = math_text(tex)
        if text:
            self.equations.append(Quote(text=text, page=self.index))
        return " $" + tex.replace("$", "") + "$ "

    def table(self, body: str) -> str:
        self.n_tables += 1
        caption = _caption(body)
        heading = f"Table {self.n_tables}: {caption}" if caption else f"Table {self.n_tables}"
        rows: list[str] = []
        for _name, _b, start, end, _s in _environments(
            body, ("tabular", "tabularx", "tabulary", "longtable", "tabu", "array")
        ):
            inner = body[start:end]
            inner = re.sub(r"^\s*(?:\{[^{}]*\}|\[[^\]]*\])\s*", "", inner)  # the column spec
            if inner.startswith("{"):
                inner = re.sub(r"^\{(?:[^{}]|\{[^{}]*\})*\}", "", inner)
            inner = re.sub(
                r"\\(?:hline|toprule|midrule|bottomrule|cline|cmidrule|addlinespace)(?:\([^)]*\))?(?:\{[^{}]*\})?",
                "",
                inner,
            )
            for row in re.split(r"\\\\(?:\[[^\]]*\])?", inner):
                cells = [" ".join(_tidy(self.text(c)).split()) for c in re.split(r"(?<!\\)&", row)]
                if any(cells):
                    rows.append(" | ".join(cells))
        self.tables.append(Section(heading=heading, level=1, page=self.index, text="\n".join(rows)))
        return f"\n\n{heading}\n\n"

    def text(self, tex: str, depth: int = 0) -> str:
        """Commands give way to their text; math stays as its (lightly tidied) source."""
        if depth > 20:
            return tex
        out: list[str] = []
        i = 0
        n = len(tex)
        while i < n:
            ch = tex[i]
            if ch == "$":
                end = tex.find("$", i + 1)
                while end > 0 and tex[end - 1] == "\\":
                    end = tex.find("$", end + 1)
                if end < 0:
                    end = n
                out.append(math_text(tex[i + 1 : end]).replace("\n", " "))
                i = end + 1
            elif ch == "\\":
                i = self.command(tex, i, out, depth)
            elif ch == "~":
                out.append(" ")
                i += 1
            elif ch in "{}":
                i += 1
            else:
                j = i
                while j < n and tex[j] not in "$\\~{}":
                    j += 1
                out.append(tex[i:j])
                i = j
        return "".join(out)

    def command(self, tex: str, i: int, out: list[str], depth: int) -> int:
        m = re.compile(r"\\([A-Za-z@]+\*?|.)").match(tex, i)
        if not m:
            return i + 1
        name, j = m.group(1), m.end()
        plain = name.rstrip("*")
        if name == "\\":
            out.append("\n")
            return _optional(tex, j)
        if name in _ESCAPES:
            out.append(_ESCAPES[name])
            return j
        if name == "(":
            end = tex.find("\\)", j)
            end = len(tex) if end < 0 else end
            out.append(math_text(tex[j:end]).replace("\n", " "))
            return end + 2
        letter_accent = name in ("c", "v", "u", "H", "k", "r") and tex[j : j + 1] == "{"
        if (name in _ACCENTS and not name.isalpha()) or letter_accent:
            group = _group(tex, j)
            if group:
                letter, j = group
            else:
                letter, j = tex[j : j + 1], j + 1
            out.append(unicodedata.normalize("NFC", letter.strip("{} ") + _ACCENTS[name]))
            return j
        if plain in _SPACES:
            out.append(" ")
            return j
        if plain in _SYMBOLS:
            out.append(_SYMBOLS[plain])
            return j
        if _CITE.fullmatch(plain):
            j = _optional(tex, _optional(tex, j))
            group = _group(tex, j)
            if group:
                keys = ", ".join(k.strip() for k in group[0].split(","))
                out.append(f"[{keys}]")
                return group[1]
            return j
        if _REF.fullmatch(plain):
            group = _group(tex, j)
            out.append("?")
            return group[1] if group else j
        if plain in ("footnote", "footnotetext"):
            j = _optional(tex, j)
            group = _group(tex, j)
            if group:
                out.append(" (" + _tidy(self.text(group[0], depth + 1)).strip() + ")")
                return group[1]
            return j
        if plain in ("url", "nolinkurl"):
            group = _group(tex, j)
            if group:
                out.append(group[0])
                return group[1]
            return j
        if plain in ("item", "bibitem"):
            j = _optional(tex, j)
            out.append("\n- ")
            if plain == "bibitem" and (group := _group(tex, j)):
                j = group[1]
            return j
        if plain in (
            "par",
            "newline",
            "linebreak",
            "newpage",
            "clearpage",
            "bigskip",
            "medskip",
            "smallskip",
        ):
            out.append("\n\n" if plain in ("par", "bigskip", "medskip") else "\n")
            return j
        if plain in ("paragraph", "subparagraph"):
            group = _group(tex, _optional(tex, j))
            if group:
                heading = _tidy(self.text(group[0], depth + 1)).strip().rstrip(".")
                out.append(f"\n\n{heading}. ")
                return group[1]
            return j
        if plain in ("begin", "end"):
            group = _group(tex, j)
            if group is None:
                return j
            env = group[0].strip().rstrip("*")
            j = group[1]
            if plain == "begin":
                j = _optional(tex, j)
            if env in (
                "itemize",
                "enumerate",
                "description",
                "abstract",
                "quote",
                "quotation",
                "center",
            ):
                out.append("\n\n")
            return j
        if plain in _DROP_ARGS:
            j = _optional(tex, j)
            for _ in range(_DROP_ARGS[plain]):
                group = _group(tex, j)
                if group is None:
                    break
                j = _optional(tex, group[1])
            return j
        if plain in _KEEP_LAST:
            groups: list[str] = []
            for _ in range(_KEEP_LAST[plain]):
                j2 = _optional(tex, j)
                group = _group(tex, j2)
                if group is None:
                    break
                groups.append(group[0])
                j = group[1]
            if groups:
                out.append(self.text(groups[-1], depth + 1))
            return j
        if not name.isalpha() and not name.endswith("*"):
            return j  # \/ \- \@ and other one-character commands: nothing to read
        group = _group(tex, j) if tex[j : j + 1] == "{" else None
        if group:  # \textbf{x}, \emph{x}, unknown \foo{x}: the text inside
            out.append(self.text(group[0], depth + 1))
            return group[1]
        while j < len(tex) and tex[j] == " ":  # a control word swallows the spaces after it
            j += 1
        if out and out[-1][-1:] not in (" ", "\n", "") and tex[j : j + 1].isalnum():
            out.append(" ")
        return j


def _caption(body: str) -> str:
    m = re.search(r"\\caption\*?\s*(?=[\[{])", body)
    if not m:
        return ""
    group = _group(body, _optional(body, m.end()))
    return " ".join(_tidy(_Converter().text(group[0])).split()) if group else ""


def _tidy(text: str) -> str:
    """Spaces collapsed within lines, at most one blank line, TeX quotes and dashes as text."""
    text = text.replace("``", "“").replace("''", "”").replace("---", "—").replace("--", "–")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r" +([,.;:!)])", r"\1", text)
    return text.strip()


def _command_args(tex: str, name: str) -> list[str]:
    """The {} argument of every \\name[..]{..} in `tex`."""
    found: list[str] = []
    for m in re.finditer(r"\\" + name + r"\*?(?![A-Za-z])", tex):
        group = _group(tex, _optional(tex, m.end()))
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
            text = _tidy(_Converter().text(first)).replace("\n", " ")
            text = re.sub(r"[\d*†‡§¶∗⋆]+", " ", text)
            for name in re.split(r",|\band\b|;", text):
                name = " ".join(name.split())
                if name and "@" not in name and len(name) < 60 and re.search(r"[A-Za-z]", name):
                    names.append(name)
    return names


def _bibliography(tex: str) -> list[str]:
    span = _environment(tex, "thebibliography")
    if span is None:
        return []
    body = tex[span[1] : span[2]]
    body = re.sub(r"^\s*\{[^{}]*\}", "", body)
    entries: list[str] = []
    converter = _Converter()
    for chunk in re.split(r"\\bibitem\b", body)[1:]:
        j = _optional(chunk, 0)
        group = _group(chunk, j)
        rest = chunk[group[1] :] if group else chunk[j:]
        rest = rest.replace("\\newblock", " ")
        text = " ".join(_tidy(converter.text(rest)).split())
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
    converter = _Converter()
    titles = _command_args(tex, "title")
    if titles:
        title = re.sub(r"\\(?:thanks|footnote)\s*\{(?:[^{}]|\{[^{}]*\})*\}", "", titles[0])
        doc.title = " ".join(_tidy(converter.text(title)).split())
    doc.authors = _authors(tex)
    begin = re.search(r"\\begin\s*\{document\}", tex)
    end = re.search(r"\\end\s*\{document\}", tex)
    body = tex[begin.end() if begin else 0 : end.start() if end else len(tex)]
    if span := _environment(body, "abstract"):
        doc.abstract = " ".join(
            _tidy(converter.text(converter.blocks(body[span[1] : span[2]]))).split()
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
        j = _optional(front, head.end())
        group = _group(front, j)
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
        heading = " ".join(_tidy(converter.text(title_tex)).split())
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
