"""PostgreSQL schema: a list of small named steps, each applied once and recorded.

Same idea as :mod:`.migrations` (SQLite): a released step is never edited; a new need gets a
new step appended. Each step runs in its own transaction holding a transaction-level
advisory lock, so N processes opening one database at once apply every step exactly once
(no session-level lock: PgBouncer in transaction mode stays safe). A database that records a
step this version does not know was migrated by a newer rxcontext: it is refused untouched.

A step that alters a table needs its ``ACCESS EXCLUSIVE`` lock, which waits for every
transaction that has read the table (pg_dump, a psql left idle in a transaction, an older
worker's report) and, while it waits, holds up every other reader of the table behind it.
So each step's transaction waits at most :data:`LOCK_WAIT` for a lock, then gives the
readers queued behind it their turn and tries again, within the store's ``retry_budget``;
then :class:`~rxcontext.StoreBusy` names the sessions holding the locks.

The tables mirror the SQLite ones, plus what the reply lifecycle and scale-out need
(positions, reply ids and states, idempotent commits); see shared/DESIGN.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

import psycopg

from ..errors import NotADatabaseError, SchemaTooNew, StoreBusy

__all__ = ["LOCK_WAIT", "MIGRATIONS", "MIGRATIONS_TABLE", "migrate"]

Step = Callable[["psycopg.Connection[Any]"], None]
MIGRATIONS: list[tuple[str, Step]] = []
MIGRATIONS_TABLE = "rxcontext_migrations"
# pg_advisory_xact_lock(key): one fixed 64-bit key for "rxcontext schema changes".
_LOCK_KEY = 0x7278_636F_6E74_6578  # "rxcontex"
LOCK_WAIT = 2.0
"""Seconds one try of a schema step waits for a lock (the readers queued behind it wait as
long), at most: then it rolls back and tries again, until the retry budget is spent."""


def migration(fn: Step) -> Step:
    """Register ``fn`` as the next step, named after the function."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def _script(conn: psycopg.Connection[Any], sql: str) -> None:
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


@migration
def m001_contexts_records_tools(conn: psycopg.Connection[Any]) -> None:
    """Contexts (with their position allocator, change version and live token total),
    records (ordered by pos; ``rev``: the context version that last changed them), tools,
    commits."""
    _script(
        conn,
        """
        CREATE TABLE contexts (
            id          text PRIMARY KEY,
            name        text NOT NULL UNIQUE,
            start_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
            use_server_side_threading boolean NOT NULL DEFAULT false,
            last_response_id text,
            input_tokens     bigint NOT NULL DEFAULT 0,
            output_tokens    bigint NOT NULL DEFAULT 0,
            total_tokens     bigint NOT NULL DEFAULT 0,
            cached_tokens    bigint NOT NULL DEFAULT 0,
            reasoning_tokens bigint NOT NULL DEFAULT 0,
            next_pos    bigint NOT NULL DEFAULT 0,
            version     bigint NOT NULL DEFAULT 0,
            live_tokens bigint NOT NULL DEFAULT 0
        );
        CREATE TABLE records (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            context_id  text NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
            pos         bigint NOT NULL,
            ts          timestamptz NOT NULL DEFAULT clock_timestamp(),
            source      smallint NOT NULL,
            content     text NOT NULL,
            live        boolean NOT NULL,
            est_tokens  bigint NOT NULL,
            response_id text,
            streamed    boolean NOT NULL DEFAULT false,
            tool_call_id text,
            tool_name   text,
            metadata    text,
            reply_id    text,
            commit_id   text,
            rev         bigint NOT NULL DEFAULT 0
        );
        CREATE INDEX records_context_pos ON records (context_id, pos, id);
        CREATE INDEX records_context_rev ON records (context_id, rev);
        CREATE INDEX records_context_live ON records (context_id, pos, id) WHERE live;
        CREATE INDEX records_commit ON records (commit_id) WHERE commit_id IS NOT NULL;
        CREATE INDEX records_reply ON records (reply_id) WHERE reply_id IS NOT NULL;
        CREATE TABLE context_tools (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            context_id  text NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
            tool_name   text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            definition  text,
            UNIQUE (context_id, tool_name)
        );
        CREATE TABLE commits (
            commit_id    text PRIMARY KEY,
            context_id   text NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
            committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX commits_context ON commits (context_id)
        """,
    )


@migration
def m002_replies(conn: psycopg.Connection[Any]) -> None:
    """Reply lifecycle rows (state, owner, epoch, lease, reserved position) and their parts.

    ``text_len``/``thinking_len`` count the characters the row and its parts hold, so a
    writer can tell that acknowledged writes were lost (a server crash after a commit with
    ``synchronous_commit = off``) and write the whole text again; ``last_write`` names the
    write that last changed the row, so a retry after a cut-off COMMIT knows it landed.
    """
    _script(
        conn,
        """
        CREATE TABLE checkpoints (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            context_id  text NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
            reply_id    text NOT NULL UNIQUE,
            state       text NOT NULL CHECK (state IN
                        ('streaming', 'interrupted', 'resuming', 'completed', 'discarded')),
            pos         bigint NOT NULL,
            text        text NOT NULL DEFAULT '',
            thinking    text NOT NULL DEFAULT '',
            text_len    bigint NOT NULL DEFAULT 0,
            thinking_len bigint NOT NULL DEFAULT 0,
            parts       integer NOT NULL DEFAULT 0,
            tool_calls  text NOT NULL DEFAULT '[]',
            usage       text,
            error       text,
            chunks      integer NOT NULL DEFAULT 0,
            response_id text,
            metadata    text,
            owner       text,
            epoch       integer NOT NULL DEFAULT 1,
            lease_until timestamptz,
            stop_requested boolean NOT NULL DEFAULT false,
            last_write  text,
            created_at  timestamptz NOT NULL,
            updated_at  timestamptz NOT NULL,
            claimed_at  timestamptz,
            claimed_by  text,
            resolved_at timestamptz
        );
        CREATE INDEX checkpoints_context ON checkpoints (context_id, state, pos);
        CREATE INDEX checkpoints_owner ON checkpoints (owner)
            WHERE state IN ('streaming', 'resuming');
        CREATE TABLE checkpoint_parts (
            checkpoint_id bigint NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
            seq         integer NOT NULL,
            text        text NOT NULL,
            thinking    text NOT NULL,
            PRIMARY KEY (checkpoint_id, seq)
        )
        """,
    )


@migration
def m003_attachments(conn: psycopg.Connection[Any]) -> None:
    """Attachments: bytes stored once per content (SHA-256), records linked to them in order;
    ``records.attachments`` counts a record's links so plain histories need no join."""
    _script(
        conn,
        """
        CREATE TABLE blobs (
            sha256 text PRIMARY KEY,
            size   bigint NOT NULL,
            data   bytea NOT NULL
        );
        CREATE TABLE record_attachments (
            record_id  bigint NOT NULL REFERENCES records(id) ON DELETE CASCADE,
            seq        integer NOT NULL,
            sha256     text REFERENCES blobs(sha256),
            url        text,
            media_type text NOT NULL,
            name       text,
            PRIMARY KEY (record_id, seq),
            CHECK ((sha256 IS NULL) <> (url IS NULL))
        );
        CREATE INDEX record_attachments_blob ON record_attachments (sha256);
        ALTER TABLE records ADD COLUMN attachments integer NOT NULL DEFAULT 0
        """,
    )


@migration
def m004_stop_requests(conn: psycopg.Connection[Any]) -> None:
    """``cw.stop(reply_id)`` from any worker: the epoch of the run asked to stop (a claim
    moves the epoch on, so a resumed reply is never stopped by an older request)."""
    conn.execute("ALTER TABLE checkpoints ADD COLUMN stop_epoch integer")


@migration
def m005_thinking_spans(conn: psycopg.Connection[Any]) -> None:
    """A record's thinking blocks may hold a span of its ``thinking`` instead of a second
    copy of the text (``store/_thinking.py``). Nothing to change in the tables: the step
    marks the database, so that an older rxcontext, which would show such blocks without
    their text, refuses to open it."""


@migration
def m006_cut_text(conn: psycopg.Connection[Any]) -> None:
    """What an interrupted reply had delivered when a resume claimed it (``cut_text``,
    ``cut_thinking``): once the resume completes, its settled row holds that text again, for
    audit, as the row of a reply kept or discarded holds its own (the resume's records hold
    the whole reply). Rows claimed before this step have none; theirs stays empty."""
    conn.execute("ALTER TABLE checkpoints ADD COLUMN cut_text text, ADD COLUMN cut_thinking text")


@migration
def m007_inherited_records(conn: psycopg.Connection[Any]) -> None:
    """Records a clone or fork copied from another context (``inherited``): their replies
    were billed there, so the copy's cost leaves them out, as its token totals do. Records
    cloned before this step are not marked (the step cannot tell them apart)."""
    conn.execute("ALTER TABLE records ADD COLUMN inherited boolean NOT NULL DEFAULT false")


@migration
def m008_cache_write_and_search_totals(conn: psycopg.Connection[Any]) -> None:
    """Two more usage totals per context: ``cache_write_tokens`` (written to a prompt cache,
    priced apart) and ``web_search_requests`` (billed per search). Existing contexts start
    them at 0, their other totals untouched (a constant default: no table rewrite): the
    totals cannot be rebuilt exactly from the records' usage (see the SQLite step), so
    they count from this step on."""
    conn.execute(
        "ALTER TABLE contexts ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0,"
        " ADD COLUMN web_search_requests bigint NOT NULL DEFAULT 0"
    )


def _locked(conn: psycopg.Connection[Any]) -> set[str]:
    """Take the schema lock (inside the caller's transaction) and return the applied steps."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
    return {row[0] for row in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}


def _refuse_newer(done: set[str], where: str) -> None:
    unknown = sorted(done - {name for name, _ in MIGRATIONS})
    if unknown:
        raise SchemaTooNew(
            f"{where} was migrated by a newer rxcontext (schema steps {', '.join(unknown)} are"
            " unknown to this version); it was left unchanged: upgrade rxcontext to use it"
        )


def _refuse_foreign(exc: psycopg.Error, where: str) -> NoReturn:
    raise NotADatabaseError(
        f"{where} is another application's database, not an rxcontext one (no rxcontext"
        f" schema step is recorded, and {exc.diag.message_primary}); it was left unchanged:"
        " give rxcontext a database of its own, or an empty one"
    ) from exc


def migrate(
    conn: psycopg.Connection[Any], where: str = "the database", *, retry_budget: float = 10.0
) -> list[str]:
    """Apply the steps not yet recorded, each in its own locked transaction; return their names.

    ``conn`` must be in autocommit mode. ``where`` names the database in error messages. A
    step whose locks stay held by other sessions for ``retry_budget`` seconds raises
    :class:`~rxcontext.StoreBusy`; the steps applied before it stay applied.
    """
    waits = _Waits(conn, where, retry_budget)
    try:  # the common case, an up-to-date schema: one read, no lock, no DDL
        done = {row[0] for row in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
    except psycopg.errors.UndefinedTable:  # made with the first step: a refusal undoes it
        done = set()
    _refuse_newer(done, where)
    for name, step in MIGRATIONS:
        if name in done:
            continue

        def apply(name: str = name, step: Step = step) -> set[str]:
            done = _locked(conn)  # another process may have applied it meanwhile
            _refuse_newer(done, where)
            if name not in done:
                waits.locked = True
                try:
                    step(conn)
                except (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject) as exc:
                    if done:
                        raise
                    _refuse_foreign(exc, where)
                conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (%s)", (name,))
            return done

        done = waits.run(name, apply)
        if name not in done:  # the set read before this step ran: it was applied now
            waits.applied.append(name)
    return waits.applied


class _Waits:
    """Runs each schema transaction with a bounded lock wait, tried again within the budget."""

    def __init__(self, conn: psycopg.Connection[Any], where: str, retry_budget: float) -> None:
        self.conn = conn
        self.where = where
        self.retry_budget = retry_budget
        self.deadline = time.monotonic() + retry_budget
        self.applied: list[str] = []
        self.locked = False  # this try holds the schema lock (so it waits for tables)

    def run(self, step: str, body: Callable[[], set[str]]) -> set[str]:
        delay = 0.05
        while True:
            wait = min(LOCK_WAIT, max(self.deadline - time.monotonic(), 0.05))
            self.locked = False
            try:
                with self.conn.transaction():
                    self.conn.execute(f"SET LOCAL lock_timeout = {round(wait * 1000)}")
                    return body()
            except psycopg.errors.LockNotAvailable as exc:
                if time.monotonic() + delay >= self.deadline:
                    raise StoreBusy(self._busy(step)) from exc
            # Between tries the readers queued behind this one's lock request go on.
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _busy(self, step: str) -> str:
        what = f"schema step {step}"
        done = (
            f"{'steps' if len(self.applied) > 1 else 'step'} {', '.join(self.applied)}"
            f" applied, {step} and later not"
            if self.applied
            else "nothing was changed"
        )
        holders = _holders(self.conn, tables=self.locked) or "none left now"
        budget = f"for all of the retry budget of {self.retry_budget:g} s"
        if self.locked:
            return (
                f"cannot upgrade the schema of {self.where}: {what} needs an exclusive lock"
                f" on its tables for a moment, and other sessions held locks on them {budget}"
                " (transactions that read them: pg_dump, a psql session left idle in a"
                f" transaction, a long report): {holders}; {done}. End those transactions"
                " (commit or roll back; pg_terminate_backend(pid) if stuck) or wait until"
                " none uses these tables, then open the database again"
            )
        return (
            f"cannot upgrade the schema of {self.where}: {what} waits for rxcontext's schema"
            f" lock, and another session held it {budget} (another rxcontext upgrading this"
            f" database, perhaps itself waiting for a table): {holders}; {done}. Let it finish"
            " or end that session, then open the database again"
        )


_HOLDERS = """
SELECT {what}, a.pid, a.application_name, a.state,
       round(extract(epoch FROM clock_timestamp() - a.xact_start))
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid {join}
WHERE l.granted AND l.pid <> pg_backend_pid() AND {where}
ORDER BY 1, 2
LIMIT 6
"""


def _holders(conn: psycopg.Connection[Any], *, tables: bool) -> str:
    """Who holds locks on this schema's tables, or rxcontext's schema lock, now: for the
    error (the server does not say what a timed-out lock request waited for)."""
    if tables:
        sql = _HOLDERS.format(
            what="c.relname",
            join="JOIN pg_class c ON c.oid = l.relation",
            where="l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND c.relkind IN ('r', 'p') AND c.relnamespace = current_schema()::regnamespace",
        )
    else:  # a bigint advisory key is held as (classid, objid) = (high, low) 32 bits
        sql = _HOLDERS.format(
            what="'the schema lock'",
            join="",
            where=f"l.locktype = 'advisory' AND l.objsubid = 1"
            f" AND l.classid = {_LOCK_KEY >> 32} AND l.objid = {_LOCK_KEY & 0xFFFF_FFFF}"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    try:
        rows = conn.execute(sql).fetchall()
    except psycopg.Error:  # only for the message: its lack is no reason to fail otherwise
        return ""
    shown = []
    for relation, pid, app, state, age in rows[:5]:
        about = [f"pid {pid}"]
        if app:
            about.append(f"application {app!r}")
        if state:  # None without the right to see other roles' sessions
            about.append(str(state))
        if age is not None:
            about.append(f"in a transaction for {age:.0f} s")
        shown.append(f"{relation} by {', '.join(about)}")
    return "; ".join(shown) + (", …" if len(rows) > 5 else "")
