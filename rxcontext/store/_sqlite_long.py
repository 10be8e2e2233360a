"""Long text values written into their row a slice at a time (SQLite's incremental I/O).

Bound as a ``str``, a long reply is copied three times on its way into a row: ``sqlite3``
encodes it to UTF-8 (a copy CPython then keeps with the ``str`` for as long as it lives, for
any non-ASCII text), SQLite copies the bound value (and keeps that copy in its statement cache
until the statement runs again), and builds the row's record with a third. A metadata JSON
holding a long reasoning text is first built whole as a ``str`` as well (twice the text: the
stored format keeps it in ``thinking`` and in its block), then parsed back for the returned
record (two more copies).

A long value here goes in as a placeholder of its UTF-8 size instead
(``CAST(zeroblob(n) AS TEXT)``: SQLite's zeroed value and the record, freed when the insert
ends), and its slices, encoded one at a time, are written over the placeholder through a blob
handle (:meth:`sqlite3.Connection.blobopen`, which writes a TEXT value in place). The stored
value is the same TEXT, byte for byte, as binding the whole ``str`` would store
(``tests/test_store.py``); nothing of it is held whole but the caller's own text.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import _sqlite_rows as rows
from ._thinking import unpack

__all__ = ["LONG", "Long", "json_value", "text_value", "write"]

LONG = 1 << 20
"""Characters from which a value is written in slices."""

SLICE = 1 << 18
"""Characters encoded and written at a time."""

_INCREMENTAL = hasattr(sqlite3.Connection, "blobopen")
"""False where SQLite was built without incremental I/O: every value is then bound whole."""


class Long:
    """A long value to write in slices: its pieces, in order (each call starts them again),
    and its UTF-8 size."""

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: Callable[[], Iterator[str]]) -> None:
        self.pieces = pieces
        self.size = sum(len(p) if p.isascii() else len(p.encode()) for p in pieces())


def text_value(text: str) -> str | Long:
    """``text`` (already :func:`rows.storable`) as a column value: itself, or a :class:`Long`."""
    if len(text) < LONG or not _INCREMENTAL:
        return text

    def pieces() -> Iterator[str]:
        for i in range(0, len(text), SLICE):
            yield text[i : i + SLICE]

    return Long(pieces)


def json_value(value: Mapping[str, Any]) -> tuple[str | Long | None, Any]:
    """The metadata column value of ``value`` and what reading it back gives.

    The column value is what :func:`rows.to_json` makes — the same characters — either as a
    ``str`` or, when ``value`` holds a long string, as a :class:`Long`: the JSON around the
    long strings is encoded at once, each long string escaped a slice at a time. What a read
    gives back is built from the short JSON parsed and the long strings themselves (made
    storable), not by parsing the long JSON again.
    """
    plain = dict(value)
    if not plain or not _INCREMENTAL or not _has_long(plain.values()):
        text = rows.to_json(plain)
        return text, rows.record_metadata(text) if text else {}
    longs: list[str] = []
    nonce = uuid.uuid4().hex

    def swap(v: Any) -> Any:
        if isinstance(v, str):
            if len(v) < LONG:
                return v
            longs.append(v)
            return f"{nonce}{len(longs) - 1}"
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [swap(x) for x in v]
        return v

    skeleton = swap(plain)
    short = rows.to_json(skeleton)
    assert short is not None
    kept = [rows.storable(s) for s in longs]
    token = re.compile(f'"{nonce}([0-9]+)"')

    def pieces() -> Iterator[str]:
        at = 0
        for found in token.finditer(short):
            yield short[at : found.start()]
            yield '"'
            long = longs[int(found.group(1))]
            for a, b in rows.slices(long, SLICE):
                yield rows.storable(json.dumps(long[a:b], ensure_ascii=False)[1:-1])
            yield '"'
            at = found.end()
        yield short[at:]

    def restore(v: Any) -> Any:
        if isinstance(v, str) and v.startswith(nonce):
            return kept[int(v[len(nonce) :])]
        if isinstance(v, dict):
            return {k: restore(x) for k, x in v.items()}
        if isinstance(v, list):
            return [restore(x) for x in v]
        return v

    return Long(pieces), unpack(restore(json.loads(short)))


def _has_long(values: Iterable[Any]) -> bool:
    """Whether ``values`` hold a long string anywhere (this runs on every record's metadata:
    strings and numbers are checked in the loop, only containers cost a call)."""
    for v in values:
        if isinstance(v, str):
            if len(v) >= LONG:
                return True
        elif isinstance(v, dict):
            if _has_long(v.values()):
                return True
        elif isinstance(v, list | tuple) and _has_long(v):
            return True
    return False


def write(db: sqlite3.Connection, table: str, column: str, rowid: int, value: Long) -> None:
    """Write ``value`` over its placeholder in ``table``'s row ``rowid``."""
    with db.blobopen(table, column, rowid) as blob:
        for piece in value.pieces():
            if piece:
                blob.write(piece.encode())
