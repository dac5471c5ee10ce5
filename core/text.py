"""Text a database can store: no NUL character and no lone surrogate (JSON can spell both; a browser form cannot)."""

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
