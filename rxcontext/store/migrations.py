"""Schema migrations: a list of small named steps, each applied once and recorded.

A released step is never edited; a new need gets a new step appended at the end.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable

from ..errors import NotADatabaseError, SchemaTooNew

__all__ = ["MIGRATIONS", "copy_current_schema", "migrate", "pending"]

Step = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Step]] = []


def _script(db: sqlite3.Connection, sql: str) -> None:
    # Not executescript(): it commits first, and a step must stay inside its transaction.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def migration(fn: Step) -> Step:
    """Register ``fn`` as the next step, named after the function."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_contextwindow_tables(db: sqlite3.Connection) -> None:
    """contextwindow's tables: contexts, records, context_tools."""
    _script(
        db,
        """
        CREATE TABLE contexts (
            id         TEXT PRIMARY KEY,
            name       TEXT NOT NULL UNIQUE,
            start_time TEXT NOT NULL,
            use_server_side_threading INTEGER NOT NULL DEFAULT 0,
            last_response_id TEXT
        );
        CREATE TABLE records (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            context_id  TEXT NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
            ts          TEXT NOT NULL,
            source      INTEGER NOT NULL,
            content     TEXT NOT NULL,
            live        INTEGER NOT NULL,
            est_tokens  INTEGER NOT NULL,
            response_id TEXT
        );
        CREATE INDEX idx_records_context_ts ON records(context_id, ts, id);
        CREATE INDEX idx_records_context_live ON records(context_id, live);
        CREATE TABLE context_tools (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            context_id TEXT NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
            tool_name  TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE(context_id, tool_name)
        );
        """,
    )


@migration
def m002_streamed_and_tool_columns(db: sqlite3.Connection) -> None:
    """Records: whether streamed, tool-call id/name, provider metadata (JSON)."""
    db.execute("ALTER TABLE records ADD COLUMN streamed INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE records ADD COLUMN tool_call_id TEXT")
    db.execute("ALTER TABLE records ADD COLUMN tool_name TEXT")
    db.execute("ALTER TABLE records ADD COLUMN metadata TEXT")
    db.execute("ALTER TABLE context_tools ADD COLUMN definition TEXT")


@migration
def m003_checkpoints(db: sqlite3.Connection) -> None:
    """Partial replies of interrupted (or still running) streams."""
    _script(
        db,
        """
        CREATE TABLE checkpoints (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            context_id  TEXT NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
            text        TEXT NOT NULL,
            thinking    TEXT NOT NULL DEFAULT '',
            tool_calls  TEXT NOT NULL DEFAULT '[]',
            usage       TEXT,
            error       TEXT,
            chunks      INTEGER NOT NULL DEFAULT 0,
            response_id TEXT,
            metadata    TEXT,
            created_at  TEXT NOT NULL,
            updated_at  TEXT NOT NULL,
            claimed_at  TEXT,
            resolved_at TEXT
        );
        CREATE INDEX idx_checkpoints_context ON checkpoints(context_id, resolved_at);
        """,
    )


@migration
def m004_context_usage(db: sqlite3.Connection) -> None:
    """Real provider token usage, summed per context over every call."""
    for column in (
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
    ):
        db.execute(f"ALTER TABLE contexts ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


@migration
def m005_checkpoint_claim_owner(db: sqlite3.Connection) -> None:
    """Who claimed a checkpoint for a resume, so a dead claimer's claim can be taken over."""
    db.execute("ALTER TABLE checkpoints ADD COLUMN claimed_by TEXT")


@migration
def m006_reply_lifecycle(db: sqlite3.Connection) -> None:
    """Replies with ids, states and owners; records ordered by per-context positions.

    Positions follow the order of before (time, then id); each open checkpoint gets the
    place where its stream was (after the records written before it), so a resume lands
    where the reply was asked for. Checkpoint text written from now on is appended in
    parts, so a periodic write costs the new text only.
    """
    _script(
        db,
        """
        ALTER TABLE contexts ADD COLUMN next_pos INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE records ADD COLUMN pos INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE records ADD COLUMN reply_id TEXT;
        ALTER TABLE checkpoints ADD COLUMN reply_id TEXT;
        ALTER TABLE checkpoints ADD COLUMN state TEXT NOT NULL DEFAULT 'interrupted';
        ALTER TABLE checkpoints ADD COLUMN pos INTEGER;
        ALTER TABLE checkpoints ADD COLUMN owner TEXT;
        ALTER TABLE checkpoints ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE checkpoints ADD COLUMN lease_until TEXT;
        ALTER TABLE checkpoints ADD COLUMN stop_requested INTEGER NOT NULL DEFAULT 0;
        UPDATE checkpoints SET reply_id = 'legacy-' || id,
            state = CASE WHEN resolved_at IS NULL THEN 'interrupted' ELSE 'completed' END;
        CREATE TEMP TABLE m006_order AS
            SELECT kind, id, context_id,
                   ROW_NUMBER() OVER (PARTITION BY context_id ORDER BY ts, kind, id) - 1 AS pos
            FROM (SELECT 0 AS kind, id, context_id, ts FROM records
                  UNION ALL
                  SELECT 1, id, context_id, created_at FROM checkpoints
                  WHERE resolved_at IS NULL);
        CREATE INDEX temp.m006_order_id ON m006_order(kind, id);
        UPDATE records SET pos = (SELECT o.pos FROM m006_order o
                                  WHERE o.kind = 0 AND o.id = records.id);
        UPDATE checkpoints SET pos = (SELECT o.pos FROM m006_order o
                                      WHERE o.kind = 1 AND o.id = checkpoints.id);
        UPDATE contexts SET next_pos = COALESCE(
            (SELECT MAX(o.pos) + 1 FROM m006_order o WHERE o.context_id = contexts.id), 0);
        DROP TABLE temp.m006_order;
        DROP INDEX IF EXISTS idx_records_context_ts;
        CREATE INDEX idx_records_context_pos ON records(context_id, pos, id);
        CREATE INDEX idx_records_reply ON records(reply_id) WHERE reply_id IS NOT NULL;
        CREATE UNIQUE INDEX idx_checkpoints_reply ON checkpoints(reply_id);
        CREATE INDEX idx_checkpoints_state ON checkpoints(context_id, state);
        CREATE TABLE checkpoint_parts (
            checkpoint_id INTEGER NOT NULL REFERENCES checkpoints(id) ON DELETE CASCADE,
            seq           INTEGER NOT NULL,
            text          TEXT NOT NULL,
            thinking      TEXT NOT NULL,
            PRIMARY KEY (checkpoint_id, seq)
        )
        """,
    )


@migration
def m007_history_versions(db: sqlite3.Connection) -> None:
    """Per-context change versions (so a window re-reads only what changed since its last
    request) and live token totals kept on write (so reading them is one row)."""
    _script(
        db,
        """
        ALTER TABLE contexts ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE contexts ADD COLUMN live_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE records ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
        UPDATE contexts SET live_tokens = COALESCE(
            (SELECT SUM(est_tokens) FROM records r WHERE r.context_id = contexts.id AND r.live),
            0);
        CREATE INDEX idx_records_context_rev ON records(context_id, rev)
        """,
    )


@migration
def m008_attachments(db: sqlite3.Connection) -> None:
    """Attachments: bytes stored once per content (SHA-256), records linked to them in order;
    ``records.attachments`` counts a record's links so plain histories need no join."""
    _script(
        db,
        """
        CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY,
            size   INTEGER NOT NULL,
            data   BLOB NOT NULL
        );
        CREATE TABLE record_attachments (
            record_id  INTEGER NOT NULL REFERENCES records(id) ON DELETE CASCADE,
            seq        INTEGER NOT NULL,
            sha256     TEXT REFERENCES blobs(sha256),
            url        TEXT,
            media_type TEXT NOT NULL,
            name       TEXT,
            PRIMARY KEY (record_id, seq),
            CHECK ((sha256 IS NULL) <> (url IS NULL))
        );
        CREATE INDEX idx_record_attachments_blob ON record_attachments(sha256);
        ALTER TABLE records ADD COLUMN attachments INTEGER NOT NULL DEFAULT 0
        """,
    )


@migration
def m009_stop_requests(db: sqlite3.Connection) -> None:
    """``cw.stop(reply_id)`` from any process: the epoch of the run asked to stop (a claim
    moves the epoch on, so a resumed reply is never stopped by an older request)."""
    db.execute("ALTER TABLE checkpoints ADD COLUMN stop_epoch INTEGER")


@migration
def m010_thinking_spans(db: sqlite3.Connection) -> None:
    """A record's thinking blocks may hold a span of its ``thinking`` instead of a second
    copy of the text (``store/_thinking.py``). Nothing to change in the tables: the step
    marks the database, so that an older rxcontext, which would show such blocks without
    their text, refuses to open it."""


@migration
def m011_cut_text(db: sqlite3.Connection) -> None:
    """What an interrupted reply had delivered when a resume claimed it (``cut_text``,
    ``cut_thinking``): once the resume completes, its settled row holds that text again, for
    audit, as the row of a reply kept or discarded holds its own (the resume's records hold
    the whole reply). Rows claimed before this step have none; theirs stays empty."""
    db.execute("ALTER TABLE checkpoints ADD COLUMN cut_text TEXT")
    db.execute("ALTER TABLE checkpoints ADD COLUMN cut_thinking TEXT")


@migration
def m012_inherited_records(db: sqlite3.Connection) -> None:
    """Records a clone or fork copied from another context (``inherited``): their replies
    were billed there, so the copy's cost leaves them out, as its token totals do. Records
    cloned before this step are not marked (the step cannot tell them apart)."""
    db.execute("ALTER TABLE records ADD COLUMN inherited INTEGER NOT NULL DEFAULT 0")


@migration
def m013_cache_write_and_search_totals(db: sqlite3.Connection) -> None:
    """Two more usage totals per context: ``cache_write_tokens`` (written to a prompt cache,
    priced apart) and ``web_search_requests`` (billed per search). Existing contexts start
    them at 0, their other totals untouched: the totals cannot be rebuilt exactly from the
    records' usage (a fork's or clone's records carry usage its totals never had, an
    import's totals are the export's, older versions added a discarded attempt's usage
    with no record of it), so they count from this step on."""
    db.execute("ALTER TABLE contexts ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE contexts ADD COLUMN web_search_requests INTEGER NOT NULL DEFAULT 0")


def _names_are_unique(db: sqlite3.Connection) -> bool:
    for _, index, unique, _, partial in db.execute("PRAGMA index_list(contexts)"):
        columns = [row[2] for row in db.execute(f"PRAGMA index_info({index!r})")]
        if unique and not partial and columns == ["name"]:
            return True
    return False


@migration
def m014_unique_context_names(db: sqlite3.Connection) -> None:
    """Context names unique in a superfly/contextwindow database (its ``contexts.name`` is
    not UNIQUE, our first step's is, and the name checks rely on it). A name written twice
    stays with the context written first (the one a lookup by that name found); each later
    one becomes ``"name (2)"``, ``"name (3)"``..., the first such name not taken, in the
    order they were written. Nothing else changes; a database of ours has the constraint
    already and is left as it is."""
    if _names_are_unique(db):
        return
    taken = {row[0] for row in db.execute("SELECT name FROM contexts")}
    later = db.execute(
        "SELECT rowid, name FROM (SELECT rowid, name,"
        " ROW_NUMBER() OVER (PARTITION BY name ORDER BY rowid) AS n FROM contexts)"
        " WHERE n > 1 ORDER BY rowid"
    ).fetchall()
    for rowid, name in later:
        k = 2
        while f"{name} ({k})" in taken:
            k += 1
        taken.add(f"{name} ({k})")
        db.execute("UPDATE contexts SET name = ? WHERE rowid = ?", (f"{name} ({k})", rowid))
    db.execute("CREATE UNIQUE INDEX idx_contexts_name ON contexts(name)")


_OLDER_WRITER = (
    "written by an rxcontext older than this database (or by contextwindow), still running"
    " since a newer rxcontext upgraded the file: it would be misplaced. Stop that process"
    " and use the newer rxcontext"
)


@migration
def m015_refuse_older_writers(db: sqlite3.Connection) -> None:
    """Refuse a record or checkpoint inserted by a process that opened the file before an
    upgrade and still runs an rxcontext from before step 7 (0.1.0 included), or by
    contextwindow. Before step 6 they knew no positions: their records got position 0,
    before the whole conversation, and their checkpoints no reply; before step 7 no change
    versions: windows never re-read their records. Such a record has no change version
    (``rev``: every record this version writes has one, ``>= 1``), such a checkpoint no
    ``reply_id``. Each trigger costs ~2 µs per row inserted (SQLite runs it as a
    sub-program; raw insert ~4.1 -> ~6.3 µs, an import ~14 -> ~17 µs per record,
    ``add_prompt`` unchanged within noise; measured 2026-12-05)."""
    for table, row, refused in (
        ("records", "record", "NEW.rev = 0"),
        ("checkpoints", "checkpoint", "NEW.reply_id IS NULL"),
    ):
        db.execute(
            f"CREATE TRIGGER {table}_refuse_older_writers BEFORE INSERT ON {table}"
            f" WHEN {refused} BEGIN SELECT RAISE(ABORT, '{row} {_OLDER_WRITER}'); END"
        )


_CONTEXTWINDOW_TABLES = {"contexts", "records", "context_tools"}
_CONTEXTWINDOW_COLUMNS = {
    "contexts": {"id", "name", "start_time"},
    "records": {"id", "context_id", "ts", "source", "content", "live", "est_tokens"},
    "context_tools": {"id", "context_id", "tool_name", "created_at"},
}
_FIRST = MIGRATIONS[0][0]


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _is_contextwindow(db: sqlite3.Connection, tables: set[str]) -> bool:
    """Whether the tables are superfly/contextwindow's (and nothing else's)."""
    if tables - {"sqlite_sequence"} != _CONTEXTWINDOW_TABLES:
        return False
    return all(cols <= _columns(db, t) for t, cols in _CONTEXTWINDOW_COLUMNS.items())


def adopt_contextwindow(db: sqlite3.Connection) -> None:
    """Take over a database written by superfly/contextwindow: its tables are our first
    step's (older versions lack a few columns, added here); the later steps follow."""
    wanted = {
        ("contexts", "use_server_side_threading"): "INTEGER NOT NULL DEFAULT 0",
        ("contexts", "last_response_id"): "TEXT",
        ("records", "response_id"): "TEXT",
    }
    for (table, column), kind in wanted.items():
        if column not in _columns(db, table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX IF NOT EXISTS idx_records_context_live ON records(context_id, live)")


def pending(db: sqlite3.Connection, path: str) -> list[str]:
    """The steps this database still needs; refuses (writing nothing) one that is not ours.

    A database written by superfly/contextwindow is taken over: it needs every step but the
    first (whose tables it has). Raises :class:`~rxcontext.errors.SchemaTooNew` for a
    database migrated by a newer rxcontext and :class:`~rxcontext.errors.NotADatabaseError`
    for another application's.
    """
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return [name for name, _ in MIGRATIONS]
    if "schema_migrations" not in tables:
        if _is_contextwindow(db, tables):
            return [name for name, _ in MIGRATIONS if name != _FIRST]
        raise NotADatabaseError(
            f"{path!r} is another application's SQLite database, not an rxcontext (or "
            "contextwindow) one; it was left unchanged. Give the path of an rxcontext "
            "database or of a new file"
        )
    done = {row[0] for row in db.execute("SELECT name FROM schema_migrations")}
    known = {name for name, _ in MIGRATIONS}
    newer = done - known
    if newer:
        raise SchemaTooNew(
            f"{path!r} was written by a newer rxcontext (schema steps {sorted(newer)} are "
            "unknown here); it was left unchanged: upgrade rxcontext to open it"
        )
    return [name for name, _ in MIGRATIONS if name not in done]


def migrate(db: sqlite3.Connection, path: str = ":memory:") -> list[str]:
    """Apply the steps not yet recorded, in one write transaction; return their names.

    Safe when several processes open a new (or just-upgraded) database at once: the steps
    still needed are decided again under the write lock, so each runs exactly once.
    """
    if not pending(db, path):
        return []
    db.execute("BEGIN IMMEDIATE")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        adopting = "schema_migrations" not in tables and _is_contextwindow(db, tables)
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        if adopting:
            adopt_contextwindow(db)
            db.execute("INSERT INTO schema_migrations (name) VALUES (?)", (_FIRST,))
        todo = pending(db, path)
        for name, step in MIGRATIONS:
            if name in todo:
                step(db)
                db.execute("INSERT INTO schema_migrations (name) VALUES (?)", (name,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return todo


_template: sqlite3.Connection | None = None
_template_lock = threading.Lock()
_inherited: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    # A forked child never uses the parent's template connection (SQLite connections do not
    # cross fork) nor its lock (another thread may have held it). Kept, never closed.
    global _template, _template_lock
    if _template is not None:
        _inherited.append(_template)
    _template, _template_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def copy_current_schema(db: sqlite3.Connection) -> None:
    """Give ``db``, a new private in-memory database, the current schema.

    The pages are copied (SQLite's backup API) from an in-memory database that this process
    migrated once, step by step with :func:`migrate`, so the result is the same database the
    steps give, in ~0.2 ms instead of ~10 (SQLite re-reads its whole schema after each of
    the steps' DDL statements; measured 2026-12-04). Only for ``":memory:"``: no other
    connection can see the database while its pages are replaced. The steps' ``applied_at``
    is the time of this copy, as if they had just run.
    """
    global _template
    with _template_lock:
        if _template is None:
            template = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            migrate(template)
            _template = template
        _template.backup(db)
    db.execute("UPDATE schema_migrations SET applied_at = CURRENT_TIMESTAMP")
