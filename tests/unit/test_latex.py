"""LaTeX to text, and safe unpacking of source archives, all in memory."""

from __future__ import annotations

import io
import tarfile

import pytest

from reprodesk.schemas import UserError
from tools.papers.archive import ArchiveLimits, unpack
from tools.papers.tex import inline_inputs, main_file, parse_tex, source_text, strip_comments
from tools.papers.texsyntax import math_text

DOC = r"""\documentclass{article}
\newcommand{\dsv}{DeepSeek-V2}
\newcommand{\hl}[1]{\textcolor{red}{#1}}
\def\kv{KV}
\title{\dsv: Economical\thanks{Work in progress.}}
\author{Ada Lovelace\thanks{a@b.c} \\ Analytical Engines \And Alan Turing \\ Bletchley}
\begin{document}
\maketitle
\begin{abstract}
\dsv{} reduces the \kv{} cache by 93.3\% % a comment with $math$
and is $5.76\times$ faster.
\end{abstract}
\section{Introduction}\label{sec:intro}
We adopt MLA~\citep{liu2024, dai2024}, see Section~\ref{sec:arch} and \hl{this}.
Joint compres%
  sion\footnote{Of keys and values.} works.
\begin{itemize}
\item First, $d_{c}=512$.
\item \textbf{Second}, {\em emphasis}.
\end{itemize}
\section*{Unnumbered}
Caf\'e, na\"ive -- ``quoted'' --- done.
\section{Architecture}\label{sec:arch}
\subsection{Attention}
The latent is
\begin{equation}
\mathbf{c}_{t}^{KV} = W^{DKV} \mathbf{h}_{t} \label{eq:1}
\end{equation}
where $\mathbf{c}_t \in \mathbb{R}^{d_c}$.
\begin{table}[t]\centering
\begin{tabular}{l|cc}\toprule
Attention & Cache & Quality \\ \midrule
MHA & $2 n_h d_h l$ & Strong \\
MLA & \multicolumn{1}{c}{$(d_c + d_h^R) l$} & Stronger \\ \bottomrule
\end{tabular}
\caption{KV cache per token.}
\end{table}
\paragraph{Decoupled RoPE.} A shared key.
\appendix
\section{Extra}
\subsection{More}
Text.
\begin{thebibliography}{9}
\bibitem[Liu et~al.(2024)]{liu2024} A.~Liu. \newblock DeepSeek-V2. \newblock 2024.
\bibitem{dai2024} D.~Dai. DeepSeekMoE. 2024.
\end{thebibliography}
\end{document}
"""


@pytest.fixture(scope="module")
def doc() -> object:
    return parse_tex(DOC)


def test_front_matter(doc: object) -> None:
    assert doc.title == "DeepSeek-V2: Economical"  # type: ignore[attr-defined]
    assert doc.authors == ["Ada Lovelace", "Alan Turing"]  # type: ignore[attr-defined]
    assert doc.abstract == (  # type: ignore[attr-defined]
        "DeepSeek-V2 reduces the KV cache by 93.3% and is 5.76× faster."
    )


def test_sections_are_numbered_like_latex_and_indexed_from_1(doc: object) -> None:
    sections = doc.sections  # type: ignore[attr-defined]
    assert [(s.page, s.level, s.heading) for s in sections] == [
        (1, 1, ""),
        (2, 1, "Abstract"),
        (3, 1, "1 Introduction"),
        (4, 1, "Unnumbered"),
        (5, 1, "2 Architecture"),
        (6, 2, "2.1 Attention"),
        (7, 1, "A Extra"),
        (8, 2, "A.1 More"),
    ]
    assert sections[0].text == "DeepSeek-V2: Economical\nAda Lovelace, Alan Turing"


def test_commands_give_way_to_text(doc: object) -> None:
    intro = doc.sections[2].text  # type: ignore[attr-defined]
    assert intro.startswith(
        "We adopt MLA [liu2024, dai2024], see Section ? and this.\n"
        "Joint compression (Of keys and values.) works."
    )
    assert "- First, d_{c}=512." in intro
    assert "- Second, emphasis." in intro
    assert doc.sections[3].text == "Café, naïve – “quoted” — done."  # type: ignore[attr-defined]


def test_math_tables_and_paragraphs(doc: object) -> None:
    attention = " ".join(doc.sections[5].text.split())  # type: ignore[attr-defined]
    assert "The latent is c_{t}^{KV} = W^{DKV} h_{t} where c_t ∈ R^{d_c}." in attention
    assert "Table 1: KV cache per token." in attention
    assert "Decoupled RoPE. A shared key." in attention
    assert [(q.text, q.page) for q in doc.equations] == [  # type: ignore[attr-defined]
        ("c_{t}^{KV} = W^{DKV} h_{t}", 6)
    ]
    (table,) = doc.tables  # type: ignore[attr-defined]
    assert (table.heading, table.page) == ("Table 1: KV cache per token.", 6)
    assert table.text == (
        "Attention | Cache | Quality\nMHA | 2 n_h d_h l | Strong\nMLA | (d_c + d_h^R) l | Stronger"
    )


def test_bibliography_entries(doc: object) -> None:
    assert doc.references == [  # type: ignore[attr-defined]
        "A. Liu. DeepSeek-V2. 2024.",
        "D. Dai. DeepSeekMoE. 2024.",
    ]
    assert "DeepSeekMoE" not in doc.sections[-1].text  # type: ignore[attr-defined]


def test_math_symbols() -> None:
    assert math_text(r"5.76\times") == "5.76×"
    assert math_text(r"\alpha \leq 1{,}536 \, \text{and} \% ") == "α ≤ 1,536 and %"
    assert math_text("a &= b \\\\ c &= d") == "a = b\nc = d"


def test_comments_keep_escaped_percent() -> None:
    assert strip_comments("93.3\\% of it % gone\nnext") == "93.3\\% of it next"
    assert strip_comments("a\\\\% gone\nb") == "a\\\\b"  # \\ is a line break, % a comment
    assert strip_comments("\\iffalse hidden \\fi shown") == " shown"


def test_macros_with_arguments_and_a_bound_on_expansion() -> None:
    assert "Hello World" in parse_tex(r"\newcommand{\hi}[1]{Hello #1}\hi{World}").sections[0].text
    looping = r"\def\a{\a\a}\a"  # each pass doubles: a bounded number of passes
    assert parse_tex(looping).sections == []  # it ends; what is left is unknown commands
    bomb = r"\def\b{" + "x" * 1000 + "}" + r"\b" * 20
    with pytest.raises(UserError, match="macros expand to more than"):
        parse_tex(bomb, limits=ArchiveLimits(max_text_bytes=10_000))


def test_inputs_are_inlined_within_the_archive_and_depth() -> None:
    files = {
        "main.tex": r"\documentclass{x}\begin{document}\input{a}"
        r"\include{../../etc/passwd}\end{document}",
        "a.tex": r"A \input{sub/b.tex}",
        "sub/b.tex": r"B \input{a}",  # a cycle: stopped by the depth bound
        "../etc/passwd.tex": "secret",
    }
    text = inline_inputs(files, "main.tex", ArchiveLimits(max_depth=3))
    assert (text.count("A"), text.count("B")) == (2, 1)  # a -> b -> a, then no deeper
    assert "secret" not in text


def test_the_main_file_is_the_document() -> None:
    files = {
        "macros.tex": r"\newcommand{\x}{y}",
        "appendix.tex": r"\documentclass{article}",
        "ms.tex": r"\documentclass{article}\begin{document}x\end{document}",
    }
    assert main_file(files, "src") == "ms.tex"
    with pytest.raises(UserError, match="no main LaTeX file"):
        main_file({"a.tex": "x"}, "src")


def _tar(add: callable) -> bytes:  # type: ignore[valid-type]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar)
    return buf.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"", **kind: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in kind.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def test_plain_tar_links_inside_are_followed() -> None:
    def add(tar: tarfile.TarFile) -> None:
        _member(
            tar, "src/main.tex", rb"\documentclass{a}\begin{document}\input{other}\end{document}"
        )
        _member(tar, "src/real.tex", b"REAL")
        _member(tar, "src/other.tex", type=tarfile.SYMTYPE, linkname="real.tex")

    files = unpack(_tar(add), "src")
    assert isinstance(files, dict)
    assert files["src/other.tex"] == b"REAL"
    tex, _bbl = source_text(files, "src")
    assert "REAL" in tex


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ({"type": tarfile.LNKTYPE, "linkname": "../../x.tex"}, "points outside the archive"),
        ({"type": tarfile.SYMTYPE, "linkname": "../x"}, "points outside the archive"),
        ({"type": tarfile.CHRTYPE}, "is a device file"),
        ({"type": tarfile.FIFOTYPE}, "is a device file"),
    ],
)
def test_links_out_and_devices_are_refused(kind: dict[str, object], reason: str) -> None:
    data = _tar(lambda tar: _member(tar, "x.tex", **kind))
    with pytest.raises(UserError, match=reason):
        unpack(data, "src")


def test_a_huge_text_member_is_refused_before_it_is_read() -> None:
    data = _tar(lambda tar: _member(tar, "big.tex", b"x" * 2000))
    with pytest.raises(UserError, match=r"'big\.tex' is larger than"):
        unpack(data, "src", ArchiveLimits(max_text_bytes=1000))
