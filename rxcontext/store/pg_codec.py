"""Text as PostgreSQL can hold it, given back exactly as the SQLite store gives it back.

PostgreSQL's ``text`` refuses NUL (U+0000), which SQLite stores and Python strings carry (a
model may emit one; a context may be named with one). Every string the PostgreSQL store
writes goes through :func:`enc` and every string it reads through :func:`dec`:

* NUL becomes ``ESC "0"`` and ``ESC`` itself becomes ``ESC ESC``, with ``ESC`` = U+FFFF, a
  Unicode noncharacter that text almost never holds, so nearly every string passes through
  both functions untouched (one C-speed scan each way). The mapping is injective, so
  equality (``WHERE name = …``, ``UNIQUE``) means the same on the encoded form.
* Surrogates are handled before this, by the same ``_storable`` as SQLite (content,
  checkpoint text and JSON): what SQLite turns into U+FFFD, so does PostgreSQL.
* JSON (provider metadata, tool definitions, usage, tool-call fragments) is stored as the
  same text SQLite stores, in ``text`` columns. ``json`` would reject the ``NaN`` and
  ``Infinity`` that Python's ``json.dumps`` writes and SQLite keeps, which would lose a reply at
  commit time; ``jsonb`` would also reorder keys and refuse ``\\u0000``.
"""

from __future__ import annotations

import re

__all__ = ["ESC", "dec", "dec_opt", "enc", "enc_opt"]

ESC = "\uffff"
_NUL = "\x00"
_PAIR = re.compile(ESC + "(.)", re.DOTALL)


def _unescape(match: re.Match[str]) -> str:
    return _NUL if match.group(1) == "0" else ESC


def enc(text: str) -> str:
    """``text`` with NUL and ESC escaped, so PostgreSQL's ``text`` accepts it."""
    if _NUL in text or ESC in text:
        # A string UTF-8 refuses (a lone surrogate) fails here with the very error, position
        # included, that it gives unescaped, as it does with SQLite.
        text.encode("utf-8")
        return text.replace(ESC, ESC + ESC).replace(_NUL, ESC + "0")
    return text


def dec(text: str) -> str:
    """The inverse of :func:`enc`."""
    if ESC in text:
        return _PAIR.sub(_unescape, text)
    return text


def enc_opt(text: str | None) -> str | None:
    """:func:`enc`, passing ``None`` through."""
    return None if text is None else enc(text)


def dec_opt(text: str | None) -> str | None:
    """:func:`dec`, passing ``None`` through."""
    return None if text is None else dec(text)
