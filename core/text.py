"""Text helpers: what a database can store (no NUL character, no lone surrogate: JSON can spell both, a browser form
cannot), and how JSON names a value's type, for refusals."""

from __future__ import annotations


def unstorable_text_problem(text: str, where: str) -> str | None:
    """What is wrong with ``text`` for PostgreSQL, in a sentence about ``where``; None when it can be stored."""
    if "\x00" in text:
        return f"{where} must not contain NUL characters (\\u0000)."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{where} must be valid UTF-8 text: it holds a lone surrogate ({text[exc.start]!a})."
    return None


def json_type(value) -> str:
    """How JSON names the type of ``value``: object, array, string, number, boolean, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), type(value).__name__)
