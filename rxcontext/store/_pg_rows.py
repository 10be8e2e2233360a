"""How the PostgreSQL store turns values into column values and rows back into values.

The twin of :mod:`._sqlite_rows`: strings go through :mod:`.pg_codec` (NUL-safe), text is
made storable by the same :func:`~._sqlite_rows.storable` as SQLite's (surrogates), JSON is
written as the same text SQLite writes. Also what every write does: :func:`lock_context`
(the per-context row lock, which allocates positions and moves the context's version on),
:func:`send_records` and :func:`retire`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from psycopg import pq

from ..attachments import Attachment
from ..chunks import Usage
from ..errors import ContextNotFound
from ..records import Checkpoint, Context, Record, RecordType, ReplyState
from ..tokens import sized_record_tokens
from . import _pg_blobs as blobs
from ._sqlite_blobs import checked
from ._sqlite_rows import (
    USAGE_COLUMNS,
    USAGE_FIELDS,
    record_metadata,
    storable,
    storable_sized,
    to_json,
)
from ._thinking import pack
from .base import TOTAL_MAX, CheckpointDraft, RecordDraft
from .pg_codec import dec, dec_opt, enc, enc_opt
from .pg_run import Conn, Cursor

__all__ = [
    "ADD_USAGE",
    "CHECKPOINT_COLUMNS",
    "CHECKPOINT_SELECT",
    "CONTEXT_COLUMNS",
    "RECORD_COLUMNS",
    "USAGE_COLUMNS",
    "USAGE_FIELDS",
    "Draft",
    "Lock",
    "checkpoint",
    "checkpoint_values",
    "context",
    "impossible_id",
    "live_tokens_of",
    "lock_context",
    "locked",
    "record",
    "records_of",
    "retire",
    "send_lock",
    "send_records",
    "storable",
    "to_json",
    "unjson",
    "utc",
    "utc_opt",
    "written",
]

CONTEXT_COLUMNS = "id, name, start_time, use_server_side_threading, last_response_id"
RECORD_COLUMNS = (
    "id, context_id, ts, source, content, live, est_tokens, response_id, streamed,"
    " tool_call_id, tool_name, metadata, pos, reply_id, attachments, inherited"
)
CHECKPOINT_COLUMNS = (
    "id, context_id, text, thinking, tool_calls, usage, error, created_at, resolved_at,"
    " updated_at, chunks, response_id, metadata, reply_id, state, pos, epoch, owner,"
    " lease_until"
)
"""A checkpoint row as ``INSERT … RETURNING`` gives it (text and thinking without parts)."""
CHECKPOINT_SELECT = (
    "SELECT c.id, c.context_id,"
    " c.text || COALESCE((SELECT string_agg(p.text, '' ORDER BY p.seq)"
    "   FROM checkpoint_parts p WHERE p.checkpoint_id = c.id), ''),"
    " c.thinking || COALESCE((SELECT string_agg(p.thinking, '' ORDER BY p.seq)"
    "   FROM checkpoint_parts p WHERE p.checkpoint_id = c.id), ''),"
    " c.tool_calls, c.usage, c.error, c.created_at, c.resolved_at, c.updated_at, c.chunks,"
    " c.response_id, c.metadata, c.reply_id, c.state, c.pos, c.epoch, c.owner, c.lease_until,"
    " clock_timestamp(), c.last_write FROM checkpoints c"
)
"""A checkpoint row with its parts joined (the codec's escapes never span two parts, so the
joined text decodes as the parts would one by one), the database's time, and ``last_write``.
"""
ADD_USAGE = ", ".join(f"{f} = LEAST({f}::numeric + %s, {TOTAL_MAX})::bigint" for f in USAGE_FIELDS)
"""The ``SET`` list that adds a usage (its :data:`USAGE_FIELDS`, in order, as
:func:`.base.usage_counts` gives them) to a context: each total held at ``TOTAL_MAX``,
where bigint arithmetic would refuse the whole commit."""
_RECORD_TYPES = {int(t): t for t in RecordType}
_INSERT_RECORD = (
    "INSERT INTO records (context_id, pos, ts, source, content, live, est_tokens, response_id,"
    " streamed, tool_call_id, tool_name, metadata, reply_id, commit_id, rev, attachments,"
    " inherited)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def utc_opt(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def unjson(value: str | None, default: Any) -> Any:
    return json.loads(dec(value)) if value else default


def context(row: Sequence[Any]) -> Context:
    return Context(row[0], dec(row[1]), utc(row[2]), row[3], dec_opt(row[4]))


def record(row: Sequence[Any], attachments: tuple[Attachment, ...] = ()) -> Record:
    meta = row[11]
    return Record(
        row[0],
        row[1],
        _RECORD_TYPES[row[3]],
        dec(row[4]),
        row[5],
        row[6],
        utc(row[2]),
        dec_opt(row[7]),
        row[8],
        dec_opt(row[9]),
        dec_opt(row[10]),
        record_metadata(dec(meta)) if meta else {},
        row[12],
        dec_opt(row[13]),
        attachments,
        row[15],
    )


def records_of(conn: Conn, found: Sequence[Sequence[Any]]) -> list[Record]:
    """Records from rows of ``RECORD_COLUMNS``, with their attachments."""
    linked = [r[0] for r in found if r[14]]
    if not linked:
        return [record(r) for r in found]
    attached = blobs.load(conn, linked)
    return [record(r, attached.get(r[0], ())) for r in found]


def checkpoint(row: Sequence[Any]) -> Checkpoint:
    """A checkpoint from a row of :data:`CHECKPOINT_SELECT` (or :data:`CHECKPOINT_COLUMNS`)."""
    usage = unjson(row[5], None)
    return Checkpoint(
        id=row[0],
        context_id=row[1],
        text=dec(row[2]),
        thinking=dec(row[3]),
        tool_calls=tuple(unjson(row[4], [])),
        usage=Usage.from_dict(usage) if usage else None,
        error=dec_opt(row[6]),
        created_at=utc(row[7]),
        resolved_at=utc_opt(row[8]),
        updated_at=utc_opt(row[9]),
        chunks=row[10],
        response_id=dec_opt(row[11]),
        metadata=unjson(row[12], {}),
        reply_id=dec(row[13]),
        state=ReplyState(row[14]),
        pos=row[15],
        epoch=row[16],
        owner=row[17],
    )


def checkpoint_values(draft: CheckpointDraft) -> tuple[Any, ...]:
    """The replaced columns of a checkpoint write: tool_calls, usage, error, chunks,
    response_id, metadata (as SQLite stores them, NUL-escaped)."""
    return (
        enc(storable(json.dumps(list(draft.tool_calls), ensure_ascii=False))),
        enc_opt(to_json(draft.usage.to_dict()) if draft.usage else None),
        enc(storable(draft.error)) if draft.error is not None else None,
        draft.chunks,
        enc_opt(draft.response_id),
        enc_opt(to_json(dict(draft.metadata))),
    )


class Draft:
    """A record draft checked and encoded before any statement is sent."""

    __slots__ = ("attachments", "content", "draft", "est", "metadata", "type")

    def __init__(self, draft: RecordDraft) -> None:
        if not isinstance(draft.content, str):
            raise TypeError(f"record content must be a str, not {type(draft.content).__name__}")
        self.draft = draft
        self.type = RecordType(draft.type)
        self.content, size = storable_sized(draft.content)
        self.metadata = to_json(dict(pack(draft.metadata)))
        self.attachments = checked(draft.attachments)
        self.est = sized_record_tokens(size, self.attachments)
        # Strings UTF-8 refuses (lone surrogates in ids or names) fail here, as on SQLite,
        # before the transaction starts.
        for text in (draft.response_id, draft.tool_call_id, draft.tool_name):
            if text is not None:
                enc(text).encode("utf-8")

    def params(
        self,
        context_id: str,
        pos: int,
        ts: datetime,
        reply_id: str | None,
        commit_id: str,
        rev: int,
    ) -> tuple[Any, ...]:
        d = self.draft
        return (
            context_id,
            pos,
            d.timestamp if d.timestamp is not None else ts,
            int(self.type),
            enc(self.content),
            d.live,
            self.est,
            enc_opt(d.response_id),
            d.streamed,
            enc_opt(d.tool_call_id),
            enc_opt(d.tool_name),
            enc_opt(self.metadata),
            enc_opt(reply_id),
            commit_id,
            rev,
            len(self.attachments),
            d.inherited,
        )

    def record(
        self, id: int, context_id: str, pos: int, ts: datetime, reply_id: str | None
    ) -> Record:
        d = self.draft
        return Record(
            id=id,
            context_id=context_id,
            type=self.type,
            content=self.content,
            live=d.live,
            est_tokens=self.est,
            timestamp=utc(d.timestamp if d.timestamp is not None else ts),
            response_id=d.response_id,
            streamed=d.streamed,
            tool_call_id=d.tool_call_id,
            tool_name=d.tool_name,
            metadata=record_metadata(self.metadata) if self.metadata else {},
            pos=pos,
            reply_id=reply_id,
            attachments=tuple(a.stored() for a in self.attachments),
            inherited=d.inherited,
        )


class Lock(NamedTuple):
    """What taking a context's lock says: the first position taken (the next free one when
    none was taken), the database's clock, and the context's version after this write."""

    pos: int
    ts: datetime
    version: int


def impossible_id(context_id: object) -> bool:
    """Whether no context can have ``context_id``, whatever the database holds: it is not a
    str, or it holds NUL, which PostgreSQL's ``text`` cannot (the driver refuses to send it).
    Context ids are the store's own hex, so such an id is answered as one nobody has, as
    SQLite answers it (not found, or nothing), never with a database error."""
    return not isinstance(context_id, str) or "\x00" in context_id


def lock_context(
    conn: Conn, context_id: str, take: int = 0, *, change: bool = False, tokens: int = 0
) -> Lock:
    """Lock the context's row (held to COMMIT); take ``take`` positions.

    Every write that touches a context starts here, so writes to one context are serialised
    and commit in the order they took positions. A write that changes records (``change``,
    or positions taken, or ``tokens`` added to the live total) moves the context's version
    on; its records carry that version (``rev``), so :meth:`history` readers find them. No
    row: :class:`ContextNotFound`.
    """
    return locked(send_lock(conn, context_id, take, change=change, tokens=tokens), context_id)


def send_lock(
    conn: Conn, context_id: str, take: int = 0, *, change: bool = False, tokens: int = 0
) -> Cursor:
    """:func:`lock_context`'s statement, sent (in pipeline mode, not yet waited for): the
    statements sent after it run under the lock; :func:`locked` reads what it says."""
    if impossible_id(context_id):  # before anything is sent
        raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
    if take or change or tokens:
        return conn.execute(
            "UPDATE contexts SET next_pos = next_pos + %s, version = version + 1,"
            " live_tokens = live_tokens + %s WHERE id = %s"
            " RETURNING next_pos - %s, clock_timestamp(), version",
            (take, tokens, context_id, take),
        )
    # no new row version: a lock only (FK checks' KEY SHARE locks do not wait on it)
    return conn.execute(
        "SELECT next_pos, clock_timestamp(), version FROM contexts WHERE id = %s FOR NO KEY UPDATE",
        (context_id,),
    )


def locked(cur: Cursor, context_id: str) -> Lock:
    """What :func:`send_lock`'s statement said; :class:`ContextNotFound` if no row."""
    row = cur.fetchone()
    if row is None:
        raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
    return Lock(row[0], row[1], row[2])


def live_tokens_of(drafts: Sequence[Draft]) -> int:
    """The estimated tokens ``drafts`` add to their context's live total."""
    return sum(d.est for d in drafts if d.draft.live)


def send_records(
    conn: Conn,
    context_id: str,
    drafts: Sequence[Draft],
    pos: int,
    lock: Lock,
    commit_id: str,
    reply_id: str | None = None,
    each_its_own: bool = False,
) -> Callable[[], list[Record]]:
    """Insert ``drafts`` at position ``pos`` (one reply, one place; one pipelined round trip),
    or at ``pos``, ``pos + 1``, … when ``each_its_own`` (an import), stamped with the lock's
    time (unless a draft has its own) and version; their live tokens were added by the lock.
    Returns, with the statements sent, how to read the records (in pipeline mode that may
    wait until ``COMMIT``, see :class:`~.pg_run.Later`); call it at once for them now.
    Records with attachments are inserted at once (their links need the records' ids)."""
    if not drafts:
        return list
    ts = lock.ts
    places = [pos + i if each_its_own else pos for i in range(len(drafts))]
    params = [
        d.params(context_id, at, ts, reply_id, commit_id, lock.version)
        for d, at in zip(drafts, places, strict=True)
    ]
    if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
        cursors = [conn.execute(_INSERT_RECORD, p) for p in params]
    else:  # one round trip for them all (a pipeline of its own)
        cursors = [conn.cursor()]
        cursors[0].executemany(_INSERT_RECORD, params, returning=True)

    def read() -> list[Record]:
        ids = [i for cur in cursors for i in _ids(cur)]
        return [
            d.record(i, context_id, at, ts, reply_id)
            for d, i, at in zip(drafts, ids, places, strict=True)
        ]

    if not any(d.attachments for d in drafts):
        return read
    out = read()
    blobs.save(conn, [(r.id, d.attachments) for d, r in zip(drafts, out, strict=True)])
    return lambda: out


def _ids(cur: Cursor) -> list[int]:
    ids = []
    while True:
        ids.append(cur.fetchone()[0])  # type: ignore[index]
        if not cur.nextset():
            return ids


def retire(conn: Conn, context_id: str, where: str, args: tuple[Any, ...], lock: Lock) -> None:
    """Mark the live records of the context matching ``where`` dead (the context locked with
    ``change``), taking their tokens off the live total."""
    dead = conn.execute(
        f"UPDATE records SET live = false, rev = %s WHERE context_id = %s AND live AND {where}"
        " RETURNING est_tokens",
        (lock.version, context_id, *args),
    ).fetchall()
    tokens = sum(r[0] for r in dead)
    if tokens:
        conn.execute(
            "UPDATE contexts SET live_tokens = live_tokens - %s WHERE id = %s",
            (tokens, context_id),
        )


def written(conn: Conn, commit_id: str) -> list[Record]:
    """The records an earlier attempt with ``commit_id`` stored, in order."""
    found = conn.execute(
        f"SELECT {RECORD_COLUMNS} FROM records WHERE commit_id = %s ORDER BY pos, id",
        (commit_id,),
    ).fetchall()
    return records_of(conn, found)
