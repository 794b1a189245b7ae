"""The findings store's filters and ordering, without Chroma or a model."""

from __future__ import annotations

import pytest

from memory.store import Filters, newest_first
from reprodesk.schemas import Finding, UserError


def _f(id_: str, date: str, run_id: str) -> Finding:
    return Finding(
        id=id_,
        paper="p",
        source="s",
        mechanism="mla",
        claim="c",
        metric="m",
        verdict="reproduced",
        setup="cpu",
        evidence="e",
        date=date,
        run_id=run_id,
    )


def test_no_filter_is_no_where_clause() -> None:
    assert Filters().where() is None


def test_one_filter_is_a_bare_clause_and_several_are_anded() -> None:
    assert Filters(mechanism="mla").where() == {"mechanism": "mla"}
    assert Filters(verdict="partial", run_id="r1").where() == {
        "$and": [{"verdict": "partial"}, {"run_id": "r1"}]
    }


def test_paper_matches_title_or_source_case_folded() -> None:
    assert Filters(paper="  DeepSeek-V2 ").where() == {
        "$or": [{"paper_key": "deepseek-v2"}, {"source_key": "deepseek-v2"}]
    }


def test_dates_become_comparable_numbers() -> None:
    assert Filters(since="2025-01-31", until="2025-12-01").where() == {
        "$and": [{"day": {"$gte": 20250131}}, {"day": {"$lte": 20251201}}]
    }


@pytest.mark.parametrize("bad", ["2025-13-01", "yesterday", "2025/01/01", ""])
def test_a_bad_date_is_a_user_error_naming_it(bad: str) -> None:
    with pytest.raises(UserError, match=r"since .*expected a date like"):
        Filters(since=bad).where()


def test_an_unknown_verdict_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown verdict 'sort of'"):
        Filters(verdict="sort of").where()


def test_newest_first_then_run_then_id() -> None:
    a = _f("r2:c2", "2025-01-01", "r2")
    b = _f("r2:c1", "2025-01-01", "r2")
    c = _f("r1:c9", "2025-01-01", "r1")
    d = _f("r0:c1", "2025-02-01", "r0")

    assert newest_first([a, b, c, d]) == [d, c, b, a]
