"""Context names stay unique in a superfly/contextwindow database rxcontext took over: its
``contexts.name`` has no UNIQUE constraint, and rxcontext's name checks rely on one."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import sqlite3
from pathlib import Path

import pytest
from test_sqlite_open import make_contextwindow_db

import rxcontext
from rxcontext import ContextWindow

STEP = "m014_unique_context_names"


def names_and_records(path: Path) -> list[tuple[str, str, int]]:
    """(id, name, record count) of every context, in the order they were written."""
    with sqlite3.connect(path) as db:
        found = db.execute(
            "SELECT c.id, c.name, (SELECT COUNT(*) FROM records r WHERE r.context_id = c.id)"
            " FROM contexts c ORDER BY c.rowid"
        ).fetchall()
    db.close()
    return found


def test_a_taken_over_contextwindow_database_refuses_a_second_context_of_a_name(tmp_path):
    path = tmp_path / "cw.db"
    make_contextwindow_db(path)
    store = rxcontext.open(path)
    cw = ContextWindow(store, None, "scratch")
    cw.add_prompt("scratch text")
    with pytest.raises(ValueError, match="'notes' already exists"):
        store.create_context("notes")
    with pytest.raises(ValueError, match="'notes' already exists"):
        cw.import_context(cw.export(), name="notes")
    cw.delete_context("notes")  # the one name names one context: the original goes, alone
    store.close()
    assert [n for _, n, _ in names_and_records(path)] == ["scratch"]


def _duplicate(path: Path, rows: list[tuple[str, str, str]], *, rev: str = "") -> None:
    """Contexts with one record each, as contextwindow writes them (``rev=", rev"``: as an
    rxcontext does, with the record's change version)."""
    with sqlite3.connect(path) as db:
        for cid, name, start in rows:
            db.execute(
                "INSERT INTO contexts (id, name, start_time) VALUES (?, ?, ?)", (cid, name, start)
            )
            db.execute(
                f"INSERT INTO records (context_id, ts, source, content, live, est_tokens{rev})"
                f" VALUES (?, ?, 0, ?, 1, 1{', 1' if rev else ''})",
                (cid, start, f"note of {cid}"),
            )
    db.close()


def test_names_contextwindow_had_written_twice_are_made_unique_keeping_every_record(tmp_path):
    path = tmp_path / "cw.db"
    make_contextwindow_db(path)  # 'notes' (c-1) with 6 records
    # Written later, though dated earlier: the first written keeps the name, the one
    # rxcontext (and contextwindow) opened by that name.
    _duplicate(
        path,
        [
            ("c-2", "notes", "2024-01-01 00:00:00+00:00"),
            ("c-3", "notes (2)", "2025-09-18 00:00:00+00:00"),
            ("c-4", "notes", "2025-09-19 00:00:00+00:00"),
            ("c-5", "todo", "2025-09-19 00:00:00+00:00"),
            ("c-6", "todo", "2025-09-20 00:00:00+00:00"),
        ],
    )
    store = rxcontext.open(path)
    assert [r.content for r in ContextWindow(store, None, "notes").records()][:2] == [
        "old system",
        "What is 2+2?",
    ]
    store.close()
    assert names_and_records(path) == [
        ("c-1", "notes", 6),
        ("c-2", "notes (3)", 1),
        ("c-3", "notes (2)", 1),
        ("c-4", "notes (4)", 1),
        ("c-5", "todo", 1),
        ("c-6", "todo (2)", 1),
    ]


def test_a_database_taken_over_by_an_earlier_version_gets_unique_names_too(tmp_path):
    path = tmp_path / "cw.db"
    make_contextwindow_db(path)
    rxcontext.open(path).close()
    # As an rxcontext before the step left it: taken over, names not unique.
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM schema_migrations WHERE name = ?", (STEP,))
        for (index,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'contexts'"
            " AND sql IS NOT NULL"
        ).fetchall():
            db.execute(f"DROP INDEX {index}")
    db.close()
    _duplicate(path, [("c-2", "notes", "2025-09-18 00:00:00+00:00")], rev=", rev")
    with rxcontext.open(path) as store, pytest.raises(ValueError, match="already exists"):
        store.create_context("notes (2)")
    assert names_and_records(path) == [("c-1", "notes", 6), ("c-2", "notes (2)", 1)]


def _open_shared(path: str, barrier: multiprocessing.synchronize.Barrier, n: int) -> str:
    try:
        store = rxcontext.open(path)
        barrier.wait(30)
        ContextWindow(store, None, "shared").add_prompt(f"hello from {n}")
        store.close()
    except Exception as exc:  # reported to the parent
        return f"{type(exc).__name__}: {exc}"
    return "ok"


PROCESSES = 4
TRIALS = 3  # the old code made 4 contexts of the name in each of 5 trials of 4 processes


def test_processes_opening_one_new_name_at_once_share_one_context(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        for trial in range(TRIALS):
            path = tmp_path / f"race-{trial}.db"
            make_contextwindow_db(path)
            rxcontext.open(path).close()  # taken over first
            barrier = manager.Barrier(PROCESSES)
            results = pool.starmap(
                _open_shared, [(str(path), barrier, n) for n in range(PROCESSES)]
            )
            assert results == ["ok"] * PROCESSES
            shared = [(n, count) for _, n, count in names_and_records(path) if n == "shared"]
            assert shared == [("shared", PROCESSES)], trial
