"""The reply lifecycle on SQLite: begin, checkpoint, commit, claim, keep, discard.

A reply's row in ``checkpoints`` carries its state, its owner (a worker id), its epoch and
its reserved position. Every write names the epoch its writer holds and changes nothing if
the reply has moved on (claimed by someone else, settled, deleted with its context): that
makes a late write after a commit, a Ctrl-C between two writes, or a process presumed dead
harmless by construction. Checkpoint text is appended in parts (``checkpoint_parts``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from json.encoder import c_make_encoder as _c_encoder  # type: ignore[attr-defined]
from json.encoder import encode_basestring
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

from ..chunks import Usage
from ..errors import (
    CheckpointNotFound,
    OwnershipLost,
    ReplyExists,
    StoreBusy,
)
from ..records import Checkpoint, Record, RecordType, ReplyState
from . import _sqlite_blobs as blobs
from . import _sqlite_long as long
from . import _sqlite_rows as rows
from . import sqlite_holds
from .base import (
    IN_PROGRESS,
    ORPHANED,
    UNSETTLED_USAGE,
    CheckpointDraft,
    RecordDraft,
    ReplyEnd,
    ReplyTicket,
    check_name,
    checkpoint_key,
    discarded_draft,
    kept_metadata,
    settle_refusal,
    unsettled_spending,
)
from .owner import local_pid, owner_alive, process_gone, worker_id

__all__ = ["SQLiteReplies"]

_LIVE = ("streaming", "resuming")
_ACTIVE = "context_id = ? AND state IN ('streaming', 'resuming')"
"""The rows of a context's replies being generated (their owners' leases still checked)."""


_UPDATE = (
    "UPDATE checkpoints SET tool_calls = ?, usage = ?, error = ?, chunks = ?,"
    " response_id = ?, metadata = ?, updated_at = ?, state = COALESCE(?, state),"
    " owner = CASE WHEN ? THEN NULL ELSE owner END,"
    " lease_until = CASE WHEN ? THEN NULL ELSE lease_until END"
    " WHERE id = ? AND epoch = ? AND state IN ('streaming', 'resuming')"
)
"""A checkpoint's fenced update (no row: another writer's epoch, or settled)."""

_APPEND = (
    "INSERT INTO checkpoint_parts (checkpoint_id, seq, text, thinking)"
    " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ? FROM checkpoint_parts WHERE checkpoint_id = ?"
)
"""A checkpoint's next part: the text and thinking delivered since its last write."""

PART_CHARS = 1 << 18
"""The most characters of text (and of thinking) one ``checkpoint_parts`` row holds.

A periodic write of a fast reply carries megabytes; written as one row, SQLite copies it
twice (the bound value, the row's record) and keeps the bound copy in its statement cache
until the statement runs again, on top of the allocator keeping the freed copies: a 10 MB
reply's checkpoints alone held ~2x its size (benchmarks/longreply.py, issue 14). Rows of at
most this many characters keep those copies small; readers join the parts in ``seq`` order
as before."""


_BEGIN = (
    "INSERT INTO checkpoints (context_id, text, created_at, updated_at, reply_id, state, pos,"
    " owner, epoch, lease_until)"
    " SELECT ?, '', ?, ?, ?, 'streaming', ?, ?, 1, ?"
    " WHERE NOT EXISTS (SELECT 1 FROM records WHERE reply_id = ?)"
)
"""A reply's new row, unless its id was used by a stored record (the row's own unique index
refuses an id another reply's row has). Its id is the cursor's ``lastrowid`` when it
inserted one row: a ``RETURNING`` clause made SQLite run it as a sub-program writing an
ephemeral table, on every reply's way to its first chunk (issue 14)."""


_ALIKE = "?{n} OR j.type = 'integer'"
_BULK_UPDATE = (
    "UPDATE checkpoints SET chunks = CASE j.type WHEN 'integer' THEN j.value"
    " ELSE json_extract(j.value, '$[4]') END,"
    f" tool_calls = CASE WHEN {_ALIKE.format(n=3)} THEN ?4 ELSE json_extract(j.value, '$[1]') END,"
    f" usage = CASE WHEN {_ALIKE.format(n=5)} THEN ?6 ELSE json_extract(j.value, '$[2]') END,"
    f" error = CASE WHEN {_ALIKE.format(n=7)} THEN ?8 ELSE json_extract(j.value, '$[3]') END,"
    f" response_id = CASE WHEN {_ALIKE.format(n=9)} THEN ?10"
    " ELSE json_extract(j.value, '$[5]') END,"
    f" metadata = CASE WHEN {_ALIKE.format(n=11)} THEN ?12 ELSE json_extract(j.value, '$[6]') END,"
    " updated_at = ?1"
    " FROM json_each(?2) AS j"
    " WHERE checkpoints.id = CAST(j.key AS INTEGER)"
    f" AND checkpoints.epoch = CASE WHEN {_ALIKE.format(n=13)} THEN ?14"
    " ELSE json_extract(j.value, '$[0]') END"
    " AND checkpoints.state IN ('streaming', 'resuming')"
)
"""Many periodic updates in one statement (one call into SQLite, the GIL released for all
of it): the rows come as one JSON object, ``{"<id>": [epoch, tool_calls, usage, error,
chunks, response_id, metadata], ...}``, the first row's values bound, ``?4`` on (``?N+1``
after each ``?N``). A column every row of the batch has the same value in (nearly always
all but ``chunks``, and ``usage`` and ``response_id`` once a reply has them) is bound once,
``?N`` true, and not read from each row: each ``json_extract`` cost ~0.4 us a row, twice
what SQLite's update of the row does. A row whose every column but ``chunks`` is the first
row's (nearly every row) is its chunk count alone, ``"<id>": chunks``: neither encoded as
JSON (~6,000 instructions a row) nor read back with ``json_extract``."""

_AT = 19
"""Bits of a packed span (:data:`_BULK_APPEND`) that hold its length in bytes (a part in the
batch has at most ``BULK_CHARS`` characters, at most 4 bytes each in UTF-8 or UTF-16)."""
_SPAN = f"CAST(substr(?2, ({{v}} >> {_AT}) + 1, {{v}} & {(1 << _AT) - 1}) AS TEXT)"
_BULK_APPEND = (
    "INSERT INTO checkpoint_parts (checkpoint_id, seq, text, thinking)"
    " SELECT CAST(j.key AS INTEGER),"
    " COALESCE((SELECT p.seq FROM checkpoint_parts p"
    " WHERE p.checkpoint_id = CAST(j.key AS INTEGER) ORDER BY p.seq DESC LIMIT 1), 0) + 1,"
    " CASE j.type WHEN 'integer' THEN "
    + _SPAN.format(v="j.value")
    + " ELSE "
    + _SPAN.format(v="json_extract(j.value, '$[0]')")
    + " END,"
    " CASE j.type WHEN 'integer' THEN '' ELSE "
    + _SPAN.format(v="json_extract(j.value, '$[1]')")
    + " END"
    " FROM json_each(?1) AS j"
)
"""Many checkpoints' next parts in one statement: their text and thinking in the
database's encoding (the cast reads a blob in it: UTF-16 in a file its user made so), one
after another in one blob (``?2``), and where each is in it, ``{"<id>": span, ...}``, or
``"<id>": [text span, thinking span]`` for a part with thinking; a span is its offset in
bytes shifted left by :data:`_AT`, plus its length. Not as JSON strings: the escaping
(~35 instructions a character) and SQLite's parse of it were most of the statement. The
next ``seq`` is the primary key's last entry of the checkpoint, read as such (``MAX(seq)``,
the same seek through the aggregate's machinery, cost ~840 instructions a row more)."""

CODECS = {"UTF-8": "utf-8", "UTF-16le": "utf-16-le", "UTF-16be": "utf-16-be"}
"""Python's codec of each ``PRAGMA encoding`` (a file's, fixed once it has a table)."""

_SHARED = (0, 1, 2, 3, 5, 6)
"""The columns of a bulk update's row (:data:`_BULK_UPDATE`) a batch may bind once, in the
order of the statement's ``?3`` to ``?14`` after them: epoch, tool_calls, usage, error,
response_id, metadata."""
_BIND_ORDER = (1, 2, 3, 5, 6, 0)

_EMPTY_CALLS = "[]"

_THREAD_SET = (
    "last_response_id = CASE WHEN EXISTS (SELECT 1 FROM records INDEXED BY"
    " idx_records_context_rev WHERE context_id = ? AND rev > ? AND pos < ?) THEN NULL ELSE ? END"
)
"""A reply's response id becomes the thread to continue unless a record placed before the
reply was written or changed since its request read the history."""


_COMPUTE: Any = object()


def _checkpoint_values(draft: CheckpointDraft, metadata: Any = _COMPUTE) -> tuple[Any, ...]:
    """The checkpoint columns a draft sets, in :data:`_UPDATE`'s order (``metadata``: its
    metadata's column value when the caller has it already)."""
    calls = draft.tool_calls
    usage = draft.usage
    if metadata is _COMPUTE:
        metadata = rows.to_json(dict(draft.metadata)) if draft.metadata else None
    return (
        rows.storable(json.dumps(list(calls), ensure_ascii=False)) if calls else _EMPTY_CALLS,
        # Counts alone (no cycle to look for): the C encoder made once, as a row's.
        _usage_json(usage) if usage else None,
        rows.storable(draft.error) if draft.error is not None else None,
        draft.chunks,
        draft.response_id,
        metadata,
    )


BULK_CHARS = 1 << 16
"""The most characters of text and thinking a periodic write goes into the one-statement
batch with (a long reply's part goes through its own statement, as it did)."""


def _bulk_payloads(
    writes: Sequence[tuple[ReplyTicket, CheckpointDraft]],
    codec: str = "utf-8",
) -> tuple[str, tuple[Any, ...], tuple[str, bytes] | None, list[int]] | None:
    """What :data:`_BULK_UPDATE` and :data:`_BULK_APPEND` take (the update's JSON object
    and its bound columns, ``?3`` on; the parts' spans and text in ``codec``, the
    database's, None for no part to append), and the positions of the
    writes left out of them (to write one at a time): a NUL character (SQLite's JSON
    functions cut text there), more than ``BULK_CHARS`` characters, a checkpoint with an
    earlier write in the batch (in the rows or apart: its writes must land in order). None
    when fewer than two are left in."""
    # Each row is encoded as it is made, so its tuple dies at once: a tick's rows held all
    # together until one dump were two more tracked objects a reply through the collector
    # passes the tick sets off (docs/benchmarks.md, "a tick's objects"). The columns every
    # row so far shares with the first are found by one C compare a row (``probe``); a
    # column that differs leaves it, so the slow look happens at most once a column.
    updates: list[str] = []
    parts: list[str] = []
    texts: list[bytes] = []
    size = 0
    rest: list[int] = []
    seen: set[int] = set()
    first: tuple[Any, ...] = ()
    shared: tuple[int, ...] = _SHARED
    probe: Callable[[tuple[Any, ...]], Any] | None = _PROBE
    common: Any = None
    odd: Callable[[tuple[Any, ...]], Any] = _PROBE
    odd_first: Any = None
    metadata: Any = _COMPUTE
    metadata_json: str | None = None
    for i, (ticket, draft) in enumerate(writes):
        cid = ticket.checkpoint_id
        text, thinking = draft.append_text, draft.append_thinking
        if (
            cid in seen
            or len(text) + len(thinking) > BULK_CHARS
            or "\x00" in text
            or "\x00" in thinking
            or "\x00" in (draft.error or "")
            or "\x00" in (draft.response_id or "")
        ):
            # Its later writes go apart too: the rows run before the writes apart, so a
            # later one in them would land before this one.
            seen.add(cid)
            rest.append(i)
            continue
        seen.add(cid)
        # The same metadata as the row before (the persister hands every write of a reply
        # the same dict, and replies of one model the same keys): its JSON once.
        if draft.metadata is not metadata:
            metadata = draft.metadata
            metadata_json = rows.to_json(dict(metadata)) if metadata else None
        row = (ticket.epoch, *_checkpoint_values(draft, metadata_json))
        if not first:
            first = row
            common = _PROBE(row)
            alike = same = True
        elif probe is _PROBE:  # no column has differed yet: one compare says both
            alike = same = probe(row) == common
        else:  # alike: the same in the shared columns and in those that left them
            same = probe is None or probe(row) == common
            alike = same and odd(row) == odd_first
        if not same:
            assert probe is not None
            shared = tuple(k for k in shared if row[k] == first[k])
            probe = itemgetter(*shared) if shared else None
            common = probe(first) if probe is not None else None
            odd = itemgetter(*(k for k in _SHARED if k not in shared))
            odd_first = odd(first)
        chunks = row[4]
        if alike and type(chunks) is int:
            # Every column but its chunk count is the first row's (bound once): the row is
            # that count alone, no JSON to encode here nor to extract in SQLite.
            updates.append(f'"{cid}":{chunks}')
        else:
            updates.append(f'"{cid}":{_row(row)}')
        if thinking:
            t, th = _encoded(text, codec), _encoded(thinking, codec)
            at = size + len(t)
            parts.append(f'"{cid}":[{size << _AT | len(t)},{at << _AT | len(th)}]')
            texts += (t, th)
            size = at + len(th)
        elif text:
            t = _encoded(text, codec)
            parts.append(f'"{cid}":{size << _AT | len(t)}')
            texts.append(t)
            size += len(t)
    if len(updates) < 2:
        return None
    binds: list[Any] = []
    for k in _BIND_ORDER:
        binds += (k in shared, first[k])
    return (
        f"{{{','.join(updates)}}}",
        tuple(binds),
        (f"{{{','.join(parts)}}}", b"".join(texts)) if parts else None,
        rest,
    )


def _encoded(text: str, codec: str) -> bytes:
    """``text`` as SQLite stores it (:func:`rows.storable`), in ``codec``: one encode,
    which is also the check (a lone surrogate cannot be encoded, in UTF-8 or UTF-16)."""
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        return rows.storable(text).encode(codec)


_PROBE = itemgetter(*_SHARED)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# The C encoder itself, made once: ``encode`` makes one a call (~5 us a row; this, ~1 us).
# A row holds numbers, strings and None alone, so no check for cycles (markers None); the
# same text as ``_ENCODER.encode`` (tests/test_store_replies.py).
_encode_row = (
    None
    if _c_encoder is None
    else _c_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, True)
)


_USAGE_COUNTS = attrgetter(*Usage.__dataclass_fields__)
_USAGE_JSON = "{" + ",".join(f'"{k}":%s' for k in Usage.__dataclass_fields__) + "}"
_INTS = {int}


def _usage_json(usage: Usage) -> str:
    """``_row(usage.to_dict())``, the same text: when every count is an ``int`` (as
    :meth:`Usage.of` makes them; an int's ``str`` is its JSON), one ``%`` of a template:
    about half the encoder's time, and a tick writes this for every reply with a usage."""
    counts = _USAGE_COUNTS(usage)
    if set(map(type, counts)) == _INTS:
        return _USAGE_JSON % counts
    return _row(usage.to_dict())


def _row(row: tuple[Any, ...] | dict[str, int]) -> str:
    """One row of a bulk statement's JSON (or a usage's counts)."""
    if _encode_row is None:  # pragma: no cover - a Python without the C accelerator
        return _ENCODER.encode(row)
    return "".join(_encode_row(row, 0))


class SQLiteReplies:
    """Reply lifecycle methods of :class:`~rxcontext.store.sqlite.SQLiteStore`."""

    if TYPE_CHECKING:
        clock: Callable[[], datetime]
        lease_ttl: float
        _holds: str | None
        _codec: str
        """The database's text encoding, as Python's codec (:data:`CODECS`)."""

        def now(self) -> str: ...
        def _tx(
            self, *, durable: bool = False, background: bool = False
        ) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...
        @staticmethod
        def _allocate(db: sqlite3.Connection, context_id: str, n: int = 1) -> int: ...
        def _insert(
            self,
            db: sqlite3.Connection,
            context_id: str,
            draft: RecordDraft,
            pos: int,
            reply_id: str | None = None,
            *,
            count: bool = True,
            body_from: long.Long | None = None,
            thinking_from: long.Long | None = None,
        ) -> Record: ...
        def lean(self, db: sqlite3.Connection) -> AbstractContextManager[None]: ...
        def release_background(self) -> None: ...

    def _lease(self) -> str:
        return rows.stamp(self.clock() + timedelta(seconds=self.lease_ttl))

    def _held(self, checkpoint_id: int, owner: str | None) -> bool:
        """Whether ``owner``, a live process of this process table, holds the reply's row
        for its final write (:mod:`.sqlite_holds`): the row is its still, whatever its lease."""
        pid = local_pid(owner)
        if pid is None or self._holds is None or process_gone(owner):
            return False
        return sqlite_holds.held(self._holds, checkpoint_id, pid, here=owner == worker_id())

    def _owned(self, checkpoint_id: int, owner: str | None, lease: datetime | None) -> bool:
        """Whether a live row is still its owner's (else it reads interrupted)."""
        return owner_alive(owner, lease, self.clock()) or self._held(checkpoint_id, owner)

    # -- reading --------------------------------------------------------------------------

    @staticmethod
    def _parts(db: sqlite3.Connection, checkpoint_id: int) -> tuple[list[str], list[str]]:
        text: list[str] = []
        thinking: list[str] = []
        for t, k in db.execute(
            "SELECT text, thinking FROM checkpoint_parts WHERE checkpoint_id = ? ORDER BY seq",
            (checkpoint_id,),
        ):
            if t:
                text.append(t)
            if k:
                thinking.append(k)
        return text, thinking

    def _rows(
        self, db: sqlite3.Connection, where: str, args: tuple[Any, ...]
    ) -> list[tuple[rows.Row, list[str], list[str]]]:
        """The rows ``where`` selects, each with its text's parts, as of one moment: row and
        parts are two reads, and another process's write landing between them showed a row
        with text it did not have yet (or, at a commit, no longer had)."""
        began = not db.in_transaction  # (in one already: it is the snapshot)
        if began:
            db.execute("BEGIN")  # a read transaction: its first read fixes the snapshot
        try:
            found = db.execute(
                f"SELECT {rows.CHECKPOINT_COLUMNS} FROM checkpoints WHERE {where}", args
            ).fetchall()
            return [(r, *self._parts(db, r[0])) for r in found]
        finally:
            if began:
                db.execute("COMMIT")  # nothing was written: this only ends the snapshot

    def _load(
        self, db: sqlite3.Connection, row: rows.Row, text: list[str], thinking: list[str]
    ) -> Checkpoint | None:
        """The checkpoint of ``row`` (``text``/``thinking``: its parts), judged; None if its
        row went meanwhile (see below). Asked after the row's snapshot has ended."""
        orphaned = False
        for reread in range(_REREADS + 1):
            orphaned = ReplyState(row[14]).live and not self._owned(
                row[0], row[17], rows.time_of(row[18])
            )
            if not orphaned or reread == _REREADS or db.in_transaction:
                break  # (in a transaction the row cannot have changed: it is a snapshot)
            # Its owner neither renews it nor holds it. It may have held it when the row
            # was read, and let go only now: its final write landed in between (a hold is
            # let go after its write commits). So read the row again: unchanged, it was
            # orphaned all along; changed, judge what was written.
            again = self._rows(db, "id = ?", (row[0],))
            if not again:  # it completed (its row goes) or its context was deleted
                return None
            if again[0][0] == row:
                break
            row, text, thinking = again[0]
        cp = rows.checkpoint(row, row[2] + "".join(text), row[3] + "".join(thinking))
        # Its process is gone: say what the next claim or sweep will make of it.
        return _as_orphan(cp) if orphaned else cp

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Checkpoint]:
        with self._read() as db:
            found = self._rows(db, where, args)  # (its snapshot ended before the holds are asked)
            return [cp for cp in (self._load(db, *r) for r in found) if cp is not None]

    def get_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """One reply's checkpoint by id, or :class:`CheckpointNotFound`."""
        found = self._select("id = ?", (checkpoint_key(checkpoint_id),))
        if not found:
            raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
        return found[0]

    def find_reply(self, reply_id: str) -> Checkpoint | None:
        """The row of reply ``reply_id``, or None (never begun, or completed without a cut)."""
        found = self._select("reply_id = ?", (reply_id,))
        return found[0] if found else None

    def reply_records(self, reply_id: str) -> list[Record]:
        """The records reply ``reply_id`` stored, in order (empty if none yet)."""
        with self._read() as db:
            found = db.execute(
                f"SELECT {rows.RECORD_COLUMNS} FROM records WHERE reply_id = ? ORDER BY pos, id",
                (reply_id,),
            ).fetchall()
            return blobs.records_of(db, found)

    def checkpoints(self, context_id: str, *, include_resolved: bool = False) -> list[Checkpoint]:
        """Interrupted replies of a context in conversation order (settled ones too if asked).

        A reply whose process died is listed as interrupted (its row changes at the next
        claim, keep or discard).
        """
        found = self._select(
            "context_id = ? ORDER BY pos, id"
            if include_resolved
            else "context_id = ? AND state IN ('interrupted', 'streaming', 'resuming')"
            " ORDER BY pos, id",
            (context_id,),
        )
        return [cp for cp in found if include_resolved or cp.state is ReplyState.INTERRUPTED]

    def active_replies(self, context_id: str) -> list[Checkpoint]:
        """Replies being generated now in a context (``STREAMING`` or ``RESUMING``)."""
        found = self._select(f"{_ACTIVE} ORDER BY pos, id", (context_id,))
        return [cp for cp in found if cp.state.live]

    @staticmethod
    def _unsettled(db: sqlite3.Connection, context_id: str, own: str | None) -> list[Any]:
        """The usage and metadata of the context's unsettled replies (those with usage),
        ``own``'s left out: never their text (a long reply's, or one streaming now)."""
        found = db.execute(UNSETTLED_USAGE.format(param="?"), (context_id,)).fetchall()
        return unsettled_spending(found, own, rows.from_json)

    def busy_reply_ids(self, context_id: str) -> set[str]:
        """The ids of :meth:`active_replies`, without reading their rows' text (a request
        asks for them: a long reply streaming in the context cost every request its text)."""
        with self._read() as db:
            found = db.execute(
                f"SELECT id, reply_id, owner, lease_until FROM checkpoints WHERE {_ACTIVE}",
                (context_id,),
            ).fetchall()
        return {r for cid, r, owner, lease in found if self._owned(cid, owner, rows.time_of(lease))}

    # -- writing --------------------------------------------------------------------------

    def begin_reply(self, context_id: str, reply_id: str, *, owner: str) -> Checkpoint:
        """Reserve the next position for a reply and create its ``STREAMING`` row (epoch 1)."""
        checkpoint_id, pos, now = self._begin(context_id, reply_id, owner)
        stamp = rows.read_time(now)
        return Checkpoint(
            id=checkpoint_id,
            context_id=context_id,
            text="",
            thinking="",
            tool_calls=(),
            usage=None,
            error=None,
            created_at=stamp,
            updated_at=stamp,
            reply_id=reply_id,
            state=ReplyState.STREAMING,
            pos=pos,
            epoch=1,
            owner=owner,
        )

    def begin_reply_ticket(self, context_id: str, reply_id: str, owner: str) -> tuple[int, int]:
        """Store-internal: :meth:`begin_reply`'s row, its id and position alone (epoch 1).

        What a reply's persister needs on its way to the first chunk: the frozen 15-field
        :class:`~rxcontext.Checkpoint` and its time parse, built and dropped per reply,
        were ~180 of its ~4,300 bytecodes. Only for a store whose ``begin_reply`` is this
        class's own (:attr:`plain`: the persister asks), so that a subclass's, a wrapper's
        or one set on the instance (an audit, a check, a timer) is called as before.
        """
        checkpoint_id, pos, _ = self._begin(context_id, reply_id, owner)
        return checkpoint_id, pos

    begin_reply_ticket.plain = begin_reply  # type: ignore[attr-defined]

    def _begin(self, context_id: str, reply_id: str, owner: str) -> tuple[int, int, str]:
        """The reply's new row: its id, position and creation time as stored."""
        if not isinstance(reply_id, str) or not reply_id:
            raise TypeError("reply_id must be a non-empty str")
        check_name(reply_id, "reply id")
        # On every reply's way to its first chunk: two statements in the transaction (the
        # position, then the row with the reply-id check in it) and one clock read.
        at = self.clock()
        now = rows.stamp(at)
        lease = rows.stamp(at + timedelta(seconds=self.lease_ttl))
        with self._tx() as db:
            pos = self._allocate(db, context_id)
            try:
                cur = db.execute(
                    _BEGIN, (context_id, now, now, reply_id, pos, owner, lease, reply_id)
                )
            except sqlite3.IntegrityError:
                cur = None
            if cur is None or cur.rowcount != 1:  # a stored record or another reply's row
                raise ReplyExists(f"reply id {reply_id!r} was already used (reply ids are unique)")
            checkpoint_id = cur.lastrowid
        assert checkpoint_id is not None
        return checkpoint_id, pos, now

    @staticmethod
    def _update_params(
        ticket: ReplyTicket, draft: CheckpointDraft, now: str, state: ReplyState | None
    ) -> tuple[Any, ...]:
        release = state is ReplyState.INTERRUPTED
        return (
            *_checkpoint_values(draft),
            now,
            state.value if state is not None else None,
            release,
            release,
            ticket.checkpoint_id,
            ticket.epoch,
        )

    @staticmethod
    def _part_params(ticket: ReplyTicket, draft: CheckpointDraft) -> Iterator[tuple[Any, ...]]:
        """The parts' rows, made one at a time as SQLite asks for them (one piece in memory)."""
        cid = ticket.checkpoint_id
        text, thinking = draft.append_text, draft.append_thinking
        if len(text) <= PART_CHARS and len(thinking) <= PART_CHARS:
            yield (cid, rows.storable(text), rows.storable(thinking), cid)
            return
        t, k = list(rows.slices(text, PART_CHARS)), list(rows.slices(thinking, PART_CHARS))
        for i in range(max(len(t), len(k))):
            yield (
                cid,
                rows.storable(text[t[i][0] : t[i][1]]) if i < len(t) else "",
                rows.storable(thinking[k[i][0] : k[i][1]]) if i < len(k) else "",
                cid,
            )

    @classmethod
    def _write(
        cls,
        db: sqlite3.Connection,
        ticket: ReplyTicket,
        draft: CheckpointDraft,
        now: str,
        state: ReplyState | None,
    ) -> bool:
        cur = db.execute(_UPDATE, cls._update_params(ticket, draft, now, state))
        if cur.rowcount == 0:
            return False
        if draft.append_text or draft.append_thinking:
            db.executemany(_APPEND, cls._part_params(ticket, draft))
        return True

    def save_checkpoint(
        self,
        ticket: ReplyTicket,
        draft: CheckpointDraft,
        *,
        state: ReplyState | None = None,
        wait: bool = True,
    ) -> bool:
        """Write ``draft`` into the reply's checkpoint (appending its text); False if fenced.
        ``wait=False`` writes through the background connection (StoreBusy at once if
        another process holds the lock)."""
        with self._tx(background=not wait) as db:
            return self._write(db, ticket, draft, self.now(), state)

    def save_checkpoints(
        self, writes: Sequence[tuple[ReplyTicket, CheckpointDraft]]
    ) -> list[bool] | None:
        """Periodic writes in one background transaction; None if the database was busy."""
        # Built before the transaction: the database is locked for the statements alone.
        bulk = _bulk_payloads(writes, self._codec) if len(writes) > 1 else None
        try:
            with self._tx(background=True) as db:
                now = self.now()
                if bulk is not None:
                    # Every row in one statement per table: a statement gives up the GIL
                    # while SQLite works and takes it back once (an ``executemany`` does
                    # that per row, and from a busy event loop each take waits up to the
                    # 5 ms switch interval). When every update lands, as it nearly always
                    # does, nothing is fenced.
                    updates, binds, parts, rest = bulk
                    landed = db.execute(_BULK_UPDATE, (now, updates, *binds)).rowcount
                    if landed == len(writes) - len(rest):
                        if parts is not None:
                            db.execute(_BULK_APPEND, parts)
                        done = [True] * len(writes)
                        for i in rest:
                            done[i] = self._write(db, *writes[i], now, None)
                        return done
                elif len(writes) > 1:
                    # Every row at once (one C loop per statement): when every update
                    # lands, as it nearly always does, nothing is fenced.
                    cur = db.executemany(
                        _UPDATE, [self._update_params(t, d, now, None) for t, d in writes]
                    )
                    if cur.rowcount == len(writes):
                        db.executemany(
                            _APPEND,
                            (
                                row
                                for t, d in writes
                                if d.append_text or d.append_thinking
                                for row in self._part_params(t, d)
                            ),
                        )
                        return [True] * len(writes)
                    # Some were fenced: find which, row by row (an update that landed above
                    # lands again the same; only their parts are appended, once).
                return [self._write(db, t, d, now, None) for t, d in writes]
        except StoreBusy:
            return None

    def renew_leases(self, owner: str) -> None:
        """Extend the leases of the live replies ``owner`` holds."""
        with self._tx(background=True) as db:
            db.execute(
                "UPDATE checkpoints SET lease_until = ?"
                " WHERE owner = ? AND state IN ('streaming', 'resuming')",
                (self._lease(), owner),
            )

    def commit_reply(
        self,
        context_id: str,
        drafts: Sequence[RecordDraft],
        *,
        usage: Usage | None = None,
        last_response_id: str | None = None,
        reply: ReplyTicket | None = None,
        end: ReplyEnd | None = None,
        at: int | None = None,
        commit_id: str | None = None,
        thread_version: int | None = None,
    ) -> list[Record]:
        """Store ``drafts`` durably in one transaction (see :meth:`Store.commit_reply`).

        ``commit_id`` is ignored: a local commit either happened or raised.
        """
        return self._commit_reply(
            context_id,
            drafts,
            usage=usage,
            last_response_id=last_response_id,
            reply=reply,
            end=end,
            at=at,
            thread_version=thread_version,
        )

    @property
    def long_text(self) -> int | None:
        """Characters from which a reply's text may be committed from its checkpoint
        (:meth:`commit_reply_from_parts`); None where this SQLite cannot write in slices."""
        return long.LONG if long.INCREMENTAL else None

    def commit_reply_from_parts(
        self,
        context_id: str,
        drafts: Sequence[RecordDraft],
        *,
        usage: Usage | None = None,
        last_response_id: str | None = None,
        reply: ReplyTicket,
        end: ReplyEnd,
        commit_id: str | None = None,
        thread_version: int | None = None,
        text: bool = True,
        thinking: bool = False,
    ) -> list[Record]:
        """:meth:`commit_reply` for a long reply whose text (``text``), reasoning
        (``thinking``) or both its checkpoint holds (the persister let go of it,
        :mod:`rxcontext.persist`): the first draft, a MODEL_RESP, holds only the text past
        the checkpoint's (its content; its metadata's ``thinking``, with the thinking blocks
        already as spans of it). The stored value is the checkpoint's parts in order, then
        that text, written into the row a slice at a time (no whole copy); the returned
        record's content (metadata) is read back (from the row; its reasoning from the
        checkpoint's parts, before they go)."""
        if not drafts or drafts[0].type is not RecordType.MODEL_RESP:
            raise ValueError("a reply committed from its checkpoint starts with its MODEL_RESP")
        self.release_background()
        return self._commit_reply(
            context_id,
            drafts,
            usage=usage,
            last_response_id=last_response_id,
            reply=reply,
            end=end,
            thread_version=thread_version,
            from_parts=(text, thinking),
        )

    def _commit_reply(
        self,
        context_id: str,
        drafts: Sequence[RecordDraft],
        *,
        usage: Usage | None,
        last_response_id: str | None,
        reply: ReplyTicket | None,
        end: ReplyEnd | None,
        at: int | None = None,
        thread_version: int | None,
        from_parts: tuple[bool, bool] = (False, False),
    ) -> list[Record]:
        with self._tx(durable=True) as db, contextlib.ExitStack() as lean:
            nxt = self._allocate(db, context_id, 0 if reply is not None or at is not None else 1)
            reply_id: str | None = None
            resumed = False
            if reply is not None:
                row = db.execute(
                    "SELECT pos, reply_id, epoch, state FROM checkpoints WHERE id = ?",
                    (reply.checkpoint_id,),
                ).fetchone()
                # Tool outputs (no ``end``) may still land after a cancel: the tools ran.
                settled = row is None or row[3] in ("completed", "discarded")
                if settled or row[2] != reply.epoch or (end is not None and row[3] not in _LIVE):
                    raise OwnershipLost(
                        f"reply {row[1] if row else reply.checkpoint_id!r} was taken over or "
                        "settled elsewhere; this writer's result was not stored"
                    )
                pos, reply_id, resumed = row[0], row[1], row[3] == "resuming"
            else:
                pos = at if at is not None else nxt
            first = reasoning = None
            if from_parts[0] or from_parts[1]:
                # Kept lean through the insert and the checkpoint's settling (its parts,
                # deleted, would fill the cache again beside the read-back reply).
                lean.enter_context(self.lean(db))
                assert reply is not None
                cid = reply.checkpoint_id
                if from_parts[0]:
                    first = _parts_then(db, cid, drafts[0].content)
                if from_parts[1]:
                    reasoning = _parts_then(db, cid, drafts[0].metadata["thinking"], "thinking")
            out = [
                self._insert(
                    db,
                    context_id,
                    d,
                    pos,
                    reply_id,
                    count=False,
                    body_from=None if i else first,
                    thinking_from=None if i else reasoning,
                )
                for i, d in enumerate(drafts)
            ]
            # The context's totals and last response id in one statement: each statement
            # gives up the GIL and takes it back, which from a busy event loop waits.
            guarded = last_response_id is not None and thread_version is not None
            sets, args = rows.context_totals(out, usage, None if guarded else last_response_id)
            if guarded:  # cleared if the response's thread holds records as they no longer are
                sets = f"{sets}, {_THREAD_SET}" if sets else _THREAD_SET
                args = [*args, context_id, thread_version, pos, last_response_id]
            if sets:
                db.execute(f"UPDATE contexts SET {sets} WHERE id = ?", (*args, context_id))
            if reply is not None and end is not None:
                self._settle(db, reply, end, resumed=resumed)
        return out

    def _settle(
        self, db: sqlite3.Connection, reply: ReplyTicket, end: ReplyEnd, *, resumed: bool
    ) -> None:
        cid = reply.checkpoint_id
        if end != "round" and not resumed:
            # Never interrupted (never claimed: the state says so, not the epoch, which a
            # row from before the lifecycle started at 0): nothing worth keeping beside its
            # records (which name it); its parts go with it (ON DELETE CASCADE).
            db.execute("DELETE FROM checkpoints WHERE id = ?", (cid,))
            return
        db.execute("DELETE FROM checkpoint_parts WHERE checkpoint_id = ?", (cid,))
        if end == "round":
            db.execute(
                "UPDATE checkpoints SET text = '', thinking = '', tool_calls = '[]', usage = NULL,"
                " chunks = 0, response_id = NULL, metadata = NULL, updated_at = ? WHERE id = ?",
                (self.now(), cid),
            )
        else:
            # A resume completed: the row holds again what the reply had delivered when it
            # was cut (its claim kept a copy), for audit, as a kept or discarded row does.
            now = self.now()
            db.execute(
                "UPDATE checkpoints SET state = 'completed', resolved_at = ?, updated_at = ?,"
                " owner = NULL, lease_until = NULL, text = COALESCE(cut_text, ''),"
                " thinking = COALESCE(cut_thinking, ''), cut_text = NULL, cut_thinking = NULL"
                " WHERE id = ?",
                (now, now, cid),
            )

    # -- claims, keep, discard ------------------------------------------------------------

    def _settleable(self, db: sqlite3.Connection, checkpoint_id: int, verb: str) -> Checkpoint:
        """The reply, if it is interrupted (or orphaned); else the error that says why not."""
        found = self._rows(db, "id = ?", (checkpoint_key(checkpoint_id),))
        cp = self._load(db, *found[0]) if found else None  # (in a write: it stays)
        if cp is None:
            raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
        refusal = settle_refusal(cp, verb)
        if refusal is not None:
            raise refusal
        return cp

    def claim_checkpoint(self, checkpoint_id: int, *, owner: str) -> Checkpoint:
        """Take an interrupted reply for a resume: ``RESUMING`` under a new epoch.

        The text it holds now is kept aside (``cut_text``): the resume appends to the row,
        and its commit puts that text back as the settled row's (for audit)."""
        with self._tx() as db:
            cp = self._settleable(db, checkpoint_id, "resume")
            now = self.now()
            db.execute(
                "UPDATE checkpoints SET state = 'resuming', owner = ?, epoch = epoch + 1,"
                " claimed_at = ?, claimed_by = ?, lease_until = ?, updated_at = ?,"
                " cut_text = ?, cut_thinking = ? WHERE id = ?",
                (owner, now, owner, self._lease(), now, cp.text, cp.thinking, checkpoint_id),
            )
        return _replace_state(cp, ReplyState.RESUMING, cp.epoch + 1, owner)

    def discard_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """Settle an interrupted reply as ``DISCARDED``; the row stays for audit, and what
        it was billed is spent (its usage, and :func:`.base.discarded_draft` for the cost)."""
        with self._tx() as db:
            cp = self._settleable(db, checkpoint_id, "discard")
            now = self.now()
            db.execute(
                "UPDATE checkpoints SET state = 'discarded', epoch = epoch + 1, owner = NULL,"
                " lease_until = NULL, resolved_at = ?, updated_at = ? WHERE id = ?",
                (now, now, checkpoint_id),
            )
            _spent(db, cp)
            dead = discarded_draft(cp)
            if dead is not None:  # dead: no live tokens to count
                self._insert(db, cp.context_id, dead, self._allocate(db, cp.context_id))
        return _replace_state(cp, ReplyState.DISCARDED, cp.epoch + 1, None)

    def keep_checkpoint(self, checkpoint_id: int) -> list[Record]:
        """Store an interrupted reply's partial text as its reply, in its own place."""
        with self._tx(durable=True) as db:
            cp = self._settleable(db, checkpoint_id, "keep")
            if not cp.text:
                raise ValueError(
                    f"checkpoint {checkpoint_id} holds no text to keep; discard it instead"
                )
            assert cp.pos is not None
            self._allocate(db, cp.context_id, 0)
            out = [
                self._insert(
                    db,
                    cp.context_id,
                    RecordDraft(
                        RecordType.MODEL_RESP, cp.text, streamed=True, metadata=kept_metadata(cp)
                    ),
                    cp.pos,
                    cp.reply_id,
                )
            ]
            now = self.now()
            db.execute(
                "UPDATE checkpoints SET state = 'completed', epoch = epoch + 1, owner = NULL,"
                " lease_until = NULL, resolved_at = ?, updated_at = ? WHERE id = ?",
                (now, now, checkpoint_id),
            )
            _spent(db, cp)
        return out


def _spent(db: sqlite3.Connection, cp: Checkpoint) -> None:
    """A settled reply's billed usage (its cut attempts') joins its context's totals."""
    if cp.usage is not None:
        sets, args = rows.context_totals((), cp.usage, None)
        db.execute(f"UPDATE contexts SET {sets} WHERE id = ?", (*args, cp.context_id))


def _replace_state(cp: Checkpoint, state: ReplyState, epoch: int, owner: str | None) -> Checkpoint:
    return replace(cp, state=state, epoch=epoch, owner=owner)


_REREADS = 3
"""How often a reader reads again a live row it judged orphaned, while the row changes
(:meth:`SQLiteReplies._load`); each time takes a write that landed in between."""


def _as_orphan(cp: Checkpoint) -> Checkpoint:
    """A live reply whose owner is gone, as every reader should see it: interrupted."""
    return replace(
        cp,
        state=ReplyState.INTERRUPTED,
        error=cp.error if cp.error and cp.error != IN_PROGRESS else ORPHANED,
    )


def _parts_then(
    db: sqlite3.Connection, checkpoint_id: int, tail: str, column: str = "text"
) -> long.Long:
    """A checkpoint's text, or its ``column`` (``thinking``): its row's, then its parts'
    in order (stored, so storable), then ``tail``."""
    rest = rows.storable(tail)
    assert column in ("text", "thinking")

    def pieces() -> Iterator[str]:
        row = db.execute(
            f"SELECT {column} FROM checkpoints WHERE id = ?", (checkpoint_id,)
        ).fetchone()
        if row is not None:
            yield row[0]
        # Fetched a row at a time: a part is at most PART_CHARS characters.
        for (text,) in db.execute(
            f"SELECT {column} FROM checkpoint_parts WHERE checkpoint_id = ? ORDER BY seq",
            (checkpoint_id,),
        ):
            yield text
        yield rest

    return long.Long(pieces)
