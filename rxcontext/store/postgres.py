"""PostgreSQL storage (psycopg 3): the same :class:`~rxcontext.store.base.Store` as SQLite,
shared by many processes on many hosts.

Open one with ``rxcontext.open("postgresql://user@host:5432/db")`` (needs the ``postgres``
extra). Design (see shared/DESIGN.md, "Scale-out"):

* A connection pool (``psycopg_pool``), ``autocommit`` with explicit transactions, READ
  COMMITTED, no prepared statements, no session-level state (advisory locks, ``LISTEN``), so
  it also works behind PgBouncer in transaction mode.
* Records are ordered by a per-context position, ``(pos, id)``. Every write that touches a
  context first takes that context's row lock (``UPDATE contexts … RETURNING``), which also
  allocates positions and says whether the context exists; the lock is held to COMMIT, so
  commit order is position order and a reader never sees a later position before an earlier.
* A completed reply (:meth:`PostgresStore.commit_reply`) commits with
  ``synchronous_commit`` at least ``on``; checkpoints use ``off`` (the server may lose the
  last few on a crash, never corrupt them), as SQLite uses ``FULL`` and ``NORMAL``.
* Transient failures are retried within ``retry_budget`` seconds (:mod:`.pg_run`); a commit
  whose COMMIT was cut off is settled by its commit id, never stored twice.
* Strings go through :mod:`.pg_codec`, so everything round-trips exactly as with SQLite.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ..chunks import Usage
from ..errors import CheckpointNotFound, ContextNotFound, StoreError
from ..records import Checkpoint, Context, ContextStats, Record, RecordType
from ..tokens import estimate_tokens
from .base import CheckpointDraft, RecordDraft
from .pg_codec import dec, dec_opt, enc, enc_opt
from .pg_migrations import migrate
from .pg_run import Conn, Runner, Stored, connect_with_retry, first_line, redact
from ._sqlite_rows import storable as _storable, to_json as _json

__all__ = ["PostgresStore"]

_CONTEXT_COLUMNS = "id, name, start_time, use_server_side_threading, last_response_id"
_RECORD_COLUMNS = (
    "id, context_id, ts, source, content, live, est_tokens, response_id, streamed,"
    " tool_call_id, tool_name, metadata"
)
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
_RECORD_TYPES = {int(t): t for t in RecordType}
_INSERT_RECORD = (
    "INSERT INTO records (context_id, pos, ts, source, content, live, est_tokens, response_id,"
    " streamed, tool_call_id, tool_name, metadata, commit_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
_ONE_MICROSECOND = timedelta(microseconds=1)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _utc_opt(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _unjson(value: str | None, default: Any) -> Any:
    return json.loads(dec(value)) if value else default


def _context(row: Sequence[Any]) -> Context:
    return Context(row[0], dec(row[1]), _utc(row[2]), row[3], dec_opt(row[4]))


def _record(row: Sequence[Any]) -> Record:
    meta = row[11]
    return Record(
        row[0],
        row[1],
        _RECORD_TYPES[row[3]],
        dec(row[4]),
        row[5],
        row[6],
        _utc(row[2]),
        dec_opt(row[7]),
        row[8],
        dec_opt(row[9]),
        dec_opt(row[10]),
        json.loads(dec(meta)) if meta else {},
    )


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    usage = _unjson(row[5], None)
    return Checkpoint(
        id=row[0],
        context_id=row[1],
        text=dec(row[2]),
        thinking=dec(row[3]),
        tool_calls=tuple(_unjson(row[4], [])),
        usage=Usage.from_dict(usage) if usage else None,
        error=dec_opt(row[6]),
        created_at=_utc(row[7]),
        resolved_at=_utc_opt(row[8]),
        updated_at=_utc_opt(row[9]),
        chunks=row[10],
        response_id=dec_opt(row[11]),
        metadata=_unjson(row[12], {}),
    )


class _Draft:
    """A record draft checked and encoded before any statement is sent."""

    __slots__ = ("content", "draft", "est", "metadata", "type")

    def __init__(self, draft: RecordDraft) -> None:
        if not isinstance(draft.content, str):
            raise TypeError(f"record content must be a str, not {type(draft.content).__name__}")
        self.draft = draft
        self.type = RecordType(draft.type)
        self.content = _storable(draft.content)
        self.est = estimate_tokens(self.content)
        self.metadata = _json(dict(draft.metadata))

    def params(self, context_id: str, pos: int, ts: datetime, commit_id: str) -> tuple[Any, ...]:
        d = self.draft
        return (
            context_id,
            pos,
            ts,
            int(self.type),
            enc(self.content),
            d.live,
            self.est,
            enc_opt(d.response_id),
            d.streamed,
            enc_opt(d.tool_call_id),
            enc_opt(d.tool_name),
            enc_opt(self.metadata),
            commit_id,
        )

    def record(self, id: int, context_id: str, ts: datetime) -> Record:
        d = self.draft
        return Record(
            id=id,
            context_id=context_id,
            type=self.type,
            content=self.content,
            live=d.live,
            est_tokens=self.est,
            timestamp=_utc(ts),
            response_id=d.response_id,
            streamed=d.streamed,
            tool_call_id=d.tool_call_id,
            tool_name=d.tool_name,
            metadata=json.loads(self.metadata) if self.metadata else {},
        )


def _insert(
    conn: Conn, context_id: str, drafts: Sequence[_Draft], pos: int, ts: datetime, commit_id: str
) -> list[Record]:
    """Insert ``drafts`` at positions ``pos``, ``pos + 1``, … (one pipelined round trip)."""
    if not drafts:
        return []
    params = [d.params(context_id, pos + i, ts, commit_id) for i, d in enumerate(drafts)]
    cur = conn.cursor()
    if len(params) == 1:
        cur.execute(_INSERT_RECORD, params[0])
        ids = [cur.fetchone()[0]]  # type: ignore[index]
    else:
        cur.executemany(_INSERT_RECORD, params, returning=True)
        ids = []
        while True:
            ids.append(cur.fetchone()[0])  # type: ignore[index]
            if not cur.nextset():
                break
    return [d.record(i, context_id, ts) for d, i in zip(drafts, ids, strict=True)]


def _lock(conn: Conn, context_id: str, take: int = 0) -> tuple[int, datetime]:
    """Lock the context's row (held to COMMIT) and take ``take`` positions.

    Returns the first position taken (the next free one when ``take`` is 0) and the database
    clock read after the lock, so timestamps follow commit order. No row: ContextNotFound.
    """
    row = conn.execute(
        "UPDATE contexts SET next_pos = next_pos + %s WHERE id = %s"
        " RETURNING next_pos - %s, clock_timestamp()",
        (take, context_id, take),
    ).fetchone()
    if row is None:
        raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
    return row[0], row[1]


def _written(conn: Conn, commit_id: str) -> list[Record]:
    return [
        _record(r)
        for r in conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE commit_id = %s ORDER BY pos, id",
            (commit_id,),
        )
    ]


def _settle(conn: Conn, ambiguous: bool, commit_id: str) -> None:
    """After the lock, on a retry whose COMMIT was cut off: return the record it stored.

    For writes of one record. The lock waited for the earlier attempt if it was still
    running on the server, so its outcome is settled by now.
    """
    if ambiguous:
        done = _written(conn, commit_id)
        if done:
            raise Stored(done[0])


_HOST = socket.gethostname()


def _claimer_gone(claimed_by: str | None) -> bool:
    """Whether the process that claimed a checkpoint is known to have exited (same host)."""
    if not claimed_by:
        return False
    parts = claimed_by.split(":")
    if len(parts) < 3 or parts[-3] != _HOST or not parts[-2].isdigit():
        return False  # another machine: only the lease can expire it
    pid = int(parts[-2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class PostgresStore:
    """The PostgreSQL implementation of :class:`~rxcontext.store.base.Store`.

    Open one with :func:`rxcontext.open` and a ``postgresql://`` URL. ``pool_size`` caps
    this store's connections (mind the server's ``max_connections`` across processes);
    ``retry_budget`` is how long, in seconds, a call keeps retrying while the server is
    unreachable before it raises :class:`~rxcontext.StoreError`.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        retry_budget: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        scheme, sep, rest = url.partition("://")
        if sep and scheme.lower() in ("postgresql", "postgres"):
            url = scheme.lower() + sep + rest  # libpq knows the scheme in lower case only
        self.url = redact(url)  # never the password
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": None,  # PgBouncer transaction mode has no prepared statements
            "connect_timeout": max(2, round(connect_timeout)),
        }
        conn = connect_with_retry(url, self.url, retry_budget=retry_budget, kwargs=kwargs)
        try:
            migrate(conn, self.url)
            row = conn.execute("SHOW synchronous_commit").fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"cannot prepare {self.url}: {first_line(exc)}") from exc
        finally:
            conn.close()
        # Completed replies commit with at least "on"; an operator's stronger setting
        # (remote_write, remote_apply) is kept.
        self._durable = "SET LOCAL synchronous_commit = on" if row and row[0] == "off" else None
        self._runner = Runner(
            url,
            self.url,
            pool_size=pool_size,
            retry_budget=retry_budget,
            connect_timeout=connect_timeout,
            kwargs=kwargs,
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r}{', closed' if self.closed else ''})"

    @property
    def path(self) -> str:
        """Where the data lives (the URL without its password), as ``SQLiteStore.path``."""
        return self.url

    @property
    def retry_budget(self) -> float:
        """Seconds a call keeps retrying an unreachable server before raising StoreError."""
        return self._runner.retry_budget

    # -- plumbing -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._runner.closed

    def close(self) -> None:
        """Close the pool (idempotent)."""
        self._runner.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, body: Callable[[Conn], Any]) -> Any:
        return self._runner.run(lambda conn, _: body(conn), tx=False)

    # -- contexts -------------------------------------------------------------------------

    def get_or_create_context(self, name: str) -> Context:
        """The context called ``name``, created now if missing; ``""`` gets a generated name."""
        if not isinstance(name, str):
            raise TypeError(f"context name must be a str, not {type(name).__name__}")
        stored = enc(name or uuid.uuid4().hex)
        new_id = uuid.uuid4().hex

        def body(conn: Conn, _: bool) -> Context:
            conn.execute(
                "INSERT INTO contexts (id, name) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (new_id, stored),
            )
            row = conn.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts WHERE name = %s", (stored,)
            ).fetchone()
            assert row is not None
            return _context(row)

        return self._runner.run(body)

    def list_contexts(self) -> list[Context]:
        """All contexts, newest first."""
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts ORDER BY start_time DESC, id DESC"
            ).fetchall()
        )
        return [_context(r) for r in rows]

    @staticmethod
    def _context_by_id(conn: Conn, context_id: str) -> Context:
        row = conn.execute(
            f"SELECT {_CONTEXT_COLUMNS} FROM contexts WHERE id = %s", (context_id,)
        ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r}")
        return _context(row)

    def get_context(self, context_id: str) -> Context:
        """The context with this id, or :class:`ContextNotFound`."""
        return self._read(lambda c: self._context_by_id(c, context_id))  # type: ignore[no-any-return]

    def get_context_by_name(self, name: str) -> Context:
        """The context with this name, or :class:`ContextNotFound`."""
        row = self._read(
            lambda c: c.execute(
                f"SELECT {_CONTEXT_COLUMNS} FROM contexts WHERE name = %s", (enc(name),)
            ).fetchone()
        )
        if row is None:
            raise ContextNotFound(f"no context named {name!r}")
        return _context(row)

    def delete_context(self, context_id: str) -> None:
        """Delete a context with its records, tools and checkpoints."""

        def body(conn: Conn, ambiguous: bool) -> None:
            cur = conn.execute("DELETE FROM contexts WHERE id = %s", (context_id,))
            if cur.rowcount == 0 and not ambiguous:  # ambiguous: our first try deleted it
                raise ContextNotFound(f"no context with id {context_id!r}")

        self._runner.run(body)

    def clone_context(self, context_id: str, dest_name: str) -> Context:
        """Copy a context's records (positions and timestamps; not its tools) to a new one."""
        if not dest_name:
            raise ValueError("the clone needs a name")
        new_id = uuid.uuid4().hex
        commit_id = f"clone:{new_id}"

        def body(conn: Conn, ambiguous: bool) -> Context:
            src = conn.execute(  # FOR SHARE: no commit to the source while we copy it
                "SELECT next_pos FROM contexts WHERE id = %s FOR SHARE", (context_id,)
            ).fetchone()
            if src is None:
                raise ContextNotFound(f"no context with id {context_id!r}")
            row = conn.execute(
                "INSERT INTO contexts (id, name, use_server_side_threading, last_response_id,"
                " next_pos) SELECT %s, %s, use_server_side_threading, last_response_id,"
                " next_pos FROM contexts WHERE id = %s ON CONFLICT (name) DO NOTHING"
                f" RETURNING {_CONTEXT_COLUMNS}",
                (new_id, enc(dest_name), context_id),
            ).fetchone()
            if row is None:
                if (
                    ambiguous
                    and conn.execute(
                        "SELECT 1 FROM commits WHERE commit_id = %s", (commit_id,)
                    ).fetchone()
                ):
                    raise Stored(self._context_by_id(conn, new_id))
                raise ValueError(f"a context named {dest_name!r} already exists")
            conn.execute(
                "INSERT INTO records (context_id, pos, ts, source, content, live, est_tokens,"
                " response_id, streamed, tool_call_id, tool_name, metadata)"
                " SELECT %s, pos, ts, source, content, live, est_tokens, response_id, streamed,"
                " tool_call_id, tool_name, metadata FROM records WHERE context_id = %s"
                " ORDER BY pos, id",
                (new_id, context_id),
            )
            conn.execute(
                "INSERT INTO commits (commit_id, context_id) VALUES (%s, %s)", (commit_id, new_id)
            )
            return _context(row)

        return self._runner.run(body)

    def export_context(self, context_id: str) -> dict[str, Any]:
        """A context with all its records and tools as JSON-ready dicts (one snapshot)."""

        def body(conn: Conn, _: bool) -> tuple[Any, ...]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return (
                self._context_by_id(conn, context_id),
                self._records(conn, context_id, False),
                self._tools(conn, context_id),
                self._stats(conn, context_id),
            )

        ctx, records, tools, stats = self._runner.run(body)
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

    @staticmethod
    def _stats(conn: Conn, context_id: str) -> ContextStats:
        row = conn.execute(
            "SELECT c.id, c.name, COUNT(r.id), COUNT(r.id) FILTER (WHERE r.live),"
            " COALESCE(SUM(r.est_tokens) FILTER (WHERE r.live), 0)::bigint,"
            " COALESCE(SUM(r.est_tokens), 0)::bigint,"
            " COUNT(r.id) FILTER (WHERE r.source = 0), COUNT(r.id) FILTER (WHERE r.source = 1),"
            " COUNT(r.id) FILTER (WHERE r.source = 2), COUNT(r.id) FILTER (WHERE r.source = 3),"
            " (SELECT COUNT(*) FROM checkpoints k"
            "   WHERE k.context_id = c.id AND k.resolved_at IS NULL),"
            " c.input_tokens, c.output_tokens, c.total_tokens, c.cached_tokens,"
            " c.reasoning_tokens, MAX(r.ts)"
            " FROM contexts c LEFT JOIN records r ON r.context_id = c.id"
            " WHERE c.id = %s GROUP BY c.id",
            (context_id,),
        ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r}")
        return ContextStats(
            context_id=row[0],
            name=dec(row[1]),
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
            last_activity=_utc_opt(row[16]),
        )

    def context_stats(self, context_id: str) -> ContextStats:
        """Aggregate numbers of one context, in one query."""
        return self._read(lambda c: self._stats(c, context_id))  # type: ignore[no-any-return]

    def set_threading(self, context_id: str, enabled: bool) -> None:
        """Turn server-side threading (``previous_response_id``) on or off for a context."""

        def body(conn: Conn, _: bool) -> None:
            cur = conn.execute(
                "UPDATE contexts SET use_server_side_threading = %s WHERE id = %s",
                (bool(enabled), context_id),
            )
            if cur.rowcount == 0:
                raise ContextNotFound(f"no context with id {context_id!r}")

        self._runner.run(body, tx=False)

    def set_last_response_id(self, context_id: str, response_id: str | None) -> None:
        """Remember the provider's id of the context's last response."""
        self._runner.run(
            lambda conn, _: conn.execute(
                "UPDATE contexts SET last_response_id = %s WHERE id = %s",
                (enc_opt(response_id), context_id),
            ),
            tx=False,
        )

    # -- records --------------------------------------------------------------------------

    def add_record(self, context_id: str, draft: RecordDraft) -> Record:
        """Append one record at the context's next position."""
        d = _Draft(draft)
        commit_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Record:
            pos, ts = _lock(conn, context_id, 1)
            _settle(conn, ambiguous, commit_id)
            return _insert(conn, context_id, [d], pos, ts, commit_id)[0]

        return self._runner.run(body)

    @staticmethod
    def _records(conn: Conn, context_id: str, live_only: bool) -> list[Record]:
        where = "context_id = %s AND live" if live_only else "context_id = %s"
        cur = conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE {where} ORDER BY pos, id",
            (context_id,),
        )
        return [_record(r) for r in cur]

    def records(self, context_id: str, *, live_only: bool = False) -> list[Record]:
        """A context's records in position order (live ones only if asked)."""
        return self._read(lambda c: self._records(c, context_id, live_only))  # type: ignore[no-any-return]

    def set_live_range(self, context_id: str, start: int, end: int, live: bool) -> int:
        """Set ``live`` on records ``start`` to ``end`` (inclusive, 0-based, in order)."""
        if start < 0 or end < start:
            raise IndexError(f"bad record range {start}..{end}")

        def body(conn: Conn, _: bool) -> int:
            try:
                _lock(conn, context_id)
            except ContextNotFound:
                ids: list[int] = []
            else:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM records WHERE context_id = %s ORDER BY pos, id",
                        (context_id,),
                    )
                ]
            if end >= len(ids):
                raise IndexError(
                    f"record range {start}..{end} is outside 0..{len(ids) - 1} of this context"
                )
            chosen = ids[start : end + 1]
            conn.execute("UPDATE records SET live = %s WHERE id = ANY(%s)", (bool(live), chosen))
            return len(chosen)

        return self._runner.run(body)

    def replace_system_prompt(self, context_id: str, content: str) -> Record:
        """Delete the context's system prompt(s) and store ``content`` as the new one, first."""
        d = _Draft(RecordDraft(RecordType.SYSTEM_PROMPT, content))
        commit_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Record:
            pos, ts = _lock(conn, context_id)
            _settle(conn, ambiguous, commit_id)
            first = conn.execute(
                "SELECT MIN(pos), MIN(ts) FROM records WHERE context_id = %s", (context_id,)
            ).fetchone()
            conn.execute(
                "DELETE FROM records WHERE context_id = %s AND source = %s",
                (context_id, int(RecordType.SYSTEM_PROMPT)),
            )
            if first is not None and first[0] is not None:
                # Before everything: one position and a microsecond before the oldest record.
                pos, ts = first[0] - 1, first[1] - _ONE_MICROSECOND
            else:
                pos, ts = _lock(conn, context_id, 1)
            return _insert(conn, context_id, [d], pos, ts, commit_id)[0]

        return self._runner.run(body)

    def replace_records(
        self, context_id: str, dead_ids: Sequence[int], draft: RecordDraft
    ) -> Record:
        """Mark ``dead_ids`` dead and insert ``draft`` in their place, in one transaction.

        The new record takes the position (and time) of the earliest replaced one, so it
        sorts where they were. Raises ``ValueError`` (changing nothing) if any of them is no
        longer a live record of this context: the proposal is stale.
        """
        ids = list(dict.fromkeys(dead_ids))
        if not ids:
            raise ValueError("no records to replace")
        d = _Draft(draft)
        commit_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Record:
            _lock(conn, context_id)
            _settle(conn, ambiguous, commit_id)
            row = conn.execute(
                "SELECT COUNT(*), MIN(pos), MIN(ts) FROM records"
                " WHERE context_id = %s AND live AND id = ANY(%s)",
                (context_id, ids),
            ).fetchone()
            assert row is not None
            if row[0] != len(ids):
                raise ValueError(
                    f"{len(ids) - row[0]} of the {len(ids)} records to replace are no longer "
                    "live in this context (stale summary?); nothing was changed"
                )
            conn.execute("UPDATE records SET live = false WHERE id = ANY(%s)", (ids,))
            return _insert(conn, context_id, [d], row[1], row[2], commit_id)[0]

        return self._runner.run(body)

    def commit_reply(
        self,
        context_id: str,
        drafts: Sequence[RecordDraft],
        *,
        usage: Usage | None = None,
        last_response_id: str | None = None,
        drop_checkpoint: int | None = None,
        resolve_checkpoint: int | None = None,
        commit_id: str | None = None,
    ) -> list[Record]:
        """Store a completed reply durably, in one transaction, exactly once.

        Writes ``drafts`` at the context's next positions, adds ``usage`` to its totals,
        remembers the last response id, deletes the reply's running checkpoint and marks a
        resumed one resolved. ``commit_id`` (made up if not given) is an idempotency key: a
        second commit with the same key stores nothing and returns the records of the first,
        which is how a commit whose COMMIT was cut off is retried safely.
        """
        prepared = [_Draft(d) for d in drafts]
        key = commit_id if commit_id is not None else uuid.uuid4().hex
        add = [getattr(usage, f) for f in _USAGE_FIELDS] if usage is not None else [0] * 5
        rid = enc_opt(last_response_id)

        def body(conn: Conn, _: bool) -> list[Record]:
            row = conn.execute(
                "UPDATE contexts SET next_pos = next_pos + %s, "
                + ", ".join(f"{f} = {f} + %s" for f in _USAGE_FIELDS)
                + ", last_response_id = COALESCE(%s, last_response_id)"
                " WHERE id = %s RETURNING next_pos - %s, clock_timestamp()",
                (len(prepared), *add, rid, context_id, len(prepared)),
            ).fetchone()
            if row is None:
                raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
            pos, ts = row
            first = conn.execute(
                "INSERT INTO commits (commit_id, context_id) VALUES (%s, %s)"
                " ON CONFLICT (commit_id) DO NOTHING RETURNING 1",
                (key, context_id),
            ).fetchone()
            if first is None:
                raise Stored(_written(conn, key))
            out = _insert(conn, context_id, prepared, pos, ts, key)
            if drop_checkpoint is not None:
                conn.execute("DELETE FROM checkpoints WHERE id = %s", (drop_checkpoint,))
            if resolve_checkpoint is not None:
                conn.execute(
                    "UPDATE checkpoints SET resolved_at = %s, updated_at = %s,"
                    " state = 'completed' WHERE id = %s",
                    (ts, ts, resolve_checkpoint),
                )
            return out

        return self._runner.run(body, setup=self._durable)

    # -- tools ----------------------------------------------------------------------------

    def set_context_tool(self, context_id: str, name: str, definition: Mapping[str, Any]) -> None:
        """Record that ``name`` is available in the context (with its schema)."""
        definition_json = enc_opt(_json(dict(definition)))

        def body(conn: Conn, _: bool) -> None:
            _lock(conn, context_id)
            conn.execute(
                "INSERT INTO context_tools (context_id, tool_name, definition)"
                " VALUES (%s, %s, %s) ON CONFLICT (context_id, tool_name)"
                " DO UPDATE SET definition = excluded.definition",
                (context_id, enc(name), definition_json),
            )

        self._runner.run(body)

    @staticmethod
    def _tools(conn: Conn, context_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT tool_name, created_at, definition FROM context_tools"
            " WHERE context_id = %s ORDER BY created_at, id",
            (context_id,),
        ).fetchall()
        return [
            {
                "name": dec(r[0]),
                "created_at": _utc(r[1]).isoformat(timespec="microseconds"),
                "definition": _unjson(r[2], {}),
            }
            for r in rows
        ]

    def context_tools(self, context_id: str) -> list[dict[str, Any]]:
        """Tools recorded for the context, oldest first."""
        return self._read(lambda c: self._tools(c, context_id))  # type: ignore[no-any-return]

    def remove_context_tool(self, context_id: str, name: str) -> bool:
        """Forget a tool; whether it was there."""
        removed: list[bool] = []

        def body(conn: Conn, ambiguous: bool) -> bool:
            cur = conn.execute(
                "DELETE FROM context_tools WHERE context_id = %s AND tool_name = %s",
                (context_id, enc(name)),
            )
            # A retry after a cut-off COMMIT finds nothing: what the first try found counts.
            removed.append(cur.rowcount > 0)
            return removed[0] if ambiguous else removed[-1]

        return self._runner.run(body)

    # -- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(
        self, context_id: str, draft: CheckpointDraft, checkpoint_id: int | None = None
    ) -> Checkpoint:
        """Insert a checkpoint, or update ``checkpoint_id`` in place.

        Commits with ``synchronous_commit = off``: a server crash may lose the last writes,
        never corrupt them (SQLite's ``synchronous=NORMAL``).
        """
        values = (
            enc(_storable(draft.text)),
            enc(_storable(draft.thinking)),
            enc(_storable(json.dumps(list(draft.tool_calls), ensure_ascii=False))),
            enc_opt(_json(draft.usage.to_dict()) if draft.usage else None),
            enc(_storable(draft.error)) if draft.error is not None else None,
            draft.chunks,
            enc_opt(draft.response_id),
            enc_opt(_json(dict(draft.metadata))),
        )
        reply_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Any:
            if checkpoint_id is None:
                _lock(conn, context_id)
                if ambiguous:
                    row = conn.execute(
                        f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE reply_id = %s",
                        (reply_id,),
                    ).fetchone()
                    if row is not None:
                        raise Stored(row)
                return conn.execute(
                    "INSERT INTO checkpoints (text, thinking, tool_calls, usage, error, chunks,"
                    " response_id, metadata, context_id, reply_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    f" RETURNING {_CHECKPOINT_COLUMNS}",
                    (*values, context_id, reply_id),
                ).fetchone()
            return conn.execute(
                "UPDATE checkpoints SET text = %s, thinking = %s, tool_calls = %s, usage = %s,"
                " error = %s, chunks = %s, response_id = %s, metadata = %s,"
                f" updated_at = clock_timestamp() WHERE id = %s RETURNING {_CHECKPOINT_COLUMNS}",
                (*values, checkpoint_id),
            ).fetchone()

        row = self._runner.run(body, setup="SET LOCAL synchronous_commit = off")
        if row is None:
            raise CheckpointNotFound(f"checkpoint {checkpoint_id} vanished (context deleted?)")
        return _checkpoint(row)

    def get_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """One checkpoint by id, or :class:`CheckpointNotFound`."""
        row = self._read(
            lambda c: c.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE id = %s", (checkpoint_id,)
            ).fetchone()
        )
        if row is None:
            raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
        return _checkpoint(row)

    def checkpoints(self, context_id: str, *, include_resolved: bool = False) -> list[Checkpoint]:
        """A context's checkpoints, oldest first (unresolved only unless asked)."""
        where = "context_id = %s" + ("" if include_resolved else " AND resolved_at IS NULL")
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE {where} ORDER BY id",
                (context_id,),
            ).fetchall()
        )
        return [_checkpoint(r) for r in rows]

    def claim_checkpoint(self, checkpoint_id: int, *, stale_after: float = 300.0) -> bool:
        """Atomically take an unresolved checkpoint for a resume; False if someone holds it.

        As with SQLite, a claim can be taken over when its process is gone (same host) or
        when neither the claim nor the checkpoint has been touched for ``stale_after``
        seconds (by the database clock). The row lock makes exactly one claimer win.
        """
        me = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

        def body(conn: Conn, ambiguous: bool) -> bool:
            row = conn.execute(
                "SELECT claimed_by, resolved_at IS NOT NULL,"
                " claimed_at IS NOT NULL AND GREATEST(claimed_at, updated_at)"
                "   >= clock_timestamp() - make_interval(secs => %s)"
                " FROM checkpoints WHERE id = %s FOR UPDATE",
                (stale_after, checkpoint_id),
            ).fetchone()
            if row is None or row[1]:
                return False
            claimed_by, held = row[0], row[2]
            if claimed_by == me:
                return True  # our earlier try, whose COMMIT was cut off, got it
            if held and not _claimer_gone(claimed_by):
                return False
            conn.execute(
                "UPDATE checkpoints SET claimed_at = clock_timestamp(), claimed_by = %s"
                " WHERE id = %s",
                (me, checkpoint_id),
            )
            return True

        return self._runner.run(body)

    def release_checkpoint(self, checkpoint_id: int) -> None:
        """Give a claimed checkpoint back (its resume failed)."""
        self._runner.run(
            lambda conn, _: conn.execute(
                "UPDATE checkpoints SET claimed_at = NULL, claimed_by = NULL WHERE id = %s",
                (checkpoint_id,),
            ),
            tx=False,
        )
