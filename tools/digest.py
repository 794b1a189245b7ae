"""Offline, deterministic digest of a paper: mechanisms, hyperparameters, claims.

Works sentence by sentence on each page so that every finding carries the quote
and the page it came from. The text is untrusted data: it is only matched
against the catalog's patterns, never interpreted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from recipes.catalog import CATALOG, Recipe
from reprodesk.schemas import Claim, Digest, Hyperparameter, MechanismHit, Paper, Quote

# Symbol spellings papers use for the same quantity, folded to one form. Order
# matters: the decorated forms (d_h^R, d_c') must be folded before the plain ones.
_SYMBOLS: tuple[tuple[str, str], ...] = (
    (r"\bd\s*_?\s*\{?\s*h\s*\}?\s*\^\s*\{?\s*R(?:\s*\})?", "d_h^R"),  # d_h^R, d_{h}^{R}
    (r"\bd\s*\^\s*\{?\s*R\s*\}?\s*_\s*\{?\s*h(?:\s*\})?", "d_h^R"),  # d^R_h
    (r"\bdR\s?h\b", "d_h^R"),  # pypdf's rendering of 𝑑𝑅 ℎ
    (r"\bd\s*['′]\s*_?\s*c\b", "d_c'"),  # d′c
    (r"\bd\s*_?\s*\{?\s*c\s*\}?\s*['′]", "d_c'"),  # d_c', d_c′
    (r"\bd\s*_?\s*\{?\s*c(?:\s*\})?\b(?!')", "d_c"),  # dc, d_c, d_{c}
    (r"\bd\s*_?\s*\{?\s*h(?:\s*\})?\b(?![\^'])", "d_h"),  # dh, d_h, d_{h}
    (r"\bn\s*_?\s*\{?\s*h(?:\s*\})?\b", "n_h"),  # nh, n_h
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_BLOCK = re.compile(r"\n\s*\n|\n\s*(?=[-*•]\s)|\n(?=#)")
_NUMBER = re.compile(r"(?<![\w.^])\d+(?:[.,]\d+)?(?:\s?%|x\b)?")
_CLAIM_CUE = re.compile(
    r"%|\btimes\b|\d(?:\.\d+)?x\b|×|reduc|boost|improv|faster|slower|fewer|less than|"
    r"more than|saves?\b|outperform|equal to|speed-?up|higher|lower",
    re.IGNORECASE,
)
_SETTING = re.compile(r"\bis set to\b|\bwe set\b|\bare set to\b", re.IGNORECASE)
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
    text: str  # case kept, whitespace collapsed, symbols folded
    lower: str
    page: int  # 1-based


def sentences(paper: Paper) -> Iterator[Sentence]:
    """Sentences page by page; a sentence that spans two pages is split there."""
    for number, page in enumerate(paper.pages, start=1):
        for block in _BLOCK.split(normalise(page)):
            flat = " ".join(block.split()).lstrip("-*• ").strip()
            if not flat:
                continue
            for sentence in _SENTENCE_END.split(flat):
                sentence = sentence.strip()
                if len(sentence) >= 3:
                    yield Sentence(sentence, sentence.lower(), number)


def find_mechanisms(all_sentences: list[Sentence], catalog: Iterable[Recipe]) -> list[MechanismHit]:
    hits: list[MechanismHit] = []
    for recipe in catalog:
        score = 0.0
        quotes: list[Quote] = []
        for signature in recipe.signatures:
            pattern = re.compile(signature.pattern)
            matched = [s for s in all_sentences if pattern.search(s.lower)]
            score += signature.weight * min(len(matched), _MAX_COUNT_PER_SIGNATURE)
            for s in matched:
                if s.text.startswith("#"):
                    continue  # a heading scores, but says too little to quote
                if len(quotes) < 3 and all(q.text != s.text for q in quotes):
                    quotes.append(Quote(text=s.text, page=s.page))
        if score >= recipe.min_score:
            hits.append(
                MechanismHit(name=recipe.key, title=recipe.title, score=score, quotes=quotes)
            )
    return sorted(hits, key=lambda h: (-h.score, h.name))


def find_hyperparameters(all_sentences: list[Sentence], recipe: Recipe) -> list[Hyperparameter]:
    """First statement of each hyperparameter wins: definitions precede ablations."""
    found: list[Hyperparameter] = []
    for spec in recipe.hyperparameters:
        patterns = [re.compile(p) for p in spec.patterns]
        for s in all_sentences:
            match = next((m for p in patterns if (m := p.search(s.lower))), None)
            if match:
                value = float(match.group(1))
                found.append(
                    Hyperparameter(
                        name=spec.name, value=value, quote=Quote(text=s.text, page=s.page)
                    )
                )
                break
    return found


def find_claims(all_sentences: list[Sentence]) -> list[Claim]:
    claims: list[Claim] = []
    seen: set[str] = set()
    for s in all_sentences:
        if s.text in seen or _SETTING.search(s.text) or s.text.startswith("#"):
            continue
        numbers = [n.strip() for n in _NUMBER.findall(s.text)]
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
    for hit in mechanisms:
        hyperparameters.extend(find_hyperparameters(all_sentences, catalog[hit.name]))
    return Digest(
        title=paper.title,
        mechanisms=mechanisms,
        hyperparameters=hyperparameters,
        claims=find_claims(all_sentences),
    )
