"""URLs read as text, before the library that takes them reads them."""

from __future__ import annotations

__all__ = ["at_after"]


def at_after(text: str, stops: str, query: str = "") -> bool:
    """Whether an ``@`` comes after the first of ``stops`` in ``text`` (False if none of them
    is in it) and, given ``query``, before the query string that the first of ``query``
    starts, looked for after the user name and password (which an ``@`` stop ends).

    A URL library ends the user name and password at the first of its stops (libpq: ``@`` or
    ``/``; urllib: ``/``, ``?`` or ``#``): an ``@`` left after it means a password holding
    one of them unencoded, whose pieces the library would read as the host, port or path.
    """
    first = min((i for i in map(text.find, stops) if i >= 0), default=-1)
    if first < 0:
        return False
    start = first + 1 if text[first] == "@" else 0
    end = min((i for i in (text.find(c, start) for c in query) if i >= 0), default=len(text))
    return "@" in text[first + 1 : end]
