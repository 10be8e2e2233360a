"""Schema migrations: a list of small named steps, each applied once and recorded.

A released step is never edited; a new need gets a new step appended at the end.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["MIGRATIONS", "migrate"]

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


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the steps not yet recorded, each in its own transaction; return their names."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    done = {row[0] for row in db.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            db.execute("INSERT INTO schema_migrations (name) VALUES (?)", (name,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(name)
    return applied
