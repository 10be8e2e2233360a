"""SQLite storage: contextwindow's schema plus streaming checkpoints.

One connection per store, guarded by a lock, so a store may be shared by threads and by
many concurrent streams. WAL journal, foreign keys on, a busy timeout for other processes.
Completed replies commit with ``synchronous=FULL`` (durable once ``on_completed`` is
delivered); periodic checkpoints use ``NORMAL``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..chunks import Usage
from ..errors import (
    CheckpointNotFound,
    ContextNotFound,
    NotADatabaseError,
    StoreClosedError,
    StoreError,
)
from ..records import Checkpoint, Context, ContextStats, Record, RecordType
from ..tokens import estimate_tokens
from .base import CheckpointDraft, RecordDraft
from .migrations import migrate

__all__ = ["SQLiteStore", "open_store"]

_HEADER = b"SQLite format 3\x00"
_RECORD_COLUMNS = (
    "id, context_id, ts, source, content, live, est_tokens, response_id, streamed,"
    " tool_call_id, tool_name, metadata"
)
_CONTEXT_COLUMNS = "id, name, start_time, use_server_side_threading, last_response_id"
_CHECKPOINT_COLUMNS = (
    "id, context_id, text, thinking, tool_calls, usage, error, created_at, resolved_at,"
    " updated_at, chunks, response_id, metadata"
)
_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _storable(text: str) -> str:
    """``text`` as SQLite can hold it: split surrogate pairs joined, lone ones replaced.

    A provider may cut an escaped emoji between two deltas ("\\ud83d" then "\\ude00"); the
    joined reply then holds a surrogate pair that UTF-8 refuses, and the whole reply would
    be lost at commit. Text without surrogates (nearly all) is returned as is.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _json(value: Any) -> str | None:
    if not value:
        return None
    return _storable(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _unjson(value: str | None, default: Any) -> Any:
    return json.loads(value) if value else default


_RECORD_TYPES = {int(t): t for t in RecordType}


def _record(row: sqlite3.Row | tuple[Any, ...]) -> Record:
    # Every request reads the whole live history through here: positional arguments, a
    # dict lookup instead of the enum constructor, and json only when there is metadata.
    meta = row[11]
    return Record(
        row[0],
        row[1],
        _RECORD_TYPES[row[3]],
        row[4],
        bool(row[5]),
        row[6],
        datetime.fromisoformat(row[2]),
        row[7],
        bool(row[8]),
        row[9],
        row[10],
        json.loads(meta) if meta else {},
    )


def _context(row: sqlite3.Row | tuple[Any, ...]) -> Context:
    start = _time(row[2])
    assert start is not None
    return Context(row[0], row[1], start, bool(row[3]), row[4])


def _checkpoint(row: sqlite3.Row | tuple[Any, ...]) -> Checkpoint:
    created = _time(row[7])
    assert created is not None
    usage = _unjson(row[5], None)
    return Checkpoint(
        id=row[0],
        context_id=row[1],
        text=row[2],
        thinking=row[3],
        tool_calls=tuple(_unjson(row[4], [])),
        usage=Usage.from_dict(usage) if usage else None,
        error=row[6],
        created_at=created,
        resolved_at=_time(row[8]),
        updated_at=_time(row[9]),
        chunks=row[10],
        response_id=row[11],
        metadata=_unjson(row[12], {}),
    )


_OWNER = f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(owner: str | None) -> bool:
    """Whether the process that claimed a checkpoint is known to have exited."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: only the lease can expire it
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _check_file(path: str) -> None:
    """Refuse, without writing a byte, a path that is not (or cannot become) a database."""
    p = Path(path)
    if p.is_dir():
        raise StoreError(f"{path!r} is a directory; give a database file path")
    if not p.exists():
        if not p.parent.exists():
            raise StoreError(f"cannot create {path!r}: folder {str(p.parent)!r} does not exist")
        return
    try:
        with p.open("rb") as f:
            head = f.read(len(_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
    if head and head != _HEADER:
        raise NotADatabaseError(
            f"{path!r} is not an SQLite database (it was left unchanged); "
            "give the path of an rxcontext database or of a new file"
        )


class SQLiteStore:
    """The SQLite implementation of :class:`~rxcontext.store.base.Store`.

    Open one with :func:`rxcontext.open`. ``":memory:"`` gives a private in-memory database.
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", *, busy_timeout: float = 5.0):
        self.path = os.fspath(path)
        memory = self.path == ":memory:" or self.path.startswith("file::memory:")
        if not memory:
            _check_file(self.path)
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path!r}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if not memory:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise StoreError(
                    f"{self.path!r} is read-only; rxcontext needs to write to its database"
                ) from exc
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise NotADatabaseError(f"{self.path!r} is not a valid SQLite database") from exc
            raise StoreError(f"cannot open {self.path!r}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}{', closed' if self.closed else ''})"

    # -- plumbing -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._conn is None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StoreClosedError(
                f"store {self.path!r} is closed; open it again with rxcontext.open()"
            )
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db()
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    @contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable`` commits with ``synchronous=FULL``."""
        with self._lock:
            db = self._db()
            try:
                if durable:
                    db.execute("PRAGMA synchronous = FULL")
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                msg = str(exc)
                if "readonly" in msg:
                    raise StoreError(f"{self.path!r} is read-only: {msg}") from exc
                raise StoreError(f"database error: {msg}") from exc
            finally:
                if durable:
                    db.execute("PRAGMA synchronous = NORMAL")

    # -- contexts -------------------------------------------------------------------------

    def get_or_create_context(self, name: str) -> Context:
        """The context called ``name``, created now if missing; ``""`` gets a generated name."""
        if not isinstance(name, str):
            raise TypeError(f"context name must be a str, not {type(name).__name__}")
        name = name or uuid.uuid4().hex
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO contexts (id, name, start_time) VALUES (?, ?, ?)",
                (uuid.uuid4().hex, name, _now()),
            )
            row = db.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts WHERE name = ?", (name,)
            ).fetchone()
        return _context(row)

    def list_contexts(self) -> list[Context]:
        """All contexts, newest first."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts ORDER BY start_time DESC, rowid DESC"
            ).fetchall()
        return [_context(r) for r in rows]

    def get_context(self, context_id: str) -> Context:
        """The context with this id, or :class:`ContextNotFound`."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts WHERE id = ?", (context_id,)
            ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r}")
        return _context(row)

    def get_context_by_name(self, name: str) -> Context:
        """The context with this name, or :class:`ContextNotFound`."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context named {name!r}")
        return _context(row)

    def delete_context(self, context_id: str) -> None:
        """Delete a context with its records, tools and checkpoints."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM contexts WHERE id = ?", (context_id,))
            if cur.rowcount == 0:
                raise ContextNotFound(f"no context with id {context_id!r}")

    def clone_context(self, context_id: str, dest_name: str) -> Context:
        """Copy a context's records (timestamps included; not its tools) to a new context."""
        if not dest_name:
            raise ValueError("the clone needs a name")
        with self._tx() as db:
            src = db.execute("SELECT 1 FROM contexts WHERE id = ?", (context_id,)).fetchone()
            if src is None:
                raise ContextNotFound(f"no context with id {context_id!r}")
            if db.execute("SELECT 1 FROM contexts WHERE name = ?", (dest_name,)).fetchone():
                raise ValueError(f"a context named {dest_name!r} already exists")
            new_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO contexts (id, name, start_time, use_server_side_threading,"
                " last_response_id) SELECT ?, ?, ?, use_server_side_threading, last_response_id"
                " FROM contexts WHERE id = ?",
                (new_id, dest_name, _now(), context_id),
            )
            db.execute(
                "INSERT INTO records (context_id, ts, source, content, live, est_tokens,"
                " response_id, streamed, tool_call_id, tool_name, metadata)"
                " SELECT ?, ts, source, content, live, est_tokens, response_id, streamed,"
                " tool_call_id, tool_name, metadata FROM records WHERE context_id = ?"
                " ORDER BY ts, id",
                (new_id, context_id),
            )
            row = db.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts WHERE id = ?", (new_id,)
            ).fetchone()
        return _context(row)

    def export_context(self, context_id: str) -> dict[str, Any]:
        """A context with all its records and tools as JSON-ready dicts."""
        with self._read():
            ctx = self.get_context(context_id)
            records = self.records(context_id)
            tools = self.context_tools(context_id)
            stats = self.context_stats(context_id)
        return {
            "context": {
                "id": ctx.id,
                "name": ctx.name,
                "start_time": ctx.created_at.isoformat(),
                "use_server_side_threading": ctx.use_server_side_threading,
                "last_response_id": ctx.last_response_id,
                "usage": stats.usage.to_dict(),
            },
            "records": [
                {
                    "id": r.id,
                    "timestamp": r.timestamp.isoformat(),
                    "source": int(r.type),
                    "type": r.type.name,
                    "content": r.content,
                    "live": r.live,
                    "est_tokens": r.est_tokens,
                    "response_id": r.response_id,
                    "streamed": r.streamed,
                    "tool_call_id": r.tool_call_id,
                    "tool_name": r.tool_name,
                    "metadata": dict(r.metadata),
                }
                for r in records
            ],
            "tools": tools,
        }

    def context_stats(self, context_id: str) -> ContextStats:
        """Aggregate numbers of one context, in one query."""
        with self._read() as db:
            row = db.execute(
                "SELECT c.id, c.name, COUNT(r.id), COALESCE(SUM(r.live), 0),"
                " COALESCE(SUM(CASE WHEN r.live THEN r.est_tokens ELSE 0 END), 0),"
                " COALESCE(SUM(r.est_tokens), 0),"
                " COALESCE(SUM(r.source = 0), 0), COALESCE(SUM(r.source = 1), 0),"
                " COALESCE(SUM(r.source = 2), 0), COALESCE(SUM(r.source = 3), 0),"
                " (SELECT COUNT(*) FROM checkpoints k"
                "   WHERE k.context_id = c.id AND k.resolved_at IS NULL),"
                " c.input_tokens, c.output_tokens, c.total_tokens, c.cached_tokens,"
                " c.reasoning_tokens, MAX(r.ts)"
                " FROM contexts c LEFT JOIN records r ON r.context_id = c.id"
                " WHERE c.id = ? GROUP BY c.id",
                (context_id,),
            ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r}")
        return ContextStats(
            context_id=row[0],
            name=row[1],
            records=row[2],
            live_records=row[3],
            live_tokens=row[4],
            total_tokens=row[5],
            prompts=row[6],
            replies=row[7],
            tool_calls=row[8],
            tool_outputs=row[9],
            open_checkpoints=row[10],
            usage=Usage(row[11], row[12], row[13], row[14], row[15]),
            last_activity=_time(row[16]),
        )

    def set_threading(self, context_id: str, enabled: bool) -> None:
        """Turn server-side threading (``previous_response_id``) on or off for a context."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE contexts SET use_server_side_threading = ? WHERE id = ?",
                (int(enabled), context_id),
            )
            if cur.rowcount == 0:
                raise ContextNotFound(f"no context with id {context_id!r}")

    def set_last_response_id(self, context_id: str, response_id: str | None) -> None:
        """Remember the provider's id of the context's last response."""
        with self._tx() as db:
            db.execute(
                "UPDATE contexts SET last_response_id = ? WHERE id = ?", (response_id, context_id)
            )

    # -- records --------------------------------------------------------------------------

    @staticmethod
    def _insert(db: sqlite3.Connection, context_id: str, draft: RecordDraft, ts: str) -> Record:
        if not isinstance(draft.content, str):
            raise TypeError(f"record content must be a str, not {type(draft.content).__name__}")
        content = _storable(draft.content)
        metadata = _json(dict(draft.metadata))
        est = estimate_tokens(content)
        cur = db.execute(
            "INSERT INTO records (context_id, ts, source, content, live, est_tokens, response_id,"
            " streamed, tool_call_id, tool_name, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                context_id,
                ts,
                int(draft.type),
                content,
                int(draft.live),
                est,
                draft.response_id,
                int(draft.streamed),
                draft.tool_call_id,
                draft.tool_name,
                metadata,
            ),
        )
        assert cur.lastrowid is not None
        return Record(
            id=cur.lastrowid,
            context_id=context_id,
            type=RecordType(draft.type),
            content=content,
            live=draft.live,
            est_tokens=est,
            timestamp=datetime.fromisoformat(ts),
            response_id=draft.response_id,
            streamed=draft.streamed,
            tool_call_id=draft.tool_call_id,
            tool_name=draft.tool_name,
            metadata=_unjson(metadata, {}),  # exactly what a read gives back
        )

    @staticmethod
    def _require_context(db: sqlite3.Connection, context_id: str) -> None:
        if db.execute("SELECT 1 FROM contexts WHERE id = ?", (context_id,)).fetchone() is None:
            raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")

    def add_record(self, context_id: str, draft: RecordDraft) -> Record:
        """Append one record."""
        with self._tx() as db:
            self._require_context(db, context_id)
            return self._insert(db, context_id, draft, _now())

    def records(self, context_id: str, *, live_only: bool = False) -> list[Record]:
        """A context's records ordered by time, then id (live ones only if asked)."""
        where = "context_id = ? AND live = 1" if live_only else "context_id = ?"
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE {where} ORDER BY ts, id",
                (context_id,),
            ).fetchall()
        return [_record(r) for r in rows]

    def set_live_range(self, context_id: str, start: int, end: int, live: bool) -> int:
        """Set ``live`` on records ``start`` to ``end`` (inclusive, 0-based, in time order)."""
        if start < 0 or end < start:
            raise IndexError(f"bad record range {start}..{end}")
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM records WHERE context_id = ? ORDER BY ts, id", (context_id,)
                )
            ]
            if end >= len(ids):
                raise IndexError(
                    f"record range {start}..{end} is outside 0..{len(ids) - 1} of this context"
                )
            chosen = ids[start : end + 1]
            db.executemany(
                "UPDATE records SET live = ? WHERE id = ?", [(int(live), i) for i in chosen]
            )
        return len(chosen)

    def replace_system_prompt(self, context_id: str, content: str) -> Record:
        """Delete the context's system prompt(s) and store ``content`` as the new one."""
        with self._tx() as db:
            self._require_context(db, context_id)
            first = db.execute(
                "SELECT MIN(ts) FROM records WHERE context_id = ?", (context_id,)
            ).fetchone()[0]
            db.execute(
                "DELETE FROM records WHERE context_id = ? AND source = ?",
                (context_id, int(RecordType.SYSTEM_PROMPT)),
            )
            # The system prompt sorts first: a microsecond before the oldest record.
            ts = (
                (datetime.fromisoformat(first) - timedelta(microseconds=1)).isoformat(
                    timespec="microseconds"
                )
                if first
                else _now()
            )
            return self._insert(db, context_id, RecordDraft(RecordType.SYSTEM_PROMPT, content), ts)

    def replace_records(
        self, context_id: str, dead_ids: Sequence[int], draft: RecordDraft
    ) -> Record:
        """Mark ``dead_ids`` dead and insert ``draft`` in their place, in one transaction.

        The new record takes the time of the earliest replaced one, so it sorts where they
        were. Raises ``ValueError`` (changing nothing) if any of them is no longer a live
        record of this context: the proposal is stale.
        """
        ids = list(dict.fromkeys(dead_ids))
        if not ids:
            raise ValueError("no records to replace")
        with self._tx() as db:
            self._require_context(db, context_id)
            marks = ",".join("?" * len(ids))
            row = db.execute(
                f"SELECT COUNT(*), MIN(ts) FROM records"
                f" WHERE context_id = ? AND live = 1 AND id IN ({marks})",
                (context_id, *ids),
            ).fetchone()
            if row[0] != len(ids):
                raise ValueError(
                    f"{len(ids) - row[0]} of the {len(ids)} records to replace are no longer "
                    "live in this context (stale summary?); nothing was changed"
                )
            db.executemany("UPDATE records SET live = 0 WHERE id = ?", [(i,) for i in ids])
            return self._insert(db, context_id, draft, row[1])

    def commit_reply(
        self,
        context_id: str,
        drafts: Sequence[RecordDraft],
        *,
        usage: Usage | None = None,
        last_response_id: str | None = None,
        drop_checkpoint: int | None = None,
        resolve_checkpoint: int | None = None,
    ) -> list[Record]:
        """Store a completed reply durably, in one transaction.

        Writes ``drafts``, adds ``usage`` to the context's totals, remembers the last response
        id, deletes the reply's running checkpoint and marks a resumed one resolved.
        """
        with self._tx(durable=True) as db:
            # Read the clock inside the transaction: a time taken before waiting for the
            # lock would sort this reply before replies committed ahead of it.
            now = _now()
            self._require_context(db, context_id)
            out = [self._insert(db, context_id, d, now) for d in drafts]
            if usage is not None:
                db.execute(
                    "UPDATE contexts SET "
                    + ", ".join(f"{f} = {f} + ?" for f in _USAGE_FIELDS)
                    + " WHERE id = ?",
                    (*(getattr(usage, f) for f in _USAGE_FIELDS), context_id),
                )
            if last_response_id is not None:
                db.execute(
                    "UPDATE contexts SET last_response_id = ? WHERE id = ?",
                    (last_response_id, context_id),
                )
            if drop_checkpoint is not None:
                db.execute("DELETE FROM checkpoints WHERE id = ?", (drop_checkpoint,))
            if resolve_checkpoint is not None:
                db.execute(
                    "UPDATE checkpoints SET resolved_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, resolve_checkpoint),
                )
        return out

    # -- tools ----------------------------------------------------------------------------

    def set_context_tool(self, context_id: str, name: str, definition: Mapping[str, Any]) -> None:
        """Record that ``name`` is available in the context (with its schema)."""
        with self._tx() as db:
            self._require_context(db, context_id)
            db.execute(
                "INSERT INTO context_tools (context_id, tool_name, created_at, definition)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(context_id, tool_name)"
                " DO UPDATE SET definition = excluded.definition",
                (context_id, name, _now(), _json(dict(definition))),
            )

    def context_tools(self, context_id: str) -> list[dict[str, Any]]:
        """Tools recorded for the context, oldest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT tool_name, created_at, definition FROM context_tools"
                " WHERE context_id = ? ORDER BY created_at, id",
                (context_id,),
            ).fetchall()
        return [{"name": r[0], "created_at": r[1], "definition": _unjson(r[2], {})} for r in rows]

    def remove_context_tool(self, context_id: str, name: str) -> bool:
        """Forget a tool; whether it was there."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM context_tools WHERE context_id = ? AND tool_name = ?",
                (context_id, name),
            )
            return cur.rowcount > 0

    # -- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(
        self, context_id: str, draft: CheckpointDraft, checkpoint_id: int | None = None
    ) -> Checkpoint:
        """Insert a checkpoint, or update ``checkpoint_id`` in place."""
        now = _now()
        values = (
            _storable(draft.text),
            _storable(draft.thinking),
            _storable(json.dumps(list(draft.tool_calls), ensure_ascii=False)),
            _json(draft.usage.to_dict()) if draft.usage else None,
            _storable(draft.error) if draft.error is not None else None,
            draft.chunks,
            draft.response_id,
            _json(dict(draft.metadata)),
        )
        with self._tx() as db:
            if checkpoint_id is None:
                self._require_context(db, context_id)
                cur = db.execute(
                    "INSERT INTO checkpoints (text, thinking, tool_calls, usage, error, chunks,"
                    " response_id, metadata, context_id, created_at, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (*values, context_id, now, now),
                )
                assert cur.lastrowid is not None
                checkpoint_id = cur.lastrowid
            else:
                db.execute(
                    "UPDATE checkpoints SET text = ?, thinking = ?, tool_calls = ?, usage = ?,"
                    " error = ?, chunks = ?, response_id = ?, metadata = ?, updated_at = ?"
                    " WHERE id = ?",
                    (*values, now, checkpoint_id),
                )
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = ?", (checkpoint_id,)
            ).fetchone()
        if row is None:
            raise CheckpointNotFound(f"checkpoint {checkpoint_id} vanished (context deleted?)")
        return _checkpoint(row)

    def get_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """One checkpoint by id, or :class:`CheckpointNotFound`."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = ?", (checkpoint_id,)
            ).fetchone()
        if row is None:
            raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
        return _checkpoint(row)

    def checkpoints(self, context_id: str, *, include_resolved: bool = False) -> list[Checkpoint]:
        """A context's checkpoints, oldest first (unresolved only unless asked)."""
        where = "context_id = ?" + ("" if include_resolved else " AND resolved_at IS NULL")
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE {where} ORDER BY id",
                (context_id,),
            ).fetchall()
        return [_checkpoint(r) for r in rows]

    def claim_checkpoint(self, checkpoint_id: int, *, stale_after: float = 300.0) -> bool:
        """Atomically take an unresolved checkpoint for a resume; False if someone holds it.

        A claim is held by a process (``host:pid``). It can be taken over when that process
        is gone (same host) or when neither the claim nor the checkpoint has been touched for
        ``stale_after`` seconds (a resume's periodic checkpoints keep it fresh), so a resume
        killed mid-way does not lock its checkpoint for ever.
        """
        now = datetime.now(UTC)
        cutoff = (now - timedelta(seconds=stale_after)).isoformat(timespec="microseconds")
        with self._tx() as db:
            row = db.execute(
                "SELECT claimed_at, claimed_by, updated_at, resolved_at FROM checkpoints"
                " WHERE id = ?",
                (checkpoint_id,),
            ).fetchone()
            if row is None or row[3] is not None:
                return False
            claimed_at, claimed_by, updated_at = row[0], row[1], row[2]
            if claimed_at is not None:
                stale = max(claimed_at, updated_at or "") < cutoff or _owner_gone(claimed_by)
                if not stale:
                    return False
            db.execute(
                "UPDATE checkpoints SET claimed_at = ?, claimed_by = ? WHERE id = ?",
                (now.isoformat(timespec="microseconds"), _OWNER, checkpoint_id),
            )
            return True

    def release_checkpoint(self, checkpoint_id: int) -> None:
        """Give a claimed checkpoint back (its resume failed)."""
        with self._tx() as db:
            db.execute(
                "UPDATE checkpoints SET claimed_at = NULL, claimed_by = NULL WHERE id = ?",
                (checkpoint_id,),
            )


def open_store(path: str | os.PathLike[str] = ":memory:", **kwargs: Any) -> SQLiteStore:
    """Open (creating if missing) the SQLite database at ``path``; ``":memory:"`` works."""
    return SQLiteStore(path, **kwargs)
