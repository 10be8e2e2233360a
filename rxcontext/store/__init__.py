"""Storage behind a small interface: :class:`Store`, with SQLite (the embedded default) and
PostgreSQL (shared by many processes; the ``postgres`` extra) implementations.

Nothing here imports the PostgreSQL driver until a ``postgresql://`` URL is opened.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from .base import CheckpointDraft, RecordDraft, ReplyEnd, ReplyTicket, Store
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
    "is_postgres_url",
    "open_any",
    "open_postgres",
    "open_store",
    "without_password",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` is a ``postgresql://`` (or ``postgres://``) URL, not a file path."""
    return isinstance(target, str) and target[:13].lower().startswith(_POSTGRES_SCHEMES)


def without_password(target: str) -> str:
    """``target`` for messages: a URL's password (``scheme://user:password@…``) left out."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1@", target)


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
    """A PostgreSQL store for a ``postgresql://`` URL, else the SQLite store at that path;
    ``fanout`` (``"memory"``, a ``redis://`` URL, a ready ``Fanout``, None) is attached to
    it for ``ContextWindow.watch``."""
    from ..fanout import attach, open_fanout

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
