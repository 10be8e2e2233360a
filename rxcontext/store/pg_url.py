"""PostgreSQL URLs read as text, before libpq reads them: whether libpq would take part of
the user name or password for the host, port or database, and what a message may show.

libpq ends the user name and password at the *first* ``@`` and gives up looking for them
at the first ``/``, so a password holding either, not percent-encoded
(``postgresql://app:Zq8Sec/ret@db/chat``, ``postgresql://app:p@ss@db/chat``), is read as
a host named ``app`` with port ``Zq8Sec``, or a host named ``ss@db``. A message built from
libpq's reading would print those pieces. Read as text, everything between ``://`` and the
*last* ``@`` is the user name and password instead.
"""

from __future__ import annotations

from .._urls import at_after

__all__ = ["SCHEMES", "ambiguous", "is_postgres_url", "libpq_url", "redact_text"]

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")
"""A PostgreSQL URL's schemes (in any case): libpq's two, and SQLAlchemy's for its libpq
drivers (``DATABASE_URL`` as SQLAlchemy writes it), whose ``+driver`` libpq does not take."""


def _scheme(target: str) -> str | None:
    scheme, sep, _ = target.partition("://")
    return scheme.lower() if sep else None


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` is a ``postgresql://`` (``postgres://``,
    ``postgresql+psycopg://``) URL, not a file path."""
    return isinstance(target, str) and _scheme(target) in SCHEMES


def libpq_url(url: str) -> str:
    """``url`` as libpq takes it: its scheme in lower case, without a ``+driver``."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in SCHEMES:
        return scheme.lower().split("+", 1)[0] + sep + rest
    return url


def _after_scheme(url: str) -> str | None:
    _, sep, rest = url.partition("://")
    return rest if sep else None


def ambiguous(url: str) -> bool:
    """Whether an ``@`` that libpq would not take as the end of the user name and password
    is left before the query string: an unencoded ``/`` or ``@`` in them (or an unencoded
    ``@`` in the host or database name, which cannot be told apart from that)."""
    rest = _after_scheme(url)
    # libpq's own scan for the user name and password: they end at the first '@' or '/'.
    return rest is not None and at_after(rest, "@/", query="?")


def redact_text(url: str) -> str:
    """``postgresql://user@host:port/db`` from the text: the user name is what comes before
    the first ``:`` of everything up to the last ``@``; the rest of that (the password) and
    the query string are left out."""
    rest = _after_scheme(url) or ""
    userinfo, at, host_part = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"postgresql://{user}{at}{host_part.split('?', 1)[0]}"
