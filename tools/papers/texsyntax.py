"""TeX's syntax as the converter needs it: braced groups, environments, math, symbols.

Scanners that respect nesting and escapes (`braced`, `skip_optional`,
`find_environment(s)`), and math kept as its LaTeX source with a few symbols spelled
in Unicode (×, ≤, Greek letters), which is what the digest's patterns read.
"""

from __future__ import annotations

import re

SYMBOLS = {
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
SYMBOLS.update(zip(_GREEK, _GREEK_CHARS, strict=True))
SPACES = {",", ";", ":", "!", " ", "quad", "qquad", "enspace", "thinspace", "noindent"}
ACCENTS = {
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
ESCAPES = {"&": "&", "%": "%", "$": "$", "#": "#", "_": "_", "{": "{", "}": "}"}


def braced(text: str, i: int, open_: str = "{", close: str = "}") -> tuple[str, int] | None:
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


def skip_optional(text: str, i: int) -> int:
    """Skip one optional [..] argument at text[i] (after spaces), if there is one."""
    found = braced(text, i, "[", "]")
    return found[1] if found else i


def find_environment(text: str, name: str, start: int = 0) -> tuple[int, int, int, int] | None:
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


def find_environments(text: str, names: tuple[str, ...]) -> list[tuple[str, int, int, int, int]]:
    """Top-level occurrences of any of `names` (starred too), in order."""
    pattern = re.compile(r"\\begin\s*\{(" + "|".join(re.escape(n) for n in names) + r")(\*?)\}")
    found: list[tuple[str, int, int, int, int]] = []
    pos = 0
    while m := pattern.search(text, pos):
        name = m.group(1) + m.group(2)
        span = find_environment(text, name, m.start())
        if span is None:
            break
        found.append((name, *span))
        pos = span[3]
    return found


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
        if name in SPACES:
            return " "
        return SYMBOLS.get(name, m.group(0))

    math = re.sub(r"\\([A-Za-z]+|[,;:! ])", symbol, math)
    return "\n".join(" ".join(line.split()) for line in math.split("\n") if line.strip())
