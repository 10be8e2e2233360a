"""Which store the end-to-end tests' helpers open: SQLite by default, either store under
the ``both_stores`` fixture (tests/conftest.py), which runs a test once per store.

Helpers call :func:`open_store` where they used ``rxcontext.open(":memory:")``: with SQLite
every call gives a private in-memory database; with PostgreSQL every call gives that test's
own database, emptied first (as a new in-memory database is empty: a hypothesis test makes
one per example), through the same store while it is open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import rxcontext

Opener = Callable[..., Any]


def _memory(**options: Any) -> Any:
    return rxcontext.open(":memory:", **options)


_opener: Opener = _memory


def open_store(**options: Any) -> Any:
    """A store of the kind this test runs on (see the module docstring)."""
    return _opener(**options)


def use(opener: Opener | None) -> None:
    """Make :func:`open_store` use ``opener`` (None: back to SQLite in memory)."""
    global _opener
    _opener = opener or _memory


def scalar(store: Any, sql: str) -> Any:
    """The first column of the first row of a parameterless query, read past the store's
    API (either store)."""
    if isinstance(store, rxcontext.SQLiteStore):
        return store._db().execute(sql).fetchone()[0]
    with store._runner.pool().connection() as conn:
        row = conn.execute(sql).fetchone()
    return row[0]
