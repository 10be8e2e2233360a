"""Attachments in SQLite: bytes kept once per content (``blobs``, keyed by SHA-256) and each
record's links to them in order (``record_attachments``); a URL attachment is a link only.

``records.attachments`` counts a record's links, so reading a history without attachments
costs no extra query.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from ..attachments import Attachment
from ..records import Record
from . import _sqlite_rows as rows

__all__ = ["checked", "copy_links", "load", "records_of", "save"]

_IN_CHUNK = 500  # ids per IN (...) list, well under SQLite's parameter limit


def checked(attachments: Iterable[object]) -> tuple[Attachment, ...]:
    """``attachments`` as a tuple of :class:`Attachment` (TypeError for anything else)."""
    out: list[Attachment] = []
    for a in attachments:
        if isinstance(a, Attachment):
            out.append(a)
        else:
            raise TypeError(
                f"attachments must be rxcontext.Attachment values, not {type(a).__name__}"
            )
    return tuple(out)


def save(db: sqlite3.Connection, record_id: int, attachments: Sequence[Attachment]) -> None:
    """Link ``attachments`` to the record, storing each content's bytes if new."""
    for seq, a in enumerate(attachments):
        digest = a.sha256
        if a.data is not None:
            db.execute(
                "INSERT OR IGNORE INTO blobs (sha256, size, data) VALUES (?, ?, ?)",
                (digest, len(a.data), a.data),
            )
        db.execute(
            "INSERT INTO record_attachments (record_id, seq, sha256, url, media_type, name)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (record_id, seq, digest, a.url, a.media_type, a.name),
        )


def load(db: sqlite3.Connection, record_ids: Sequence[int]) -> dict[int, tuple[Attachment, ...]]:
    """The attachments of each of ``record_ids`` that has any, in order."""
    found: dict[int, list[Attachment]] = {}
    for start in range(0, len(record_ids), _IN_CHUNK):
        chunk = record_ids[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        for rid, url, media_type, name, data in db.execute(
            "SELECT a.record_id, a.url, a.media_type, a.name, b.data FROM record_attachments a"
            f" LEFT JOIN blobs b ON b.sha256 = a.sha256 WHERE a.record_id IN ({marks})"
            " ORDER BY a.record_id, a.seq",
            tuple(chunk),
        ):
            found.setdefault(rid, []).append(
                Attachment(data=data, media_type=media_type, name=name)
                if url is None
                else Attachment(url=url, media_type=media_type, name=name)
            )
    return {rid: tuple(items) for rid, items in found.items()}


def records_of(db: sqlite3.Connection, found: Sequence[rows.Row]) -> list[Record]:
    """Records from rows of ``RECORD_COLUMNS``, with their attachments."""
    linked = [r[0] for r in found if r[14]]
    if not linked:
        return [rows.record(r) for r in found]
    attached = load(db, linked)
    return [rows.record(r, attached.get(r[0], ())) for r in found]


def copy_links(db: sqlite3.Connection, pairs: Sequence[tuple[int, int]]) -> None:
    """Give each new record (``(old_id, new_id)``) the old one's links (a clone)."""
    db.executemany(
        "INSERT INTO record_attachments (record_id, seq, sha256, url, media_type, name)"
        " SELECT ?, seq, sha256, url, media_type, name FROM record_attachments"
        " WHERE record_id = ?",
        [(new, old) for old, new in pairs],
    )
