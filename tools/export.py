"""One self-contained HTML file of a published write-up, to mail inside a bank.

Figures are embedded as data URIs (no file beside it, no request when opened); every
number the verifier counts links to its evidence entry (`#ev-<id>`) in an appendix
table that says where it comes from (job and metric, page and quote, formula). No
script, no external stylesheet, no font download: it opens the same offline.
Rendering is markdown-it-py (CommonMark plus tables), which rich already depends on.
"""

from __future__ import annotations

import base64
import html
import re
from collections import defaultdict, deque
from html.parser import HTMLParser
from pathlib import Path

from markdown_it import MarkdownIt

from reprodesk.schemas import EvidenceItem
from tools.evidence import NUMBER
from tools.verify import load_evidence

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;line-height:1.45;color:#1b1b1b}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top}
th{background:#f3f3f3}
code,pre{background:#f6f6f6;font-size:.85rem}
pre{padding:.6rem;overflow-x:auto}
img{max-width:100%;border:1px solid #ddd}
a.ev{color:inherit;text-decoration:underline dotted}
blockquote{border-left:3px solid #bbb;margin-left:0;padding-left:1rem;color:#444}
"""
_PAGE_BEFORE = re.compile(r"\b(?:pp?|s)\.\s?$")
_SKIP = {"code", "pre", "a", "style", "script", "title"}
_VOID = {"img", "br", "hr", "meta", "input", "link"}


def _anchor(id_: str) -> str:
    return "ev-" + re.sub(r"[^A-Za-z0-9_.-]", "_", id_)


class _Linker(HTMLParser):
    """Rewrites rendered HTML: numbers in text become links to their evidence."""

    def __init__(self, evidence: list[EvidenceItem]) -> None:
        super().__init__(convert_charrefs=True)
        self.queue: dict[str, deque[EvidenceItem]] = defaultdict(deque)
        self.last: dict[str, EvidenceItem] = {}
        for item in evidence:
            self.queue[item.display].append(item)
        self.out: list[str] = []
        self.stack: list[str] = []
        self.linked = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text = "".join(
            f' {k}="{html.escape(v, quote=True)}"' if v is not None else f" {k}" for k, v in attrs
        )
        self.out.append(f"<{tag}{text}>")
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.out.append(f"</{tag}>")
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if any(t in _SKIP for t in self.stack):
            self.out.append(html.escape(data, quote=False))
            return
        pos = 0
        for m in NUMBER.finditer(data):
            number = m.group(0).lstrip("+")
            item = self._take(number)
            if item is None or _PAGE_BEFORE.search(data[: m.start()]):
                continue
            self.out.append(html.escape(data[pos : m.start()], quote=False))
            self.out.append(
                f'<a class="ev" href="#{_anchor(item.id)}" title="{html.escape(item.kind)}">'
                f"{html.escape(m.group(0))}</a>"
            )
            self.linked += 1
            pos = m.end()
        self.out.append(html.escape(data[pos:], quote=False))

    def _take(self, number: str) -> EvidenceItem | None:
        queue = self.queue.get(number)
        if queue:
            self.last[number] = queue.popleft()
        return self.last.get(number)


def _source(item: EvidenceItem) -> str:
    s = item.source
    if item.kind == "measured" and "metric" in s:
        return f"job {s.get('job', '')}, metric <code>{html.escape(str(s['metric']))}</code>"
    if item.kind == "paper":
        return f"paper p.{s.get('page')}: “{html.escape(str(s.get('quote', '')))}”"
    if item.kind == "derived":
        return f"formula: {html.escape(str(s.get('formula', '')))}"
    if item.kind == "config":
        return f"configuration: {html.escape(str(s.get('where', '')))}"
    return html.escape(", ".join(f"{k}: {v}" for k, v in s.items()))


def _embed_images(markdown: str, folder: Path) -> str:
    def data_uri(m: re.Match[str]) -> str:
        alt, target = m.group(1), m.group(2)
        path = folder / target
        if not path.is_file():
            return m.group(0)  # the verifier names it; the export keeps the broken link
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{alt}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", data_uri, markdown)


def render_html(markdown: str, evidence: list[EvidenceItem], folder: Path, title: str) -> str:
    """The write-up as one HTML document, figures embedded, numbers linked to evidence."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = md.render(_embed_images(markdown, folder))
    linker = _Linker(evidence)
    linker.feed(body)
    linker.close()
    rows = "\n".join(
        f'<tr id="{_anchor(e.id)}"><td><code>{html.escape(e.id)}</code></td>'
        f"<td>{html.escape(e.display)}</td><td>{html.escape(e.unit)}</td>"
        f"<td>{e.kind}</td><td>{_source(e)}</td></tr>"
        for e in evidence
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "".join(linker.out)
        + '\n<h2 id="evidence">Evidence</h2>\n<p>Every number above links here.</p>\n'
        "<table><thead><tr><th>id</th><th>value</th><th>unit</th><th>kind</th>"
        f"<th>source</th></tr></thead><tbody>\n{rows}\n</tbody></table>\n</body></html>\n"
    )


def export_html(folder: Path, lang: str = "en") -> Path:
    """Write `writeup.html` (or `writeup.<lang>.html`) into the run folder; return its path."""
    name = "writeup.md" if lang == "en" else f"writeup.{lang}.md"
    markdown = (folder / name).read_text(encoding="utf-8")
    title = markdown.splitlines()[0].lstrip("# ").strip() if markdown else folder.name
    page = render_html(markdown, load_evidence(folder), folder, title)
    if lang != "en":
        page = page.replace('<html lang="en">', f'<html lang="{lang}">', 1)
    target = folder / name.replace(".md", ".html")
    target.write_text(page, encoding="utf-8")
    return target
