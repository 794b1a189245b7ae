"""Number tracing: what the verifier counts, and that it rejects an untraced number."""

from __future__ import annotations

from reprodesk.schemas import Quote
from tools.evidence import EvidenceBook, fmt, numbers_in, untraceable


def test_numbers_outside_code_links_and_page_refs() -> None:
    text = (
        "MLA holds 72 vs 4096 (1.758%) and 2.25 groups; fp32, V2 and d_h^R are names. "
        "`--n-heads 128` ![f](figures/a1.png) see p.3\n```sh\npython mla.py --d-c 32\n```\n"
        "diff 3.1e-07, mean 1.2 ± 0.3 ms"
    )
    assert numbers_in(text) == ["72", "4096", "1.758%", "2.25", "3.1e-07", "1.2", "0.3"]


def test_fmt_is_stable() -> None:
    assert [fmt(v) for v in (72.0, 2.25, 0.017578125, 3.14e-7, 0.0, 1536)] == [
        "72",
        "2.25",
        "0.01758",
        "3.1e-07",
        "0",
        "1536",
    ]


def test_book_traces_what_it_printed_and_nothing_else() -> None:
    book = EvidenceBook()
    text = (
        f"measured {book.measured('a', 72, 'elements', job='k', metric='variants.mla.x')} "
        f"ratio {book.measured('r', 0.0175, '%', job='k', metric='m', percent=True)} "
        f"quote: {book.paper_quote('q', Quote(text='reduces the KV cache by 93.3%', page=1))}"
    )
    assert untraceable(text, book.items) == []
    assert untraceable(text + " and 42 more", book.items) == ["42"]
    assert book.items[0].source == {
        "job": "k",
        "metric": "variants.mla.x",
        "artifact": "results/k/metrics.json",
    }
