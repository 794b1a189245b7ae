"""Shared pieces of the paper-loading tests: sample sources, tarballs, fetchers, errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from reprodesk.schemas import UserError
from tools.papers import load_paper
from tools.papers.fetch import Fetcher

ROOT = Path(__file__).resolve().parents[2]

PDF_PAGES = [
    ["DeepSeek-V2: A Strong, Economical, and Efficient MoE Model", "Abstract: we present MLA."],
    ["Multi-head Latent Attention compresses the KV cache.", "We set 𝑑𝑐 = 512 and 𝑑𝑅 ℎ = 64."],
    ["DeepSeekMoE uses fine-grained experts.", "Each token is routed to 6 experts."],
]
NOTE_MD = b"# MLA in one page\n\nLow-rank joint compression of keys and values.\n"
ARTICLE_HTML = b"""<!DOCTYPE html><html><head><title>Site | GRPO explained</title>
<meta name="citation_title" content="Group Relative Policy Optimization, explained">
<meta name="citation_author" content="Ada Lovelace">
<meta name="citation_author" content="Alan Turing">
<meta name="citation_publication_date" content="2024/02/05"></head><body>
<h1>GRPO, explained</h1><h2>Abstract</h2><p>We adopt Group Relative Policy Optimization.</p>
<h2>1 Method</h2><p>GRPO reduces memory by 38.5% compared with PPO.</p>
<table><caption>Table 1: Memory.</caption><tr><th>Method</th><th>Memory</th></tr>
<tr><td>PPO</td><td>100%</td></tr><tr><td>GRPO</td><td>61.5%</td></tr></table>
</body></html>"""
MAIN_TEX = rb"""\documentclass{article}
\newcommand{\model}{DeepSeek-V2}
\title{\model: A Strong and Economical MoE Model}
\author{Ada Lovelace \and Alan Turing}
\begin{document}\maketitle
\begin{abstract}\model{} reduces the KV cache by 93.3\%.\end{abstract}
\input{sections/intro}
\section{Hyperparameters}
The KV compression dimension $d_{c}$ is set to 512. % and a comment
\begin{equation} c_t = W^{DKV} h_t \end{equation}
\bibliographystyle{plain}\bibliography{refs}
\end{document}
"""
INTRO_TEX = rb"""\section{Introduction}
We adopt Multi-head Latent Attention (MLA)~\citep{mla}, with low-rank key-value joint compression.
"""
REFS_BBL = rb"""\begin{thebibliography}{1}
\bibitem{mla} DeepSeek-AI. \newblock DeepSeek-V2. \newblock 2024.
\end{thebibliography}
"""


def tarball(members: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz made in memory: regular files, plus symbolic links name -> target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


SOURCE_TARBALL = tarball(
    {"main.tex": MAIN_TEX, "sections/intro.tex": INTRO_TEX, "main.bbl": REFS_BBL, "fig.png": b"x"}
)


def _png() -> bytes:
    buf = io.BytesIO()
    Figure(figsize=(1, 1)).savefig(buf, format="png")
    return buf.getvalue()


def fast(**overrides: Any) -> Fetcher:
    """A fetcher with test-sized waits; the retry logic is the production one."""
    settings: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 2.0, "backoff_s": 0.01}
    return Fetcher(**(settings | overrides))


def error_for(source: str, **kwargs: Any) -> str:
    """The UserError message for loading `source`, checked to be one line naming it."""
    with pytest.raises(UserError) as info:
        load_paper(source, **kwargs)
    message = str(info.value)
    assert repr(source) in message, message
    assert "\n" not in message
    return message
