"""PostgreSQL schema: a list of small named steps, each applied once and recorded.

Same idea as :mod:`.migrations` (SQLite): a released step is never edited; a new need gets a
new step appended. Each step runs in its own transaction holding a transaction-level
advisory lock, so N processes opening one database at once apply every step exactly once
(no session-level lock: PgBouncer in transaction mode stays safe). A database that records a
step this version does not know was migrated by a newer rxcontext: it is refused untouched.

The tables mirror the SQLite ones, plus what the reply lifecycle and scale-out need
(positions, reply ids and states, idempotent commits); see shared/DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from ..errors import SchemaTooNew

__all__ = ["MIGRATIONS", "MIGRATIONS_TABLE", "migrate"]

Step = Callable[["psycopg.Connection[Any]"], None]
MIGRATIONS: list[tuple[str, Step]] = []
MIGRATIONS_TABLE = "rxcontext_migrations"
# pg_advisory_xact_lock(key): one fixed 64-bit key for "rxcontext schema changes".
_LOCK_KEY = 0x7278_636F_6E74_6578  # "rxcontex"


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


def migrate(conn: psycopg.Connection[Any], where: str = "the database") -> list[str]:
    """Apply the steps not yet recorded, each in its own locked transaction; return their names.

    ``conn`` must be in autocommit mode. ``where`` names the database in error messages.
    """
    try:  # the common case, an up-to-date schema: one read, no lock, no DDL
        done = {row[0] for row in conn.execute(f"SELECT name FROM {MIGRATIONS_TABLE}")}
    except psycopg.errors.UndefinedTable:
        with conn.transaction():
            done = _locked(conn)
    _refuse_newer(done, where)
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        with conn.transaction():
            done = _locked(conn)  # another process may have applied it meanwhile
            _refuse_newer(done, where)
            if name in done:
                continue
            step(conn)
            conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (%s)", (name,))
        applied.append(name)
    return applied
