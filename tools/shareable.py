"""What must not leave the bank in a write-up: secrets, account and card numbers,
personal contact data, internal host names.

One list, used by the verifier (`tools.verify`) and the Finance-Critic, so that both
refuse the same things. Each hit carries the offending text, so a reviewer sees what
to remove. Patterns are deliberately narrow where a write-up is full of numbers: a
card number must pass the Luhn check, an account number needs the word "account"
(or an IBAN's structure), a phone number a leading "+" or a "tel" cue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Leak:
    what: str  # "an API key", "a card number", ...
    text: str  # the offending text, as written


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an API key", re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")),
    ("an API key", re.compile(r"\b(?:ghp|gho|ghs|github_pat)_[A-Za-z0-9_]{20,}")),
    ("an API key", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("an API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    (
        "an API key",
        re.compile(
            r"\b(?:api[_-]?key|secret|token|password|passwd)\s*[:=]\s*['\"]?[A-Za-z0-9_\-./+]{12,}",
            re.IGNORECASE,
        ),
    ),
    ("an AWS access key", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9._-]{20,}")),
    ("an e-mail address", re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]*[A-Za-z]\b")),
    ("an IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b")),
    (
        "an account number",
        re.compile(
            r"\b(?:account|acct|a/c|konto)\s*(?:no\.?|number|nr\.?|#)?\s*[:#]?\s*\d[\d -]{5,}\d",
            re.IGNORECASE,
        ),
    ),
    (
        "a phone number",
        re.compile(
            r"(?:\+\d{1,3}[\s-]?\(?\d{1,4}\)?(?:[\s-]?\d{2,4}){2,4})|\btel\.?:?\s*\d[\d -]{6,}"
        ),
    ),
    ("a home directory path", re.compile(r"(?:/home/|/Users/|/root/)[\w.-]+")),
    (
        "an internal host name",
        re.compile(
            r"\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:internal|intranet|corp|local|lan|"
            r"localdomain)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "a private IP address",
        re.compile(r"\b(?:10\.\d{1,3}|192\.168|172\.(?:1[6-9]|2\d|3[01]))\.\d{1,3}\.\d{1,3}\b"),
    ),
)
_CARD = re.compile(r"(?<![\d.])(?:\d[ -]?){12,18}\d(?![\d.])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def leaks(text: str) -> list[Leak]:
    """Everything in `text` that must not be shared, each with the text as written."""
    found: list[Leak] = []
    for what, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            found.append(Leak(what, m.group(0).strip()))
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and _luhn(digits) and len(set(digits)) > 1:
            found.append(Leak("a card number", m.group(0).strip()))
    unique: dict[tuple[str, str], Leak] = {}
    for leak in found:
        unique.setdefault((leak.what, leak.text), leak)
    return list(unique.values())
