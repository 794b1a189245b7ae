"""TeX body text into plain text, one section at a time (see `tex` for the document).

Formatting commands give way to their text, citations become [key], cross-references
"?", footnotes a parenthesis, and math stays as its LaTeX source (`texsyntax.math_text`).
Display math is also collected apart as equations, tables become rows of cells, and
figures keep only their captions.
"""

from __future__ import annotations

import re
import unicodedata

from reprodesk.schemas import Quote, Section
from tools.papers.texsyntax import (
    ACCENTS,
    ESCAPES,
    SPACES,
    SYMBOLS,
    braced,
    find_environments,
    math_text,
    skip_optional,
)

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


class Converter:
    """TeX body to text, one section at a time; keeps tables and equations found on the way."""

    def __init__(self) -> None:
        self.tables: list[Section] = []
        self.equations: list[Quote] = []
        self.n_tables = 0
        self.n_figures = 0
        self.index = 1

    def section(self, tex: str, index: int) -> str:
        self.index = index
        return tidy(self.text(self.blocks(tex)))

    def blocks(self, tex: str) -> str:
        """Floats, display math and dropped environments out of the way, captions kept."""
        out: list[str] = []
        pos = 0
        names = ("table", "figure", "wraptable", "wrapfigure", *_DISPLAY_ENVS, *_DROP_ENVS)
        for name, begin, start, end, stop in find_environments(tex, names):
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
        for _name, _b, start, end, _s in find_environments(
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
                cells = [" ".join(tidy(self.text(c)).split()) for c in re.split(r"(?<!\\)&", row)]
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
            return skip_optional(tex, j)
        if name in ESCAPES:
            out.append(ESCAPES[name])
            return j
        if name == "(":
            end = tex.find("\\)", j)
            end = len(tex) if end < 0 else end
            out.append(math_text(tex[j:end]).replace("\n", " "))
            return end + 2
        letter_accent = name in ("c", "v", "u", "H", "k", "r") and tex[j : j + 1] == "{"
        if (name in ACCENTS and not name.isalpha()) or letter_accent:
            group = braced(tex, j)
            if group:
                letter, j = group
            else:
                letter, j = tex[j : j + 1], j + 1
            out.append(unicodedata.normalize("NFC", letter.strip("{} ") + ACCENTS[name]))
            return j
        if plain in SPACES:
            out.append(" ")
            return j
        if plain in SYMBOLS:
            out.append(SYMBOLS[plain])
            return j
        if _CITE.fullmatch(plain):
            j = skip_optional(tex, skip_optional(tex, j))
            group = braced(tex, j)
            if group:
                keys = ", ".join(k.strip() for k in group[0].split(","))
                out.append(f"[{keys}]")
                return group[1]
            return j
        if _REF.fullmatch(plain):
            group = braced(tex, j)
            out.append("?")
            return group[1] if group else j
        if plain in ("footnote", "footnotetext"):
            j = skip_optional(tex, j)
            group = braced(tex, j)
            if group:
                out.append(" (" + tidy(self.text(group[0], depth + 1)).strip() + ")")
                return group[1]
            return j
        if plain in ("url", "nolinkurl"):
            group = braced(tex, j)
            if group:
                out.append(group[0])
                return group[1]
            return j
        if plain in ("item", "bibitem"):
            j = skip_optional(tex, j)
            out.append("\n- ")
            if plain == "bibitem" and (group := braced(tex, j)):
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
            group = braced(tex, skip_optional(tex, j))
            if group:
                heading = tidy(self.text(group[0], depth + 1)).strip().rstrip(".")
                out.append(f"\n\n{heading}. ")
                return group[1]
            return j
        if plain in ("begin", "end"):
            group = braced(tex, j)
            if group is None:
                return j
            env = group[0].strip().rstrip("*")
            j = group[1]
            if plain == "begin":
                j = skip_optional(tex, j)
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
            j = skip_optional(tex, j)
            for _ in range(_DROP_ARGS[plain]):
                group = braced(tex, j)
                if group is None:
                    break
                j = skip_optional(tex, group[1])
            return j
        if plain in _KEEP_LAST:
            groups: list[str] = []
            for _ in range(_KEEP_LAST[plain]):
                j2 = skip_optional(tex, j)
                group = braced(tex, j2)
                if group is None:
                    break
                groups.append(group[0])
                j = group[1]
            if groups:
                out.append(self.text(groups[-1], depth + 1))
            return j
        if not name.isalpha() and not name.endswith("*"):
            return j  # \/ \- \@ and other one-character commands: nothing to read
        group = braced(tex, j) if tex[j : j + 1] == "{" else None
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
    group = braced(body, skip_optional(body, m.end()))
    return " ".join(tidy(Converter().text(group[0])).split()) if group else ""


def tidy(text: str) -> str:
    """Spaces collapsed within lines, at most one blank line, TeX quotes and dashes as text."""
    text = text.replace("``", "“").replace("''", "”").replace("---", "—").replace("--", "–")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r" +([,.;:!)])", r"\1", text)
    return text.strip()
