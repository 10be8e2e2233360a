"""Storage behind a small interface: :class:`Store`, with SQLite (the embedded default) and
PostgreSQL (shared by many processes; the ``postgres`` extra) implementations.

Nothing here imports the PostgreSQL driver until a ``postgresql://`` URL is opened.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ..errors import StoreError, UnsupportedURL
from .base import CheckpointDraft, RecordDraft, ReplyEnd, ReplyTicket, Store
from .pg_url import is_postgres_url
from .sqlite import SQLiteStore, open_store

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = [
    "CheckpointDraft",
    "RecordDraft",
    "ReplyEnd",
    "ReplyTicket",
    "SQLiteStore",
    "Store",
    "check_target",
    "is_postgres_url",
    "open_any",
    "open_postgres",
    "open_store",
    "without_password",
]

_SCHEME_PREFIX = re.compile(r"\s*[A-Za-z][\w+.-]*(?::/+|/+)")
"""A scheme and the slashes after it, typos included (``redis//``, ``postgresql:/``)."""

_URL_LIKE = re.compile(r"\s*[A-Za-z][\w+.-]+:/")
_SLASHES_TYPO = re.compile(r"\s*[A-Za-z][\w+.-]*//")
"""A scheme with its ``:`` left out (``redis//host``), not a relative path (``data/chat.db``)."""


def without_password(target: str) -> str:
    """``target`` for messages: whatever may be a URL's password left out, from the first
    ``:`` after the scheme to the *last* ``@`` (``scheme://user:password@host`` gives
    ``scheme://user@host``), however malformed the URL: a password holding ``@`` or ``/``,
    a mistyped scheme (``redis//:password@host``). A URL's query and fragment are left out
    too (libpq and redis-py take ``?password=``); a file path is shown whole."""
    at = target.rfind("@")
    prefix = _SCHEME_PREFIX.match(target)
    shown = target
    if at >= 0:
        colon = target.find(":", prefix.end() if prefix else 0, at)
        shown = target if colon < 0 else target[:colon] + target[at:]
    if _URL_LIKE.match(shown) or _SLASHES_TYPO.match(shown) or "://" in shown:
        # After the password is out: a '?' or '#' may have been part of it.
        shown = re.split(r"[?#]", shown, maxsplit=1)[0]
    return shown


def check_target(target: str | os.PathLike[str]) -> None:
    """Raise :class:`~rxcontext.UnsupportedURL` if ``target`` looks like a URL (``scheme:/``,
    or ``://`` anywhere) but not a PostgreSQL one, rather than let it name an SQLite file:
    a typo in the scheme, a leading space, another database's URL."""
    text = os.fspath(target) if isinstance(target, os.PathLike) else target
    if not isinstance(text, str) or is_postgres_url(text):
        return
    if not (_URL_LIKE.match(text) or "://" in text):
        return
    raise UnsupportedURL(
        f"cannot open {without_password(text)!r}: it looks like a URL, and rxcontext opens"
        " postgresql:// URLs (postgres://, postgresql+psycopg:// too) and SQLite file paths;"
        " check the scheme for a typo and the URL for a leading space"
    )


def open_postgres(url: str, **options: Any) -> PostgresStore:
    """Open the PostgreSQL store at ``url`` (needs ``pip install 'rxcontext[postgres]'``)."""
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise StoreError(
            "opening a postgresql:// URL needs rxcontext's PostgreSQL support, which is not"
            " installed: pip install 'rxcontext[postgres]' (psycopg and psycopg-pool)"
            f" [{exc}]"
        ) from exc
    return PostgresStore(url, **options)


def open_any(target: str | os.PathLike[str], **options: Any) -> SQLiteStore | PostgresStore:
    """A PostgreSQL store for a ``postgresql://`` URL, else the SQLite store at that path
    (another URL raises :class:`~rxcontext.UnsupportedURL`);
        ``fanout`` (``"memory"``, a ``redis://`` URL, a ready ``Fanout``, None) is attached to
        it for ``ContextWindow.watch``."""
    from ..fanout import attach, open_fanout

    check_target(target)
    fanout = open_fanout(options.pop("fanout", None))
    store: SQLiteStore | PostgresStore
    if is_postgres_url(target):
        assert isinstance(target, str)
        store = open_postgres(target, **options)
    else:
        store = SQLiteStore(target, **options)
    if fanout is not None:
        attach(store, fanout)
    return store
