"""What goes into one cell of a write-up's tables: metric lookups, safe cell text, and
whether (and as what) a quote prints a paper value."""

from __future__ import annotations

from typing import Any

from reprodesk.schemas import Quote
from tools.evidence import fmt, numbers_in


def metric_at(metrics: dict[str, Any], path: str) -> Any:
    """Follow a dotted path (list indices as numbers) into a metrics object."""
    node: Any = metrics
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def cell(text: str) -> str:
    """Text made safe for a Markdown table cell: a '|' would end the cell."""
    return " ".join(text.replace("|", "\\|").split())


def excerpt(text: str, number: str, width: int = 90) -> str:
    """The part of a quote around the number it states."""
    at = text.find(number)
    if len(text) <= width or at < 0:
        return text
    start = max(0, at - width // 2)
    end = min(len(text), start + width)
    # Cut at spaces, never inside a word or a number.
    start = text.rfind(" ", 0, start + 1) + 1 if start else 0
    end = text.find(" ", end) if text.find(" ", end) != -1 else len(text)
    return ("…" if start else "") + text[start:end].strip() + ("…" if end < len(text) else "")


def written_as(quote: Quote, value: float) -> str:
    """The number in `quote` equal to `value`, as written; fmt(value) when there is none."""
    for number in numbers_in(quote.text):
        digits = number.rstrip("%")
        stated = float(digits) / (100.0 if number.endswith("%") else 1.0)
        if abs(stated - value) <= 1e-12 * max(1.0, abs(value)):
            return number
    return fmt(value)


def stated_in(quote: Quote, value: float) -> tuple[str, float] | None:
    """The number as written in `quote` that states `value` (to its rounding), if any.

    Papers round: 0.017578 is stated as "1.76%". A stated number matches when it is
    within half a unit of its last printed digit.
    """
    if value == 0:
        return None
    for number in numbers_in(quote.text):
        digits = number.rstrip("%")
        if len(digits.replace(".", "").lstrip("0")) < 2:
            continue  # "1", "2", "0.5": too common to be sure the paper means this value
        scale = 100.0 if number.endswith("%") else 1.0
        stated = float(digits) / scale
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        if abs(stated - value) <= 0.5 * 10.0**-decimals / scale + 1e-12:
            return number, stated
    return None


def evaluate(formula: str, values: dict[str, float]) -> float:
    """A recipe's claim formula ("(d_c + d_rope) / (2 * d_head)") at the given values.

    Only numbers, names, + - * / and parentheses: the formula comes from a job's output,
    which is data, never code. A name without a value raises KeyError(name).
    """
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
    ops[ast.Div] = operator.truediv

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"not an arithmetic formula: {formula!r}")

    return walk(ast.parse(formula, mode="eval"))


def formula_names(formula: str) -> list[str]:
    """The names a formula uses, in order of first use."""
    import ast

    return list(
        dict.fromkeys(
            n.id for n in ast.walk(ast.parse(formula, mode="eval")) if isinstance(n, ast.Name)
        )
    )
