"""Long text values written into their row a slice at a time (SQLite's incremental I/O).

Bound as a ``str``, a long reply is copied three times on its way into a row: ``sqlite3``
encodes it to UTF-8 (a copy CPython then keeps with the ``str`` for as long as it lives, for
any non-ASCII text), SQLite copies the bound value (and keeps that copy in its statement cache
until the statement runs again), and builds the row's record with a third. A metadata JSON
holding a long reasoning text is first built whole as a ``str`` as well (twice the text: the
stored format keeps it in ``thinking`` and in its block), then parsed back for the returned
record (two more copies).

A long value here goes in as a placeholder of its size instead
(``CAST(zeroblob(n) AS TEXT)``: SQLite's zeroed value and the record, freed when the insert
ends), and its slices, encoded one at a time, are written over the placeholder through a blob
handle (:meth:`sqlite3.Connection.blobopen`, which writes a TEXT value in place). The stored
value is the same TEXT, byte for byte, as binding the whole ``str`` would store
(``tests/test_store.py``); nothing of it is held whole but the caller's own text.

A blob handle reads and writes the row's bytes as they are: in the database's own encoding
(``PRAGMA encoding``, UTF-16 in a file its user made so before ``rxcontext.open``), which
:func:`write`, :func:`read` and :func:`stored_size` take as Python's codec
(``tests/test_long_utf16.py``).
"""

from __future__ import annotations

import codecs
import json
import re
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from ..errors import StoreError
from . import _sqlite_rows as rows
from ._thinking import unpack

__all__ = ["LONG", "Long", "gather", "json_value", "read", "stored_size", "text_value", "write"]

LONG = 1 << 20
"""Characters from which a value is written in slices."""

SLICE = 1 << 18
"""Characters encoded and written at a time."""

INCREMENTAL = hasattr(sqlite3.Connection, "blobopen")
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
    if len(text) < LONG or not INCREMENTAL:
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

    A string value may also be given as a :class:`Long` (its pieces storable: a reply's
    reasoning from its checkpoint's parts); what a read gives back is then a function that
    makes it (the string gathered from the pieces), to call once the value is written.
    """
    plain = dict(value)
    if not plain or not INCREMENTAL or not _has_long(plain.values()):
        text = rows.to_json(plain)
        return text, rows.record_metadata(text) if text else {}
    longs: list[str | Long] = []
    nonce = uuid.uuid4().hex

    def swap(v: Any) -> Any:
        if isinstance(v, Long):
            longs.append(v)
            return f"{nonce}{len(longs) - 1}"
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
    token = re.compile(f'"{nonce}([0-9]+)"')

    def escaped(long: str | Long) -> Iterator[str]:
        for piece in long.pieces() if isinstance(long, Long) else (long,):
            for a, b in rows.slices(piece, SLICE):
                yield rows.storable(json.dumps(piece[a:b], ensure_ascii=False)[1:-1])

    def pieces() -> Iterator[str]:
        at = 0
        for found in token.finditer(short):
            yield short[at : found.start()]
            yield '"'
            yield from escaped(longs[int(found.group(1))])
            yield '"'
            at = found.end()
        yield short[at:]

    def read_back() -> dict[str, Any]:
        kept = [gather(s.pieces) if isinstance(s, Long) else rows.storable(s) for s in longs]

        def restore(v: Any) -> Any:
            if isinstance(v, str) and v.startswith(nonce):
                return kept[int(v[len(nonce) :])]
            if isinstance(v, dict):
                return {k: restore(x) for k, x in v.items()}
            if isinstance(v, list):
                return [restore(x) for x in v]
            return v

        return unpack(restore(json.loads(short)))

    if any(isinstance(s, Long) for s in longs):
        return Long(pieces), read_back
    return Long(pieces), read_back()


def _has_long(values: Iterable[Any]) -> bool:
    """Whether ``values`` hold a long string anywhere (this runs on every record's metadata:
    strings and numbers are checked in the loop, only containers cost a call)."""
    for v in values:
        if isinstance(v, str):
            if len(v) >= LONG:
                return True
        elif isinstance(v, Long):
            return True
        elif isinstance(v, dict):
            if _has_long(v.values()):
                return True
        elif isinstance(v, list | tuple) and _has_long(v):
            return True
    return False


def stored_size(value: Long, codec: str) -> int:
    """``value``'s size in bytes in the database's encoding ``codec`` (its placeholder's):
    :attr:`Long.size` in UTF-8; else counted a piece at a time."""
    if codec == "utf-8":
        return value.size
    return sum(len(p.encode(codec)) for p in value.pieces())


def write(
    db: sqlite3.Connection, table: str, column: str, rowid: int, value: Long, codec: str
) -> None:
    """Write ``value`` over its placeholder in ``table``'s row ``rowid``, encoded in the
    database's encoding ``codec`` (its placeholder sized so: :func:`stored_size`). A
    placeholder of another size fails (and so does the transaction) rather than store the
    value cut short or padded with NULs."""
    with db.blobopen(table, column, rowid) as blob:
        at = 0
        for piece in value.pieces():
            if piece:
                data = piece.encode(codec)
                if at + len(data) > len(blob):
                    break  # past the placeholder's end (the blob handle's ValueError)
                blob.write(data)
                at += len(data)
        else:
            if at == len(blob):
                return
        # A defect of ours: raised, the transaction fails and nothing of it is stored.
        raise StoreError(
            f"a long value of {table}.{column} was not stored: its bytes do not fill its "
            f"placeholder of {len(blob)} exactly (please report this)"
        )


READ = 1 << 16
"""Bytes read at a time by :func:`read` (a 1 MiB read, its decoded slice and SQLite's pages
kept 0.5x more of a 10 MB non-ASCII text resident beside it; 64 KiB, nothing measurable)."""

_CONTINUATION = bytes(range(0x80, 0xC0))
_WIDEST = (  # a lead byte of each width of character, widest first, and its widest code point
    (re.compile(b"[\xf0-\xff]"), 0x10FFFF),
    (re.compile(b"[\xc4-\xef]"), 0xFFFF),
    (re.compile(b"[\x80-\xff]"), 0xFF),
)


def read(db: sqlite3.Connection, table: str, column: str, rowid: int, codec: str) -> str:
    """The TEXT value in ``table``'s row ``rowid``, in the database's encoding ``codec``,
    read a slice at a time through a blob handle, without a second whole copy: no bytes of
    the whole beside the ``str`` (as selecting it would make), no list of pieces joined.

    On CPython the ``str`` is made at its final length and width first (counted from the
    UTF-8 bytes, a first pass) and each decoded slice copied into it (``PyUnicode_New``,
    ``PyUnicode_CopyCharacters``, through ``ctypes``): growing it by ``+=`` resizes in
    place only while the allocator can extend it, and else copies it whole, beside the old.
    Elsewhere it grows by ``+=``: the same text, more memory. In UTF-16 the blob is read
    twice, decoded both times (:func:`gather`: its length and width, then its characters).
    """
    with db.blobopen(table, column, rowid, readonly=True) as blob:
        if codec != "utf-8":

            def pieces() -> Iterator[str]:
                blob.seek(0)
                decode = codecs.getincrementaldecoder(codec)().decode
                while data := blob.read(READ):
                    yield decode(data)
                yield decode(b"", True)

            return gather(pieces)
        fill = _filler()
        if fill is not None:
            chars, widest = 0, 0x7F
            while data := blob.read(READ):
                chars += len(data.translate(None, _CONTINUATION))  # lead bytes
                for found, code in _WIDEST:
                    if code <= widest:
                        break
                    if found.search(data):
                        widest = code
                        break
            blob.seek(0)
            return fill(blob, chars, widest)
        decode = codecs.getincrementaldecoder("utf-8")().decode
        text = ""
        while data := blob.read(READ):
            text += decode(data)
        return text + decode(b"", True)


_Fill = Callable[[sqlite3.Blob, int, int], str]
_Api = tuple[Callable[[int, int], Any], Callable[[int, int, int, int, int], int]]
_api: _Api | None = None
_fill: _Fill | None = None
_looked = False


def _unicode_api() -> _Api | None:
    """``PyUnicode_New`` and ``PyUnicode_CopyCharacters`` through ``ctypes`` on CPython
    (:func:`read`, :func:`gather`), or None elsewhere."""
    global _api, _looked
    if _looked:
        return _api
    _looked = True
    if sys.implementation.name != "cpython":  # pragma: no cover - other interpreters
        return None
    import ctypes

    try:
        new = ctypes.pythonapi.PyUnicode_New
        copy = ctypes.pythonapi.PyUnicode_CopyCharacters
    except AttributeError:  # pragma: no cover - a CPython without them
        return None
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_ssize_t, ctypes.c_uint32]
    copy.restype = ctypes.c_ssize_t
    # By address: an argument converted as an object would hold a reference to the new
    # str, which may be written only while its one reference is the caller's.
    copy.argtypes = [
        ctypes.c_void_p,
        ctypes.c_ssize_t,
        ctypes.c_void_p,
        ctypes.c_ssize_t,
        ctypes.c_ssize_t,
    ]
    _api = (new, copy)
    return _api


def _filler() -> _Fill | None:
    """:func:`read`'s CPython way (see there), or None elsewhere."""
    global _fill
    if _fill is not None:
        return _fill
    api = _unicode_api()
    if api is None:  # pragma: no cover - other interpreters
        return None
    new, copy = api

    def fill(blob: sqlite3.Blob, chars: int, widest: int) -> str:
        text = new(chars, widest)  # uninitialised: every character is written below
        decode = codecs.getincrementaldecoder("utf-8")().decode
        at = 0
        while data := blob.read(READ):
            piece = decode(data)
            copy(id(text), at, id(piece), 0, len(piece))  # raises (pythonapi) on error
            at += len(piece)
        piece = decode(b"", True)
        copy(id(text), at, id(piece), 0, len(piece))
        at += len(piece)
        if at != chars:  # pragma: no cover - the count is of the same bytes
            raise AssertionError(f"read {at} characters into a str of {chars}")
        return cast(str, text)

    _fill = fill
    return _fill


_WIDER = (  # a character of each width, widest first, and the widest code point of it
    (re.compile("[\U00010000-\U0010ffff]"), 0x10FFFF),
    (re.compile("[\u0100-\uffff]"), 0xFFFF),
    (re.compile("[\x80-\xff]"), 0xFF),
)


def gather(pieces: Callable[[], Iterator[str]]) -> str:
    """The pieces (each call starts them again) as one ``str``, without a list of them
    beside it: on CPython made at its final length and width first, then each piece copied
    in (as :func:`read` does); elsewhere joined."""
    api = _unicode_api()
    if api is None:  # pragma: no cover - other interpreters
        return "".join(pieces())
    chars, widest = 0, 0x7F
    for piece in pieces():
        chars += len(piece)
        if widest < 0x10FFFF and not piece.isascii():
            for found, code in _WIDER:
                if code <= widest:
                    break
                if found.search(piece):
                    widest = code
                    break
    new, copy = api
    text = new(chars, widest)  # uninitialised: every character is written below
    at = 0
    for piece in pieces():
        if at + len(piece) > chars:  # pragma: no cover - the same pieces twice
            raise AssertionError("the pieces changed between two passes")
        copy(id(text), at, id(piece), 0, len(piece))
        at += len(piece)
    if at != chars:  # pragma: no cover - the same pieces twice
        raise AssertionError(f"gathered {at} characters into a str of {chars}")
    return cast(str, text)
