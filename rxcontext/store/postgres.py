"""PostgreSQL storage (psycopg 3): the same :class:`~rxcontext.store.base.Store` as SQLite,
shared by many processes on many hosts.

Open one with ``rxcontext.open("postgresql://user@host:5432/db")`` (needs the ``postgres``
extra). Design (see shared/DESIGN.md, "Scale-out"):

* A connection pool (``psycopg_pool``), ``autocommit`` with explicit transactions, READ
  COMMITTED, no prepared statements, no session-level state (advisory locks, ``LISTEN``), so
  it also works behind PgBouncer in transaction mode.
* Records are ordered by a per-context position, ``(pos, id)``. Every write that touches a
  context first takes that context's row lock (:func:`~._pg_rows.lock_context`), which also
  allocates positions and says whether the context exists; the lock is held to COMMIT, so
  commit order is position order and a reader never sees a later position before an earlier.
* A completed reply commits with ``synchronous_commit`` at least ``on``; periodic
  checkpoints use ``off`` (a server crash may lose the last ones; the next write notices and
  writes the whole text again), as SQLite uses ``FULL`` and ``NORMAL``.
* Transient failures are retried within ``retry_budget`` seconds (:mod:`.pg_run`); a write
  whose COMMIT was cut off is settled by its commit id, never stored twice.
* Strings go through :mod:`.pg_codec`, so everything round-trips exactly as with SQLite.
* Timestamps and leases come from the database's clock (one clock for every host).

The reply lifecycle (begin, checkpoint, commit, claim, keep, discard) is in
:mod:`.pg_replies`; row encoding in :mod:`._pg_rows`; the schema in :mod:`.pg_migrations`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..chunks import Usage
from ..errors import ContextNotFound, StoreError
from ..records import Context, ContextStats, Record, RecordType
from . import _pg_blobs as blobs
from . import _pg_rows as rows
from ._export import export_document
from ._pg_rows import Draft, impossible_id, live_tokens_of, lock_context, retire, send_records
from .base import RecordDraft, Spending, check_name, check_text, usage_counts
from .owner import check_lease_ttl, process_gone
from .pg_codec import dec, enc, enc_opt
from .pg_leases import PostgresLeases
from .pg_migrations import migrate
from .pg_replies import PostgresReplies, busy_in
from .pg_run import (
    UNPARSABLE,
    Conn,
    Later,
    Runner,
    Stored,
    prepare_with_retry,
    redact,
)
from .pg_url import ambiguous, libpq_url

__all__ = ["PostgresStore"]

_IMPORT_BATCH = 1000
"""Records an import inserts per round trip (one transaction for them all)."""
_RECORD_COLUMNS_R = ", ".join(f"r.{c.strip()}" for c in rows.RECORD_COLUMNS.split(","))


def _settle_one(conn: Conn, ambiguous: bool, commit_id: str) -> None:
    """After the lock, on a retry whose COMMIT was cut off: return the record it stored.

    For writes of one record. The lock waited for the earlier attempt if it was still
    running on the server, so its outcome is settled by now.
    """
    if ambiguous:
        done = rows.written(conn, commit_id)
        if done:
            raise Stored(done[0])


class PostgresStore(PostgresReplies, PostgresLeases):
    """The PostgreSQL implementation of :class:`~rxcontext.store.base.Store`.

    Open one with :func:`rxcontext.open` and a ``postgresql://`` URL. ``pool_size`` caps
    this store's connections (mind the server's ``max_connections`` across processes);
    ``retry_budget`` is how long, in seconds, a call (and opening: connecting, migrating,
    reading the settings) keeps retrying while the server is unreachable before it raises
    :class:`~rxcontext.StoreError`; ``lease_ttl`` is how long a reply whose owner stopped
    renewing it (its host died) stays ``STREAMING`` for others.
    ``prepared_statements=True`` lets each connection keep the store's frequent statements
    parsed and planned on the server (psycopg prepares a statement on its fifth use on a
    connection): about 40 % less server CPU for the same writes
    (``benchmarks/scaleout.py``). It is off by default because PgBouncer in transaction
    mode before 1.21, or without ``max_prepared_statements``, hands one client's prepared
    statements to another; turn it on for a direct connection or a pooler that tracks them.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        retry_budget: float = 10.0,
        connect_timeout: float = 5.0,
        lease_ttl: float = 5.0,
        prepared_statements: bool = False,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        url = libpq_url(url)  # libpq knows the scheme in lower case only, and no +driver
        self.url = redact(url)  # never the password
        if self.url == UNPARSABLE:  # libpq's message would quote the part it failed on
            raise StoreError(
                f"cannot open {self.url}: libpq cannot parse it; percent-encode special"
                " characters in the user name and password (a space as %20, % as %25)"
            ) from None
        if ambiguous(url):  # libpq would connect to a host named after part of the password
            raise StoreError(
                f"cannot open {self.url}: an '@' or '/' in its user name or password (or an"
                " '@' in its host or database name) would be read as part of the host, port or"
                " database; percent-encode it (/ as %2F, @ as %40)"
            )
        self.lease_ttl = check_lease_ttl(lease_ttl)
        self._close_hooks: list[Callable[[], None]] = []
        kwargs: dict[str, Any] = {
            "autocommit": True,
            # psycopg's default threshold; None: never (PgBouncer transaction mode < 1.21)
            "prepare_threshold": 5 if prepared_statements else None,
            "connect_timeout": max(2, round(connect_timeout)),
        }

        def prepare(conn: Conn) -> Any:  # all of it again after a lost connection
            migrate(conn, self.url, retry_budget=retry_budget)
            return conn.execute("SHOW synchronous_commit").fetchone()

        row = prepare_with_retry(url, self.url, prepare, retry_budget=retry_budget, kwargs=kwargs)
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
        super().__init__()

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
        """Close the pool (idempotent); this store's heartbeat stops first."""
        self._run_close_hooks()
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
        check_text(name, "context name")  # no database holds it (else the codec's error)
        try:
            check_name(name, "context name")
        except ValueError:
            with contextlib.suppress(ContextNotFound):  # stored before there was a limit
                return self.get_context_by_name(name)
            raise
        stored = enc(name or uuid.uuid4().hex)
        new_id = uuid.uuid4().hex

        def body(conn: Conn, _: bool) -> Context:
            conn.execute(
                "INSERT INTO contexts (id, name) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (new_id, stored),
            )
            row = conn.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE name = %s", (stored,)
            ).fetchone()
            assert row is not None
            return rows.context(row)

        return self._runner.run(body)

    def create_context(self, name: str) -> Context:
        """A new context called ``name``; ``ValueError`` if one exists (checked and created
        in one statement: two writers can never both get it)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a context name must be a non-empty str, not {name!r}")
        check_name(name, "context name")
        new_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Context:
            row = conn.execute(
                "INSERT INTO contexts (id, name) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING"
                f" RETURNING {rows.CONTEXT_COLUMNS}",
                (new_id, enc(name)),
            ).fetchone()
            if row is not None:
                return rows.context(row)
            if ambiguous:  # our first try's COMMIT landed unheard: the row is ours
                with contextlib.suppress(ContextNotFound):
                    return self._context_by_id(conn, new_id)
            raise ValueError(f"a context named {name!r} already exists")

        return self._runner.run(body)

    def import_context(
        self,
        name: str,
        drafts: Sequence[RecordDraft],
        *,
        tools: Sequence[tuple[str, Mapping[str, Any]]] = (),
        usage: Usage | None = None,
        server_side_threading: bool = False,
        last_response_id: str | None = None,
    ) -> Context:
        """Create the context ``name`` with its records, tools, usage totals and threading
        state in one durable transaction (see :meth:`Store.import_context
        <rxcontext.store.base.Store.import_context>`); ``ValueError`` if the name is taken."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a context name must be a non-empty str, not {name!r}")
        check_name(name, "context name")
        for tool_name, _ in tools:
            check_name(tool_name, "tool name")
        prepared = [Draft(d) for d in drafts]  # checked and encoded before the transaction
        listed = [(enc(n), enc_opt(rows.to_json(dict(d)))) for n, d in tools]
        totals = usage if usage is not None else Usage()
        new_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Context:
            row = conn.execute(
                "INSERT INTO contexts (id, name, use_server_side_threading, last_response_id, "
                + ", ".join(rows.USAGE_FIELDS)
                + ") VALUES (%s, %s, %s, %s"
                + ", %s" * len(rows.USAGE_FIELDS)
                + ") ON CONFLICT (name) DO NOTHING"
                f" RETURNING {rows.CONTEXT_COLUMNS}",
                (
                    new_id,
                    enc(name),
                    bool(server_side_threading),
                    enc_opt(last_response_id),
                    *usage_counts(totals, rows.USAGE_FIELDS),
                ),
            ).fetchone()
            if row is None:
                if ambiguous:  # our first try's COMMIT landed unheard: the context is ours
                    with contextlib.suppress(ContextNotFound):
                        raise Stored(self._context_by_id(conn, new_id))
                raise ValueError(f"a context named {name!r} already exists")
            lock = lock_context(
                conn, new_id, len(prepared), change=True, tokens=live_tokens_of(prepared)
            )
            for start in range(0, len(prepared), _IMPORT_BATCH):  # results not all held at once
                batch = prepared[start : start + _IMPORT_BATCH]
                send_records(conn, new_id, batch, lock.pos + start, lock, new_id, each_its_own=True)
            if listed:
                conn.cursor().executemany(
                    "INSERT INTO context_tools (context_id, tool_name, definition)"
                    " VALUES (%s, %s, %s) ON CONFLICT (context_id, tool_name)"
                    " DO UPDATE SET definition = excluded.definition",
                    [(new_id, n, d) for n, d in listed],
                )
            return rows.context(row)

        return self._runner.run(body, setup=self._durable)

    def list_contexts(self) -> list[Context]:
        """All contexts, newest first."""
        found = self._read(
            lambda c: c.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts ORDER BY start_time DESC, id DESC"
            ).fetchall()
        )
        return [rows.context(r) for r in found]

    @staticmethod
    def _context_by_id(conn: Conn, context_id: str) -> Context:
        if impossible_id(context_id):
            raise ContextNotFound(f"no context with id {context_id!r}")
        row = conn.execute(
            f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE id = %s", (context_id,)
        ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r}")
        return rows.context(row)

    def get_context(self, context_id: str) -> Context:
        """The context with this id, or :class:`ContextNotFound`."""
        return self._read(lambda c: self._context_by_id(c, context_id))  # type: ignore[no-any-return]

    def get_context_by_name(self, name: str) -> Context:
        """The context with this name, or :class:`ContextNotFound`."""
        row = self._read(
            lambda c: c.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE name = %s", (enc(name),)
            ).fetchone()
        )
        if row is None:
            raise ContextNotFound(f"no context named {name!r}")
        return rows.context(row)

    def delete_context(self, context_id: str) -> None:
        """Delete a context with its records, tools and checkpoints."""

        def body(conn: Conn, ambiguous: bool) -> None:
            if impossible_id(context_id):
                raise ContextNotFound(f"no context with id {context_id!r}")
            cur = conn.execute("DELETE FROM contexts WHERE id = %s", (context_id,))
            if cur.rowcount == 0 and not ambiguous:  # ambiguous: our first try deleted it
                raise ContextNotFound(f"no context with id {context_id!r}")
            blobs.free_unused(conn)

        self._runner.run(body)

    def clone_context(self, context_id: str, dest_name: str) -> Context:
        """Copy a context's records (positions and timestamps included; not its tools or
        replies in progress) to a new context, marked ``inherited``: the clone's usage
        totals start at 0 and its cost leaves the copied replies out."""
        if not dest_name:
            raise ValueError("the clone needs a name")
        check_name(dest_name, "context name")
        new_id = uuid.uuid4().hex
        commit_id = f"clone:{new_id}"

        def body(conn: Conn, ambiguous: bool) -> Context:
            if impossible_id(context_id):
                raise ContextNotFound(f"no context with id {context_id!r}")
            src = conn.execute(  # FOR SHARE: no commit to the source while we copy it
                "SELECT next_pos FROM contexts WHERE id = %s FOR SHARE", (context_id,)
            ).fetchone()
            if src is None:
                raise ContextNotFound(f"no context with id {context_id!r}")
            # Not the records of replies still being generated: their rounds are not done.
            # Read under the lock: a reply whose commit went first is done and copied.
            busy = sorted(enc(r) for r in busy_in(conn, context_id))
            row = conn.execute(
                "INSERT INTO contexts (id, name, use_server_side_threading, last_response_id,"
                " next_pos, live_tokens) SELECT %s, %s, use_server_side_threading,"
                " last_response_id, next_pos, live_tokens - (SELECT COALESCE(SUM(est_tokens), 0)"
                " FROM records WHERE context_id = %s AND live AND reply_id = ANY(%s))"
                " FROM contexts WHERE id = %s ON CONFLICT (name) DO NOTHING"
                f" RETURNING {rows.CONTEXT_COLUMNS}",
                (new_id, enc(dest_name), context_id, busy, context_id),
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
                " response_id, streamed, tool_call_id, tool_name, metadata, attachments,"
                " inherited) SELECT %s, pos, ts, source, content, live, est_tokens,"
                " response_id, streamed, tool_call_id, tool_name, metadata, attachments, true"
                " FROM records"
                " WHERE context_id = %s AND (reply_id IS NULL OR NOT reply_id = ANY(%s))"
                " ORDER BY pos, id",
                (new_id, context_id, busy),
            )
            if conn.execute(
                "SELECT 1 FROM records WHERE context_id = %s AND attachments > 0 LIMIT 1",
                (context_id,),
            ).fetchone():
                blobs.copy_links(conn, context_id, new_id, busy)
            conn.execute(
                "INSERT INTO commits (commit_id, context_id) VALUES (%s, %s)", (commit_id, new_id)
            )
            return rows.context(row)

        return self._runner.run(body)

    def export_context(self, context_id: str) -> dict[str, Any]:
        """A context with all its records and tools as JSON-ready dicts (one snapshot)."""

        def body(conn: Conn, _: bool) -> tuple[Any, ...]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return (
                self._context_by_id(conn, context_id),
                self._records(conn, context_id, False, None),
                self._tools(conn, context_id),
                self._stats(conn, context_id),
            )

        ctx, records, tools, stats = self._runner.run(body)
        return export_document(ctx, records, tools, stats)

    def budget_spent(self, context_id: str, own: str | None, *, records: bool) -> Spending:
        """What a budget check reads of a context (:class:`.base.Spending`), in one
        ``REPEATABLE READ`` transaction: its totals and its unsettled replies' usage (never
        their text) as of one moment, whatever other sessions commit meanwhile; its
        records too if ``records``. Reply ``own``'s row is left out."""

        def body(conn: Conn, _: bool) -> Spending:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            stats = self._stats(conn, context_id)
            stored = self._records(conn, context_id, False, None) if records else []
            return Spending(stats, stored, self._unsettled(conn, context_id, own))

        spent: Spending = self._runner.run(body)
        return spent

    @staticmethod
    def _stats(conn: Conn, context_id: str) -> ContextStats:
        """Its open checkpoints are those :meth:`checkpoints` lists: interrupted replies,
        live ones whose lease ran out by the database's clock (counted in the query, at one
        time for the whole statement) and leased ones whose owner's process on this host is
        gone (the query gives their owners to ask)."""
        if impossible_id(context_id):
            raise ContextNotFound(f"no context with id {context_id!r}")
        row = conn.execute(
            "SELECT c.id, c.name, COUNT(r.id), COUNT(r.id) FILTER (WHERE r.live),"
            " COALESCE(SUM(r.est_tokens) FILTER (WHERE r.live), 0)::bigint,"
            " COALESCE(SUM(r.est_tokens), 0)::bigint,"
            " COUNT(r.id) FILTER (WHERE r.source = 0), COUNT(r.id) FILTER (WHERE r.source = 1),"
            " COUNT(r.id) FILTER (WHERE r.source = 2), COUNT(r.id) FILTER (WHERE r.source = 3),"
            " (SELECT COUNT(*) FROM checkpoints k WHERE k.context_id = c.id"
            "   AND (k.state = 'interrupted' OR (k.state IN ('streaming', 'resuming')"
            "   AND NOT COALESCE(k.lease_until > statement_timestamp(), false)))),"
            " ARRAY(SELECT k.owner FROM checkpoints k WHERE k.context_id = c.id"
            "   AND k.state IN ('streaming', 'resuming')"
            "   AND k.lease_until > statement_timestamp()),"
            f" {rows.USAGE_COLUMNS}, MAX(r.ts)"
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
            open_checkpoints=row[10] + sum(map(process_gone, row[11])),
            usage=Usage(*row[12:-1]),
            last_activity=rows.utc_opt(row[-1]),
        )

    def context_stats(self, context_id: str) -> ContextStats:
        """Aggregate numbers of one context, in one query."""
        return self._read(lambda c: self._stats(c, context_id))  # type: ignore[no-any-return]

    def set_threading(self, context_id: str, enabled: bool) -> None:
        """Turn server-side threading (``previous_response_id``) on or off for a context."""

        def body(conn: Conn, _: bool) -> None:
            if impossible_id(context_id):
                raise ContextNotFound(f"no context with id {context_id!r}")
            cur = conn.execute(
                "UPDATE contexts SET use_server_side_threading = %s WHERE id = %s",
                (bool(enabled), context_id),
            )
            if cur.rowcount == 0:
                raise ContextNotFound(f"no context with id {context_id!r}")

        self._runner.run(body, tx=False)

    def set_last_response_id(self, context_id: str, response_id: str | None) -> None:
        """Remember the provider's id of the context's last response."""
        if impossible_id(context_id):
            return  # no such context, as on SQLite
        self._runner.run(
            lambda conn, _: conn.execute(
                "UPDATE contexts SET last_response_id = %s WHERE id = %s",
                (enc_opt(response_id), context_id),
            ),
            tx=False,
        )

    # -- records --------------------------------------------------------------------------

    def add_record(self, context_id: str, draft: RecordDraft) -> Record:
        """Append one record (at the context's next position)."""
        d = Draft(draft)
        commit_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Later[Record]:
            # Two round trips in pipeline mode: BEGIN and the lock; the insert and COMMIT.
            lock = lock_context(conn, context_id, 1, tokens=live_tokens_of([d]))
            _settle_one(conn, ambiguous, commit_id)
            inserted = send_records(conn, context_id, [d], lock.pos, lock, commit_id)
            return Later(lambda: inserted()[0])

        record: Record = self._runner.run(body, pipeline=True)
        return record

    @staticmethod
    def _records(conn: Conn, context_id: str, live_only: bool, upto: int | None) -> list[Record]:
        if impossible_id(context_id):
            return []
        where = "context_id = %s"
        args: tuple[Any, ...] = (context_id,)
        if live_only:
            where += " AND live"
        if upto is not None:
            where += " AND pos <= %s"
            args += (upto,)
        found = conn.execute(
            f"SELECT {rows.RECORD_COLUMNS} FROM records WHERE {where} ORDER BY pos, id", args
        ).fetchall()
        return rows.records_of(conn, found)

    def records(
        self, context_id: str, *, live_only: bool = False, upto: int | None = None
    ) -> list[Record]:
        """A context's records in conversation order (live ones only if asked).

        ``upto`` keeps only positions up to and including it: the history a reply at that
        position was asked after (with that reply's own records).
        """
        return self._read(lambda c: self._records(c, context_id, live_only, upto))  # type: ignore[no-any-return]

    def import_records(
        self, context_id: str, drafts: Sequence[RecordDraft], *, usage: Usage | None = None
    ) -> list[Record]:
        """Append ``drafts`` in order, each at its own position, in one durable transaction
        (their timestamps kept), and add ``usage`` to the context's totals: an import."""
        prepared = [Draft(d) for d in drafts]
        commit_id = uuid.uuid4().hex
        add = usage_counts(usage, rows.USAGE_FIELDS) if usage is not None else None

        def body(conn: Conn, ambiguous: bool) -> list[Record]:
            lock = lock_context(
                conn, context_id, len(prepared), change=True, tokens=live_tokens_of(prepared)
            )
            if ambiguous and (done := rows.written(conn, commit_id)):
                raise Stored(done)
            if (
                ambiguous
                and not prepared
                and conn.execute(  # usage alone: no record to find
                    "SELECT 1 FROM commits WHERE commit_id = %s", (commit_id,)
                ).fetchone()
            ):
                raise Stored([])
            out = send_records(
                conn, context_id, prepared, lock.pos, lock, commit_id, each_its_own=True
            )()
            if add is not None:
                conn.execute(
                    "UPDATE contexts SET " + rows.ADD_USAGE + " WHERE id = %s",
                    (*add, context_id),
                )
                if not prepared:
                    conn.execute(
                        "INSERT INTO commits (commit_id, context_id) VALUES (%s, %s)",
                        (commit_id, context_id),
                    )
            return out

        return self._runner.run(body, setup=self._durable)

    def history(self, context_id: str, *, since: int | None = None) -> tuple[int, list[Record]]:
        """The context's version, and its records (live and dead) written or changed since
        version ``since`` (all of them when None), in conversation order: one statement, so
        one snapshot."""

        def body(conn: Conn) -> tuple[int, list[Record]] | None:
            if impossible_id(context_id):
                return None
            found = conn.execute(
                f"SELECT c.version, {_RECORD_COLUMNS_R}"
                " FROM contexts c LEFT JOIN records r ON r.context_id = c.id AND r.rev > %s"
                " WHERE c.id = %s ORDER BY r.pos, r.id",
                (-1 if since is None else since, context_id),
            ).fetchall()
            if not found:
                return None
            # Attachments are written with their record and never change: reading them
            # after the statement cannot see a different state of a record it returned.
            return int(found[0][0]), rows.records_of(
                conn, [r[1:] for r in found if r[1] is not None]
            )

        out = self._read(body)
        if out is None:
            raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
        return out  # type: ignore[no-any-return]

    def live_tokens(self, context_id: str) -> int:
        """Estimated tokens of the live records (kept on every write, read in one row)."""
        if impossible_id(context_id):
            raise ContextNotFound(f"no context with id {context_id!r}")
        row = self._read(
            lambda c: c.execute(
                "SELECT live_tokens FROM contexts WHERE id = %s", (context_id,)
            ).fetchone()
        )
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r}")
        return int(row[0])

    def set_live_range(
        self, context_id: str, start: int, end: int, live: bool, *, live_only: bool = False
    ) -> int:
        """Set ``live`` on records ``start`` to ``end`` (inclusive, 0-based, in order; among
        the live records only if ``live_only``, as contextwindow indexes them)."""
        if start < 0 or end < start:
            raise IndexError(f"bad record range {start}..{end}")
        where = "context_id = %s AND live" if live_only else "context_id = %s"
        commit_id = f"live:{uuid.uuid4().hex}"

        def body(conn: Conn, ambiguous: bool) -> int:
            try:
                lock_context(conn, context_id)
            except ContextNotFound:
                found: list[tuple[Any, ...]] = []
            else:
                if (
                    ambiguous
                    and conn.execute(  # our first try's COMMIT landed unheard:
                        "SELECT 1 FROM commits WHERE commit_id = %s", (commit_id,)
                    ).fetchone()
                ):  # the indexes, applied again, would pick the next records
                    raise Stored(end - start + 1)
                found = conn.execute(
                    f"SELECT id, live, est_tokens FROM records WHERE {where} ORDER BY pos, id",
                    (context_id,),
                ).fetchall()
            if end >= len(found):
                raise IndexError(
                    f"record range {start}..{end} is outside 0..{len(found) - 1} of this context"
                )
            chosen = found[start : end + 1]
            changed = [r for r in chosen if r[1] != live]
            if changed:
                tokens = sum(r[2] for r in changed)
                lock = lock_context(
                    conn, context_id, change=True, tokens=tokens if live else -tokens
                )
                conn.execute(
                    "UPDATE records SET live = %s, rev = %s WHERE id = ANY(%s)",
                    (bool(live), lock.version, [r[0] for r in changed]),
                )
                _break_thread(conn, context_id)
                conn.execute(
                    "INSERT INTO commits (commit_id, context_id) VALUES (%s, %s)",
                    (commit_id, context_id),
                )
            return len(chosen)

        return self._runner.run(body)

    def replace_system_prompt(self, context_id: str, content: str) -> Record:
        """Store ``content`` as the system prompt, first in the context; the previous one
        stays as a dead record (as contextwindow keeps it)."""
        d = Draft(RecordDraft(RecordType.SYSTEM_PROMPT, content))
        commit_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Record:
            lock = lock_context(conn, context_id, change=True, tokens=live_tokens_of([d]))
            _settle_one(conn, ambiguous, commit_id)
            first = conn.execute(
                "SELECT LEAST((SELECT MIN(pos) FROM records WHERE context_id = %s),"
                " (SELECT MIN(pos) FROM checkpoints WHERE context_id = %s))",
                (context_id, context_id),
            ).fetchone()
            retire(conn, context_id, "source = %s", (int(RecordType.SYSTEM_PROMPT),), lock)
            if first is not None and first[0] is not None:
                pos = first[0] - 1  # before everything
            else:
                lock = lock_context(conn, context_id, 1)  # the newest version stamps it
                pos = lock.pos
            return send_records(conn, context_id, [d], pos, lock, commit_id)()[0]

        return self._runner.run(body)

    def replace_records(
        self, context_id: str, dead_ids: Sequence[int], draft: RecordDraft
    ) -> Record:
        """Mark ``dead_ids`` dead and insert ``draft`` in their place, in one transaction.

        The new record takes the position of the earliest replaced one, so it sorts where
        they were. Raises ``ValueError`` (changing nothing) if any of them is no longer a
        live record of this context: the proposal is stale.
        """
        ids = list(dict.fromkeys(dead_ids))
        if not ids:
            raise ValueError("no records to replace")
        d = Draft(draft)
        commit_id = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Record:
            lock = lock_context(conn, context_id, change=True, tokens=live_tokens_of([d]))
            _settle_one(conn, ambiguous, commit_id)
            row = conn.execute(
                "SELECT COUNT(*), MIN(pos) FROM records"
                " WHERE context_id = %s AND live AND id = ANY(%s)",
                (context_id, ids),
            ).fetchone()
            assert row is not None
            if row[0] != len(ids):
                raise ValueError(
                    f"{len(ids) - row[0]} of the {len(ids)} records to replace are no longer "
                    "live in this context (stale summary?); nothing was changed"
                )
            retire(conn, context_id, "id = ANY(%s)", (ids,), lock)
            _break_thread(conn, context_id)
            return send_records(conn, context_id, [d], row[1], lock, commit_id)()[0]

        return self._runner.run(body)

    # -- tools ----------------------------------------------------------------------------

    def set_context_tool(self, context_id: str, name: str, definition: Mapping[str, Any]) -> None:
        """Record that ``name`` is available in the context (with its schema)."""
        check_name(name, "tool name")
        definition_json = enc_opt(rows.to_json(dict(definition)))

        def body(conn: Conn, _: bool) -> None:
            lock_context(conn, context_id)
            conn.execute(
                "INSERT INTO context_tools (context_id, tool_name, definition)"
                " VALUES (%s, %s, %s) ON CONFLICT (context_id, tool_name)"
                " DO UPDATE SET definition = excluded.definition",
                (context_id, enc(name), definition_json),
            )

        self._runner.run(body)

    @staticmethod
    def _tools(conn: Conn, context_id: str) -> list[dict[str, Any]]:
        if impossible_id(context_id):
            return []
        found = conn.execute(
            "SELECT tool_name, created_at, definition FROM context_tools"
            " WHERE context_id = %s ORDER BY created_at, id",
            (context_id,),
        ).fetchall()
        return [
            {
                "name": dec(r[0]),
                "created_at": rows.utc(r[1]).isoformat(timespec="microseconds"),
                "definition": rows.unjson(r[2], {}),
            }
            for r in found
        ]

    def context_tools(self, context_id: str) -> list[dict[str, Any]]:
        """Tools recorded for the context, oldest first."""
        return self._read(lambda c: self._tools(c, context_id))  # type: ignore[no-any-return]

    def remove_context_tool(self, context_id: str, name: str) -> bool:
        """Forget a tool; whether it was there."""
        if impossible_id(context_id):
            return False
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


def _break_thread(conn: Conn, context_id: str) -> None:
    """Records changed their live flag (the context is locked): the server-side thread
    holds what its responses were given, so it may not be continued (see
    :func:`rxcontext.chain.validate_chain`); the next reply starts one again."""
    conn.execute("UPDATE contexts SET last_response_id = NULL WHERE id = %s", (context_id,))
