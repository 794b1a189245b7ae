"""Paper loading: from an arXiv id, a URL or a file to a `Paper`.

`load_paper` (in `load`) is the entry; the rest is one job a module:

| module | job |
|---|---|
| `load` | `load_paper`: route a source, sniff the format from the bytes, NFKC the text |
| `fetch` | `Fetcher`: one URL's bytes with retries, timeouts, size cap, deadline; local files |
| `cache` | the parsed-paper cache under the reprodesk home |
| `arxiv` | arXiv ids and URLs, the API's metadata, where the source and PDF live |
| `archive` | safe in-memory unpacking of a LaTeX source tarball |
| `tex` | the LaTeX document: main file, inputs, macros, sections, title, references |
| `texconvert`, `texsyntax` | TeX body text to plain text; braces, environments, math |
| `pdf` | a PDF opened (PDFium) and refused or read as text runs, page by page |
| `layout` | text runs to lines in reading order (two columns) and to sections |
| `html` | an HTML page's text, sections, tables and citation metadata |
| `text` | Markdown and plain text |
"""

from tools.papers.load import load_paper

__all__ = ["load_paper"]
