"""Attachments in PostgreSQL, the twin of :mod:`._sqlite_blobs`: bytes kept once per content
(``blobs``, ``bytea`` keyed by SHA-256), each record's links to them in order
(``record_attachments``); a URL attachment is a link only. ``records.attachments`` counts a
record's links, so reading a history without attachments costs no extra query."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from ..attachments import Attachment
from .pg_codec import dec_opt, enc_opt
from .pg_run import Conn

__all__ = ["copy_links", "free_unused", "hold", "link", "load", "save"]


def save(conn: Conn, links: Sequence[tuple[int, Sequence[Attachment]]]) -> None:
    """Link each record (id) to its attachments, storing each content's bytes if new."""
    hold(conn, [a for _, attachments in links for a in attachments])
    link(conn, links)


def hold(conn: Conn, attachments: Sequence[Attachment]) -> None:
    """Store the attachments' contents not stored yet, and lock every one of their rows
    until COMMIT.

    An upsert that updates (to the same value) rather than ``DO NOTHING``: the row lock
    makes a concurrent :func:`free_unused` (``SKIP LOCKED``) leave the content alone, so a
    write never finds its blob deleted under the link it is about to insert. Sorted: two
    writes holding the same contents take their locks in one order.
    """
    contents = {a.sha256: a.data for a in attachments if a.data is not None}
    if contents:
        conn.cursor().executemany(
            "INSERT INTO blobs (sha256, size, data) VALUES (%s, %s, %s)"
            " ON CONFLICT (sha256) DO UPDATE SET size = excluded.size",
            [(k, len(v), v) for k, v in sorted(contents.items())],
        )


def link(conn: Conn, links: Sequence[tuple[int, Sequence[Attachment]]]) -> None:
    """Insert each record's links to its attachments, in order (their contents held)."""
    params = [
        (record_id, seq, a.sha256, enc_opt(a.url), a.media_type, enc_opt(a.name))
        for record_id, attachments in links
        for seq, a in enumerate(attachments)
    ]
    if params:
        conn.cursor().executemany(
            "INSERT INTO record_attachments (record_id, seq, sha256, url, media_type, name)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            params,
        )


def free_unused(conn: Conn) -> None:
    """Delete the bytes no record refers to (after a context is deleted), inside a savepoint.

    Blobs a concurrent write is linking are locked by it and skipped; one it links and
    commits meanwhile makes this statement fail its foreign-key check, and then nothing is
    freed this time (the caller's transaction goes on): orphans wait for the next delete.
    """
    try:
        with conn.transaction():
            conn.execute(
                "DELETE FROM blobs WHERE sha256 IN (SELECT b.sha256 FROM blobs b"
                " WHERE NOT EXISTS (SELECT 1 FROM record_attachments a"
                " WHERE a.sha256 = b.sha256) FOR UPDATE SKIP LOCKED)"
            )
    except psycopg.errors.ForeignKeyViolation:
        pass


def load(conn: Conn, record_ids: Sequence[int]) -> dict[int, tuple[Attachment, ...]]:
    """The attachments of each of ``record_ids`` that has any, in order."""
    found: dict[int, list[Attachment]] = {}
    for rid, url, media_type, name, data in conn.execute(
        "SELECT a.record_id, a.url, a.media_type, a.name, b.data FROM record_attachments a"
        " LEFT JOIN blobs b ON b.sha256 = a.sha256 WHERE a.record_id = ANY(%s)"
        " ORDER BY a.record_id, a.seq",
        (list(record_ids),),
    ):
        found.setdefault(rid, []).append(
            Attachment(data=bytes(data), media_type=media_type, name=dec_opt(name))
            if url is None
            else Attachment(url=dec_opt(url), media_type=media_type, name=dec_opt(name))
        )
    return {rid: tuple(items) for rid, items in found.items()}


def copy_links(conn: Conn, source_id: str, dest_id: str, skipped: list[str]) -> None:
    """Give the clone ``dest_id``'s records the links of the records of ``source_id`` at the
    same places (a clone copies records in (pos, id) order, so the n-th pairs with the n-th),
    the records of the replies ``skipped`` (not copied) left out."""
    conn.execute(
        "INSERT INTO record_attachments (record_id, seq, sha256, url, media_type, name)"
        " SELECT d.id, a.seq, a.sha256, a.url, a.media_type, a.name"
        " FROM (SELECT id, row_number() OVER (ORDER BY pos, id) AS n FROM records"
        "       WHERE context_id = %s AND (reply_id IS NULL OR NOT reply_id = ANY(%s))) s"
        " JOIN (SELECT id, row_number() OVER (ORDER BY pos, id) AS n FROM records"
        "       WHERE context_id = %s) d ON d.n = s.n"
        " JOIN record_attachments a ON a.record_id = s.id",
        (source_id, skipped, dest_id),
    )
