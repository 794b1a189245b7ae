"""Offline, deterministic digest of a paper: mechanisms, hyperparameters, claims.

Works sentence by sentence on each page so that every finding carries the quote
and the page it came from. The text is untrusted data: it is only matched
against the catalog's patterns, never interpreted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from recipes.catalog import CATALOG, Recipe
from reprodesk.schemas import Claim, Digest, Hyperparameter, MechanismHit, Paper, Quote

# Symbol spellings papers use for the same quantity, folded to one form. Order
# matters: the decorated forms (d_h^R, d_c') must be folded before the plain ones.
_SYMBOLS: tuple[tuple[str, str], ...] = (
    (r"\bd\s*_?\s*\{?\s*h\s*\}?\s*\^\s*\{?\s*R(?:\s*\})?", "d_h^R"),  # d_h^R, d_{h}^{R}
    (r"\bd\s*\^\s*\{?\s*R\s*\}?\s*_\s*\{?\s*h(?:\s*\})?", "d_h^R"),  # d^R_h
    (r"\bdR\s?h\b", "d_h^R"),  # a PDF's rendering of 𝑑𝑅 ℎ
    (r"\bd\s*['′]\s*_?\s*c\b", "d_c'"),  # d′c
    (r"\bd\s*_?\s*\{?\s*c\s*\}?\s*['′]", "d_c'"),  # d_c', d_c′
    (r"\bd\s*_?\s*\{?\s*c(?:\s*\})?(?![\w'′])", "d_c"),  # dc, d_c, d_{c}
    (r"\bd\s*_?\s*\{?\s*h(?:\s*\})?(?![\w^'′])", "d_h"),  # dh, d_h, d_{h}
    (r"\bn\s*_?\s*\{?\s*h(?:\s*\})?(?!\w)", "n_h"),  # nh, n_h, n_{h}
)
_ABBREVIATIONS = (
    "al",
    "e.g",
    "i.e",
    "etc",
    "vs",
    "cf",
    "Fig",
    "Figs",
    "Eq",
    "Eqs",
    "Sec",
    "Tab",
    "No",
    "approx",
    "resp",
)
_SENTENCE_END = re.compile(
    "".join(rf"(?<!\b{re.escape(a)}\.)" for a in _ABBREVIATIONS) + r"(?<=[.!?])\s+(?=[A-Z(\[])"
)
_BLOCK = re.compile(r"\n\s*\n|\n\s*(?=[-*•]\s)|\n(?=#)")
_NUMBER = re.compile(r"(?<![\w.^])\d+(?:[.,]\d+)?(?:\s?%|x\b)?")
_CLAIM_CUE = re.compile(
    r"%|\btimes\b|\d(?:\.\d+)?x\b|×|reduc|boost|improv|faster|slower|fewer|less than|"
    r"more than|saves?\b|outperform|equal to|speed-?up|higher|lower",
    re.IGNORECASE,
)
_SETTING = re.compile(r"\bis set to\b|\bwe set\b|\bare set to\b", re.IGNORECASE)
# Numbers that point somewhere rather than measure: "Section 3", "Table 2", "(2024)".
_POINTER = re.compile(
    r"(?:\b(?:sections?|sec\.|tables?|tab\.|figures?|figs?\.|appendix|equations?|eqs?\.|"
    r"steps?|stages?|lines?|algorithms?|chapters?|versions?|v)\s*\(?)$",
    re.IGNORECASE,
)
_YEAR = re.compile(r"(?:19|20)\d\d")
# Sections whose sentences are about other work, not this paper's method: they are no
# evidence of a mechanism, and their numbers are no claims.
_ELSEWHERE = re.compile(
    r"^(?:[A-Z]?\d*(?:\.\d+)*\.?\s+)?(?:references|bibliography|related works?|prior work"
    r"|previous work|background and related work|acknowledge?ments?|author contributions"
    r"|contributions and acknowledge?ments?)\b",
    re.IGNORECASE,
)
# A table-of-contents entry that came out as a heading: "3 Infrastructures 11",
# "B.1 FP8 v.s. BF16 Training . . . 47"; and the contents page itself.
_TOC_HEADING = re.compile(
    r"^(?:(?:table of )?contents|outline)$|^(?:[A-Z]|\d{1,2})(?:\.\d{1,2})*\.?\s+\S.*?\s\d{1,3}$",
    re.IGNORECASE,
)
_LEADERS = re.compile(r"(?:\.\s?){4,}")
# Appendix sections that show prompts, templates or sample outputs: text the paper
# quotes as data, not statements about its method.
_PROMPT_SECTION = re.compile(
    r"^[A-H](?:\.\d{1,2})*\.?\s+.*\b(?:prompts?|templates?|examples?|samples?|case stud(?:y|ies)|"
    r"demonstrations?|outputs?)\b",
    re.IGNORECASE,
)
_PROMPT_LINE = re.compile(
    r"<think>|</think>|<answer>|^(?:user|assistant|system|question|answer|response)\s*:",
    re.IGNORECASE,
)
_CAPTION_START = re.compile(r"^(?:figure|fig\.|table|tab\.)\s*\d+\s*[|:.]", re.IGNORECASE)
# Words a sentence of prose cannot do without; figure text (labels, legends) has none.
_FUNCTION_WORDS = re.compile(
    r"\b(?:the|a|an|of|to|in|is|are|we|and|for|with|on|by|that|this|as|be|it|from|at)\b",
    re.IGNORECASE,
)
_HEADING_LIKE = re.compile(
    r"^(?:\d{1,2}(?:\.\d{1,2}){0,3}|[A-H](?:\.\d{1,2}){0,3})\.?\s+[A-Z][^.!?]*$"
)
_MAX_COUNT_PER_SIGNATURE = 5  # a term repeated on every page should not dominate


def normalise(text: str) -> str:
    """NFKC (math italic letters -> ASCII), symbol spellings folded, spaces kept readable."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2212", "-").replace("\u2010", "-").replace("\u2011", "-")
    for pattern, repl in _SYMBOLS:
        text = re.sub(pattern, repl, text)
    return text


@dataclass(frozen=True)
class Sentence:
    text: str  # case kept, whitespace collapsed, symbols folded, line-end hyphens rejoined
    lower: str
    page: int  # 1-based: a page, or a section index for LaTeX sources (Paper.page_unit)
    section: str = ""  # the heading it is under, '' for front matter or unsectioned text

    @property
    def kind(self) -> str:
        """body, or what else it is: toc, prompt, caption, figure (see `sentence_kind`)."""
        return sentence_kind(self.text, self.section)

    @property
    def elsewhere(self) -> bool:
        """Not the paper's own statement about its method: references, related work,
        acknowledgements, the table of contents, appendix prompt examples, captions and
        figure text. No claim, quote or evidence of a mechanism comes from it."""
        return bool(_ELSEWHERE.match(self.section)) or self.kind != "body"


def sentence_kind(text: str, section: str = "") -> str:
    """body, toc (a contents entry), prompt (an appendix prompt or sample output),
    caption (a figure or table caption) or figure (labels and legends: no prose)."""
    if _TOC_HEADING.match(section.strip()) or _LEADERS.search(text):
        return "toc"
    if _PROMPT_SECTION.match(section.strip()) or _PROMPT_LINE.search(text):
        return "prompt"
    if _CAPTION_START.match(text):
        return "caption"
    words = re.findall(r"[A-Za-z]{2,}", text)
    if len(words) >= 6 and len(_FUNCTION_WORDS.findall(text)) * 12 < len(words):
        return "figure"
    return "body"


def sentences(paper: Paper) -> Iterator[Sentence]:
    """Sentences in reading order, each with the page it starts on.

    With sections (PDF, LaTeX, Markdown, HTML) a sentence runs on across line, column
    and page breaks, and a heading is never part of one: it comes as its own
    "# heading" sentence, the Markdown way (evidence of a mechanism, never a claim or a
    quote); without sections, page by page. Words
    hyphenated at a line end are rejoined ("compres-" + "sion"), compounds keep their
    hyphen ("key-" + "value") when the paper writes them so elsewhere.
    """
    words = _Vocabulary(paper.pages)
    if paper.sections:
        parts = [(s.text, s.page, s.heading) for s in paper.sections]
    else:
        parts = [(page, number, "") for number, page in enumerate(paper.pages, start=1)]
    for text, first_page, heading in parts:
        section = normalise(heading)
        if section.strip():  # "# heading", as Markdown writes it: it scores, is no claim
            yield Sentence(f"# {section}", f"# {section}".lower(), first_page, section)
        for block, page in _blocks(normalise(text), first_page):
            flat, pages = _join_lines(block, page, words)
            for start, sentence in _split(flat):
                if len(sentence) >= 3:
                    yield Sentence(sentence, sentence.lower(), pages(start), section)


def _blocks(text: str, page: int) -> Iterator[tuple[str, int]]:
    """Paragraph-like blocks with the page each starts on; \f advances the page."""
    pos = 0
    for m in [*_BLOCK.finditer(text), None]:
        end = m.start() if m else len(text)
        block = text[pos:end]
        lead = len(block) - len(block.lstrip("\f\n \t"))
        yield block[lead:], page + block[:lead].count("\f")
        page += block.count("\f")
        if m:
            page += m.group(0).count("\f")
            pos = m.end()


class _Vocabulary:
    """The words a paper uses, to rejoin words hyphenated at a line end correctly."""

    def __init__(self, pages: list[str]) -> None:
        text = normalise("\n".join(pages)).lower()
        text = re.sub(r"[a-z]+-\n\s*[a-z]+", " ", text)  # fragments of a broken word are no words
        self.words = set(re.findall(r"[a-z]+", text))
        self.compounds = set(re.findall(r"[a-z]+(?:-[a-z]+)+", text))

    def join(self, head: str, tail: str) -> str:
        """How "head-" at a line's end and "tail" on the next line make one word."""
        last = head.rsplit("-", 1)[-1].lower()
        if not tail[:1].islower() or not last:  # "DeepSeek-" + "V2": a name's own hyphen
            return f"{head}-{tail}"
        first = re.match(r"[a-z]*", tail).group(0)  # type: ignore[union-attr]
        if (last + first) in self.words:
            return head + tail
        if f"{last}-{first}" in self.compounds or "-" in head:
            return f"{head}-{tail}"
        if len(last) > 1 and len(first) > 2 and last in self.words and first in self.words:
            return f"{head}-{tail}"  # two words of the paper: a compound broken at its hyphen
        return head + tail


def _join_lines(block: str, page: int, words: _Vocabulary) -> tuple[str, Callable[[int], int]]:
    """A block's lines as one line, and the page of any offset in it."""
    flat = ""
    marks: list[tuple[int, int]] = [(0, page)]
    for raw in re.split(r"(\n|\f)", block):
        if raw == "\f":
            page += 1
            marks.append((len(flat), page))
            continue
        line = " ".join(raw.split()).lstrip("-*• ").strip() if not flat else " ".join(raw.split())
        if not line or raw == "\n":
            continue
        m = re.search(r"(\w[\w-]*)-$", flat)
        if m and re.match(r"\w", line):
            tail = re.match(r"\S+", line).group(0)  # type: ignore[union-attr]
            joined = words.join(m.group(1), tail)
            flat = flat[: m.start()] + joined + line[len(tail) :]
        else:
            flat = f"{flat} {line}" if flat else line
    flat = flat.strip()

    def page_at(offset: int) -> int:
        return next(p for start, p in reversed(marks) if start <= offset)

    return flat, page_at


def _split(flat: str) -> Iterator[tuple[int, str]]:
    pos = 0
    for m in [*_SENTENCE_END.finditer(flat), None]:
        end = m.start() if m else len(flat)
        sentence = flat[pos:end].strip()
        if sentence:
            yield pos, sentence
        pos = m.end() if m else len(flat)


def find_mechanisms(all_sentences: list[Sentence], catalog: Iterable[Recipe]) -> list[MechanismHit]:
    """Catalog mechanisms the paper describes, best first, each with up to 3 quotes.

    Only the paper's own text counts: references and related work name mechanisms
    that the paper cites, not ones it uses.
    """
    evidence = [s for s in all_sentences if not s.elsewhere]
    hits: list[MechanismHit] = []
    for recipe in catalog:
        score = 0.0
        quotes: list[Quote] = []
        for signature in recipe.signatures:
            pattern = re.compile(signature.pattern)
            matched = [s for s in evidence if pattern.search(s.lower)]
            score += signature.weight * min(len(matched), _MAX_COUNT_PER_SIGNATURE)
            for s in matched:
                if s.text.startswith("#") or _HEADING_LIKE.match(s.text):
                    continue  # a heading scores, but says too little to quote
                if len(quotes) < 3 and all(q.text != s.text for q in quotes):
                    quotes.append(Quote(text=s.text, page=s.page))
        if score >= recipe.min_score:
            hits.append(
                MechanismHit(name=recipe.key, title=recipe.title, score=score, quotes=quotes)
            )
    return sorted(hits, key=lambda h: (-h.score, h.name))


_SETUP_SECTION = re.compile(
    r"hyper-?\s?parameters?|(?:training|model|experimental) (?:setup|settings?|details)|"
    r"configurations?|implementation details",
    re.IGNORECASE,
)
_SETTING_CUE = re.compile(
    r"\bis set to\b|\bare set to\b|\bwe set\b|\bwe use\b|\bconsists? of\b|\bcomprises?\b",
    re.IGNORECASE,
)


def parse_value(text: str) -> float:
    """A stated number as written: "32,768" -> 32768, "1e-4" -> 0.0001."""
    return float(text.replace(",", ""))


def find_hyperparameters(all_sentences: list[Sentence], recipe: Recipe) -> list[Hyperparameter]:
    """The paper's setting of each hyperparameter.

    Where a paper states a value more than once, the configuration wins: a sentence in
    a hyper-parameters or setup section first, then one that sets it ("is set to",
    "consists of"), then the first statement (definitions precede ablations). A value
    in a future-work aside ("only 9 will be activated") is thus not read as the setting.
    """
    found: list[Hyperparameter] = []
    evidence = [s for s in all_sentences if not s.elsewhere]
    for spec in recipe.hyperparameters:
        patterns = [re.compile(p) for p in spec.patterns]
        best: tuple[int, Sentence, re.Match[str]] | None = None
        for s in evidence:
            match = next((m for p in patterns if (m := p.search(s.lower))), None)
            if match is None:
                continue
            rank = (
                0 if _SETUP_SECTION.search(s.section) else 1 if _SETTING_CUE.search(s.text) else 2
            )
            if best is None or rank < best[0]:
                best = (rank, s, match)
            if rank == 0:
                break
        if best is not None:
            _, s, match = best
            found.append(
                Hyperparameter(
                    name=spec.name,
                    value=parse_value(match.group(1)),
                    quote=Quote(text=s.text, page=s.page),
                )
            )
    return found


def claim_numbers(text: str) -> list[str]:
    """The numbers a sentence states as measurements: not section, table or figure
    numbers, and not years."""
    numbers: list[str] = []
    for m in _NUMBER.finditer(text):
        number = m.group(0).strip()
        if _POINTER.search(text[max(0, m.start() - 16) : m.start()]):
            continue
        if _YEAR.fullmatch(number):
            continue
        numbers.append(number)
    return numbers


def find_claims(all_sentences: list[Sentence]) -> list[Claim]:
    """Sentences of the paper's own text that state a number with a comparison or a gain."""
    claims: list[Claim] = []
    seen: set[str] = set()
    for s in all_sentences:
        if s.text in seen or s.elsewhere or _SETTING.search(s.text):
            continue
        if s.text.startswith("#") or _HEADING_LIKE.match(s.text):
            continue
        if len(re.findall(r"[A-Za-z]{2,}", s.text)) < 3:
            continue  # a table cell ("61.5%") or a label says nothing on its own
        numbers = claim_numbers(s.text)
        if numbers and _CLAIM_CUE.search(s.text):
            seen.add(s.text)
            claims.append(Claim(text=s.text, page=s.page, numbers=numbers))
    return claims


def digest(paper: Paper, catalog: dict[str, Recipe] | None = None) -> Digest:
    """Everything the Reader can say about a paper without a model."""
    catalog = CATALOG if catalog is None else catalog
    all_sentences = list(sentences(paper))
    mechanisms = find_mechanisms(all_sentences, catalog.values())
    hyperparameters: list[Hyperparameter] = []
    for hit in mechanisms:  # two recipes may read the same value (d_model): list it once
        for found in find_hyperparameters(all_sentences, catalog[hit.name]):
            if all(h.name != found.name for h in hyperparameters):
                hyperparameters.append(found)
    return Digest(
        title=paper.title,
        mechanisms=mechanisms,
        hyperparameters=hyperparameters,
        claims=find_claims(all_sentences),
    )
