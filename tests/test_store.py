"""The store conformance suite: contextwindow's queries, checkpoints, claims and bad input,
run on SQLite and on PostgreSQL (a fresh database per test; see tests/pgtest.py).

Tests marked ``sqlite_only`` are about SQLite itself (files, WAL, pragmas, its migrations);
PostgreSQL's own such tests are in tests/test_store_postgres.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import rxcontext
from rxcontext import (
    Checkpoint,
    CheckpointNotFound,
    CheckpointResolved,
    ContextNotFound,
    NotADatabaseError,
    RecordType,
    ReplyBusy,
    ReplyState,
    SQLiteStore,
    StoreBusy,
    StoreClosedError,
    StoreError,
    Usage,
)
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket, Store
from rxcontext.store._thinking import pack, unpack
from rxcontext.store.migrations import MIGRATIONS, migrate
from rxcontext.store.owner import worker_id

HOSTILE_NAMES = [
    "it's",
    'say "hi"',
    "x'); DROP TABLE records;--",
    "Robert'); DROP TABLE contexts;--",
    "%_*?[]\\",
    "emoji 🦀🔥 ✓",
    "a" * 500,
    "line\nbreak\ttab",
    "nul\x00byte",
    "   ",
]


def P(content: str, **kw: Any) -> RecordDraft:
    return RecordDraft(RecordType.PROMPT, content, **kw)


def R(content: str, **kw: Any) -> RecordDraft:
    return RecordDraft(RecordType.MODEL_RESP, content, **kw)


sqlite_only = pytest.mark.sqlite_only


def _open(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Any:
    if kind == "postgres":
        s = rxcontext.open(request.getfixturevalue("pg_url"))
        assert type(s).__name__ == "PostgresStore"
        return s
    return rxcontext.open(":memory:" if kind == "memory" else tmp_path / "any.db")


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = _open(request, request.param, tmp_path)
    yield s
    s.close()


def cut(store: Store, context_id: str, text: str = "partial", **kw: Any) -> Checkpoint:
    """A reply begun, then interrupted with ``text`` delivered."""
    begun = store.begin_reply(context_id, f"r-{next(_ids)}", owner=worker_id())
    ticket = ReplyTicket(begun.id, begun.epoch)
    assert store.save_checkpoint(ticket, CheckpointDraft(text, **kw), state=ReplyState.INTERRUPTED)
    return store.get_checkpoint(begun.id)


_ids = iter(range(10**9))


@pytest.fixture
def sqlite_store() -> Iterator[SQLiteStore]:
    s = rxcontext.open(":memory:")
    assert isinstance(s, SQLiteStore)
    yield s
    s.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chat.db"


@pytest.fixture(params=["memory", "file", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    s = _open(request, request.param, tmp_path)
    yield s
    s.close()


@pytest.fixture(params=["file", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database that several stores (and processes) can open: a file path or a URL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "chat.db")


def rows(store: Any, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a parameterless query, read past the store's API (SQLite or PostgreSQL)."""
    if isinstance(store, SQLiteStore):
        return [tuple(r) for r in store._db().execute(sql).fetchall()]
    with store._runner.pool().connection() as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def contents(store: SQLiteStore, context_id: str, *, live_only: bool = False) -> list[str]:
    return [r.content for r in store.records(context_id, live_only=live_only)]


def pragma(store: SQLiteStore, name: str) -> Any:
    # The connection's own settings are only visible through that connection.
    return store._db().execute(f"PRAGMA {name}").fetchone()[0]


# -- Opening, schema, migrations ----------------------------------------------------------


@sqlite_only
def test_open_creates_the_file_and_records_every_migration(db_path: Path):
    with rxcontext.open(db_path) as s:
        assert isinstance(s, SQLiteStore)
        assert db_path.exists()
    con = sqlite3.connect(db_path)
    names = [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY rowid")]
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert names == [name for name, _ in MIGRATIONS]
    assert {"contexts", "records", "context_tools", "checkpoints", "schema_migrations"} <= tables


@sqlite_only
def test_migrations_are_idempotent_on_reopen(db_path: Path):
    with rxcontext.open(db_path) as s:
        ctx = s.get_or_create_context("keep")
        s.add_record(ctx.id, P("hello"))
    for _ in range(2):
        with rxcontext.open(db_path) as s:
            assert contents(s, ctx.id) == ["hello"]
            assert migrate(s._db()) == []
    con = sqlite3.connect(db_path)
    count = con.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0]
    con.close()
    assert count == len(MIGRATIONS)


@sqlite_only
def test_an_older_database_gets_only_the_missing_steps(db_path: Path):
    con = sqlite3.connect(db_path, isolation_level=None)
    con.execute(
        "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY,"
        " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    name, first_step = MIGRATIONS[0]
    first_step(con)
    con.execute("INSERT INTO schema_migrations (name) VALUES (?)", (name,))
    con.execute("INSERT INTO contexts (id, name, start_time) VALUES ('c1', 'old', '2020-01-01')")
    con.execute(
        "INSERT INTO records (context_id, ts, source, content, live, est_tokens)"
        " VALUES ('c1', '2020-01-01T00:00:00+00:00', 0, 'from v1', 1, 2)"
    )
    con.close()
    with rxcontext.open(db_path) as s:
        (record,) = s.records("c1")
        assert (record.content, record.streamed, record.tool_call_id) == ("from v1", False, None)
        assert s.context_stats("c1").usage == Usage()
        assert migrate(s._db()) == []
    con = sqlite3.connect(db_path)
    names = [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY rowid")]
    con.close()
    assert names == [n for n, _ in MIGRATIONS]


@sqlite_only
def test_a_database_from_before_the_cache_write_totals_keeps_its_totals(db_path: Path):
    """An upgrade adds the cache-write and web-search totals at 0 (they count from then on:
    a context's totals cannot be rebuilt exactly from its records, see the step) and
    leaves every existing total exactly as it was."""
    con = sqlite3.connect(db_path, isolation_level=None)
    con.execute(
        "CREATE TABLE schema_migrations (name TEXT PRIMARY KEY,"
        " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
    )
    names = [name for name, _ in MIGRATIONS]
    for name, step in MIGRATIONS[: names.index("m011_cut_text") + 1]:
        step(con)
        con.execute("INSERT INTO schema_migrations (name) VALUES (?)", (name,))
    con.execute(
        "INSERT INTO contexts (id, name, start_time, input_tokens, output_tokens, total_tokens,"
        " cached_tokens, reasoning_tokens) VALUES ('c1', 'old', '2020-01-01', 2000, 50, 2050, 7, 9)"
    )
    con.close()
    with rxcontext.open(db_path) as s:
        assert s.context_stats("c1").usage == Usage(2000, 50, 2050, 7, 9)
        more = Usage(100, 5, 105, cache_write_tokens=80, web_search_requests=1)
        s.commit_reply("c1", [R("hi")], usage=more)
        assert s.context_stats("c1").usage == Usage(2000, 50, 2050, 7, 9) + more
    con = sqlite3.connect(db_path)
    applied = [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY rowid")]
    con.close()
    assert applied == names


@sqlite_only
def test_a_failing_step_rolls_the_whole_upgrade_back(monkeypatch: pytest.MonkeyPatch):
    # The steps a database needs run in one transaction: an upgrade that fails part-way
    # leaves the database exactly as it was (and the next open tries again).
    con = sqlite3.connect(":memory:", isolation_level=None)
    migrate(con, ":memory:")

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("step failed")

    def fine(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE fine (x)")

    monkeypatch.setattr(
        "rxcontext.store.migrations.MIGRATIONS",
        [*MIGRATIONS, ("m998_fine", fine), ("m999_broken", broken)],
    )
    with pytest.raises(RuntimeError, match="step failed"):
        migrate(con)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations")}
    assert "half_done" not in tables and "fine" not in tables
    assert done == {n for n, _ in MIGRATIONS}
    assert not con.in_transaction


@sqlite_only
def test_file_store_uses_wal_foreign_keys_and_a_busy_timeout(db_path: Path):
    with rxcontext.open(db_path) as s:
        assert pragma(s, "journal_mode") == "wal"
        assert pragma(s, "foreign_keys") == 1
        assert pragma(s, "busy_timeout") == 5000
        assert pragma(s, "synchronous") == 1  # NORMAL between durable commits
    with SQLiteStore(db_path, busy_timeout=0.25) as s:
        assert pragma(s, "busy_timeout") == 250


@sqlite_only
def test_durable_commit_restores_normal_synchronous(sqlite_store: SQLiteStore):
    ctx = sqlite_store.get_or_create_context("c")
    sqlite_store.commit_reply(ctx.id, [R("x")])
    assert pragma(sqlite_store, "synchronous") == 1


@sqlite_only
def test_memory_store_has_foreign_keys_and_is_private():
    with rxcontext.open(":memory:") as a, rxcontext.open() as b:
        assert pragma(a, "foreign_keys") == 1
        a.get_or_create_context("only-in-a")
        assert [c.name for c in b.list_contexts()] == []


@sqlite_only
def test_repr_and_close_are_idempotent(db_path: Path):
    s = rxcontext.open(db_path)
    assert "chat.db" in repr(s) and not s.closed
    s.close()
    s.close()
    assert s.closed and "closed" in repr(s)


# -- Contexts ------------------------------------------------------------------------------


def test_get_or_create_by_name(any_store: SQLiteStore):
    a = any_store.get_or_create_context("alpha")
    again = any_store.get_or_create_context("alpha")
    assert a == again
    assert a.name == "alpha" and len(a.id) == 32
    assert not a.use_server_side_threading and a.last_response_id is None
    assert any_store.get_or_create_context("beta").id != a.id


def test_empty_name_gets_a_generated_one(store: SQLiteStore):
    first = store.get_or_create_context("")
    second = store.get_or_create_context("")
    assert first.name and second.name and first.name != second.name
    assert store.get_context_by_name(first.name) == first


def test_context_name_must_be_a_string(store: SQLiteStore):
    with pytest.raises(TypeError, match="must be a str"):
        store.get_or_create_context(None)  # type: ignore[arg-type]


def test_list_newest_first(store: SQLiteStore):
    for name in ["one", "two", "three"]:
        store.get_or_create_context(name)
    assert [c.name for c in store.list_contexts()] == ["three", "two", "one"]


def test_get_by_id_and_name(store: SQLiteStore):
    ctx = store.get_or_create_context("x")
    assert store.get_context(ctx.id) == ctx == store.get_context_by_name("x")
    with pytest.raises(ContextNotFound, match="no context with id 'nope'"):
        store.get_context("nope")
    with pytest.raises(ContextNotFound, match="no context named 'nope'"):
        store.get_context_by_name("nope")
    assert issubclass(ContextNotFound, LookupError)


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_context_names_round_trip(any_store: SQLiteStore, name: str):
    ctx = any_store.get_or_create_context(name)
    any_store.add_record(ctx.id, P(name))
    assert any_store.get_context_by_name(name) == ctx
    assert any_store.get_or_create_context(name).id == ctx.id
    assert contents(any_store, ctx.id) == [name]
    clone = any_store.clone_context(ctx.id, name + "'copy")
    assert clone.name == name + "'copy"
    assert any_store.export_context(ctx.id)["context"]["name"] == name
    assert {c.name for c in any_store.list_contexts()} == {name, name + "'copy"}
    assert contents(any_store, ctx.id) == [name]  # the tables are all still there


def test_delete_cascades_records_tools_and_checkpoints(any_store: SQLiteStore):
    doomed = any_store.get_or_create_context("doomed")
    kept = any_store.get_or_create_context("kept")
    for ctx in (doomed, kept):
        any_store.add_record(ctx.id, P("hi"))
        any_store.set_context_tool(ctx.id, "t", {"name": "t"})
        cut(any_store, ctx.id)
    any_store.delete_context(doomed.id)
    with pytest.raises(ContextNotFound):
        any_store.get_context(doomed.id)
    assert rows(any_store, "SELECT COUNT(*) FROM checkpoint_parts") == [(1,)]
    for table in ("records", "context_tools", "checkpoints"):
        assert rows(any_store, f"SELECT context_id FROM {table}") == [(kept.id,)], table
    with pytest.raises(ContextNotFound):
        any_store.delete_context(doomed.id)


def test_clone_copies_records_with_timestamps_and_order_but_not_tools(any_store: SQLiteStore):
    src = any_store.get_or_create_context("src")
    any_store.set_threading(src.id, True)
    any_store.replace_system_prompt(src.id, "be brief")
    any_store.add_record(src.id, P("q1"))
    any_store.set_live_range(src.id, 1, 1, False)  # before the reply: its thread stands
    any_store.commit_reply(
        src.id,
        [
            R("a1", streamed=True, response_id="r1", metadata={"k": [1]}),
            RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="f"),
        ],
        last_response_id="r1",
    )
    any_store.set_context_tool(src.id, "f", {"name": "f"})
    cut(any_store, src.id)

    dst = any_store.clone_context(src.id, "dst")
    assert dst.id != src.id and dst.name == "dst"
    assert dst.use_server_side_threading and dst.last_response_id == "r1"

    def shape(records: list[rxcontext.Record]) -> list[tuple[Any, ...]]:
        return [
            (r.type, r.content, r.live, r.est_tokens, r.timestamp, r.response_id, r.streamed,
             r.tool_call_id, r.tool_name, dict(r.metadata), r.pos)
            for r in records
        ]  # fmt: skip

    src_records, dst_records = any_store.records(src.id), any_store.records(dst.id)
    assert shape(dst_records) == shape(src_records)
    assert len(dst_records) == 4
    assert {r.id for r in dst_records}.isdisjoint(r.id for r in src_records)
    assert all(r.context_id == dst.id for r in dst_records)
    assert any_store.context_tools(dst.id) == []
    assert any_store.checkpoints(dst.id) == []


def test_create_context_makes_a_new_one_or_refuses_a_name_in_use(any_store: SQLiteStore):
    made = any_store.create_context("fresh")
    assert made.name == "fresh" and any_store.get_context_by_name("fresh").id == made.id
    any_store.add_record(made.id, P("mine"))
    with pytest.raises(ValueError, match="'fresh' already exists"):
        any_store.create_context("fresh")
    assert [r.content for r in any_store.records(made.id)] == ["mine"]
    with pytest.raises(TypeError):
        any_store.create_context("")


def test_import_context_creates_a_context_whole_or_refuses_a_name_in_use(any_store: Any):
    """The store's half of an import: the context with its records (in order, each at its
    own position, times kept), tools, usage totals and threading state, in one write."""
    then = datetime(2025, 9, 17, 10, 0, 1, 123456, tzinfo=UTC)
    drafts = [
        P("q", timestamp=then),
        R("a", response_id="r1", live=False),
        R("b" * 40, metadata={"k": [1]}),
    ]
    ctx = any_store.import_context(
        "imported",
        drafts,
        tools=[("f", {"description": "f"}), ("g", {})],
        usage=Usage.of(7, 3),
        server_side_threading=True,
        last_response_id="r1",
    )
    assert (ctx.name, ctx.use_server_side_threading, ctx.last_response_id) == (
        "imported",
        True,
        "r1",
    )
    assert any_store.get_context_by_name("imported") == ctx
    got = any_store.records(ctx.id)
    assert [(r.content, r.live, r.pos, r.response_id, dict(r.metadata)) for r in got] == [
        ("q", True, 0, None, {}),
        ("a", False, 1, "r1", {}),
        ("b" * 40, True, 2, None, {"k": [1]}),
    ]
    assert got[0].timestamp == then
    assert any_store.live_tokens(ctx.id) == got[0].est_tokens + got[2].est_tokens
    assert any_store.context_stats(ctx.id).usage == Usage.of(7, 3)
    assert [(t["name"], t["definition"]) for t in any_store.context_tools(ctx.id)] == [
        ("f", {"description": "f"}),
        ("g", {}),
    ]
    assert any_store.history(ctx.id)[1] == got
    assert any_store.add_record(ctx.id, P("next")).pos == 3
    with pytest.raises(ValueError, match="'imported' already exists"):
        any_store.import_context("imported", [P("theirs")], tools=[("h", {})])
    assert [r.content for r in any_store.records(ctx.id)] == ["q", "a", "b" * 40, "next"]
    assert [t["name"] for t in any_store.context_tools(ctx.id)] == ["f", "g"]
    empty = any_store.import_context("empty", [])
    assert any_store.records(empty.id) == [] and any_store.context_tools(empty.id) == []
    assert any_store.context_stats(empty.id).usage == Usage()
    assert sorted(c.name for c in any_store.list_contexts()) == ["empty", "imported"]


def test_clone_refuses_an_existing_name_and_a_missing_source(store: SQLiteStore):
    a = store.get_or_create_context("a")
    store.get_or_create_context("b")
    with pytest.raises(ValueError, match="already exists"):
        store.clone_context(a.id, "b")
    with pytest.raises(ValueError, match="needs a name"):
        store.clone_context(a.id, "")
    with pytest.raises(ContextNotFound):
        store.clone_context("missing", "c")
    assert sorted(c.name for c in store.list_contexts()) == ["a", "b"]


def test_export_to_a_json_ready_dict(store: SQLiteStore):
    ctx = store.get_or_create_context("exp")
    store.replace_system_prompt(ctx.id, "sys")
    store.add_record(ctx.id, P("q"))
    store.commit_reply(
        ctx.id,
        [R("a", streamed=True, metadata={"thinking_blocks": [{"type": "thinking"}]})],
        usage=Usage.of(3, 4),
    )
    store.set_context_tool(ctx.id, "f", {"name": "f", "description": "d"})
    data = store.export_context(ctx.id)
    assert json.loads(json.dumps(data)) == data
    assert data["context"]["id"] == ctx.id and data["context"]["name"] == "exp"
    assert data["context"]["usage"] == Usage(3, 4, 7).to_dict()
    assert [(r["type"], r["source"], r["content"]) for r in data["records"]] == [
        ("SYSTEM_PROMPT", 4, "sys"),
        ("PROMPT", 0, "q"),
        ("MODEL_RESP", 1, "a"),
    ]
    assert data["records"][2]["streamed"] is True
    assert data["records"][2]["metadata"] == {"thinking_blocks": [{"type": "thinking"}]}
    assert [(t["name"], t["definition"]) for t in data["tools"]] == [
        ("f", {"name": "f", "description": "d"})
    ]
    with pytest.raises(ContextNotFound):
        store.export_context("missing")


def test_opening_an_existing_context_needs_no_write_lock(db_path: Path):
    """A window (or a CLI command) on a context that exists only reads: another process's
    long write does not make it wait for the lock and fail with StoreBusy."""
    import sqlite3

    store = SQLiteStore(db_path, busy_timeout=0.2)
    try:
        made = store.get_or_create_context("c")
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            assert store.get_or_create_context("c") == made
            with pytest.raises(StoreBusy):  # a new one is a write, and waits as writes do
                store.get_or_create_context("new")
        finally:
            other.execute("COMMIT")
            other.close()
    finally:
        store.close()


def test_an_export_is_one_snapshot_while_another_connection_writes(db_path: Path):
    """The export's reads (context, records, tools, totals) see one moment of the file:
    another process's reply committed between two of them must be in all or in none."""
    exporter, writer = SQLiteStore(db_path), SQLiteStore(db_path)
    try:
        ctx = exporter.get_or_create_context("c")
        exporter.add_record(ctx.id, P("q"))
        fired: list[str] = []

        def between(sql: str) -> None:  # after the records are read, before the totals
            if "FROM context_tools" in sql and not fired:
                fired.append(sql)
                writer.commit_reply(ctx.id, [R("a")], usage=Usage.of(1000, 500))

        exporter._db().set_trace_callback(between)
        try:
            data = exporter.export_context(ctx.id)
        finally:
            exporter._db().set_trace_callback(None)
        assert fired
        assert [r["content"] for r in data["records"]] == ["q"]
        assert data["context"]["usage"]["total_tokens"] == 0
        assert [r.content for r in exporter.records(ctx.id)] == ["q", "a"]  # it did commit
    finally:
        exporter.close()
        writer.close()


def test_stats_aggregate_counts_tokens_and_summed_usage(store: SQLiteStore):
    ctx = store.get_or_create_context("s")
    empty = store.context_stats(ctx.id)
    assert (empty.records, empty.live_tokens, empty.last_activity) == (0, 0, None)
    assert empty.usage == Usage()

    store.add_record(ctx.id, P("abcdefgh"))  # 2 tokens
    store.commit_reply(ctx.id, [R("abcd")], usage=Usage(10, 1, 11, 2, 0))  # 1 token
    store.commit_reply(
        ctx.id,
        [
            RecordDraft(RecordType.TOOL_CALL, '{"a":1}', tool_call_id="c", tool_name="f"),
            RecordDraft(RecordType.TOOL_OUTPUT, "x" * 12, tool_call_id="c", tool_name="f"),
        ],
        usage=Usage(20, 5, 30, 0, 3),
    )
    store.set_live_range(ctx.id, 0, 0, False)
    cut(store, ctx.id, "p")
    store.discard_checkpoint(cut(store, ctx.id, "q").id)
    store.begin_reply(ctx.id, "streaming", owner=worker_id())  # not an open checkpoint

    stats = store.context_stats(ctx.id)
    records = store.records(ctx.id)
    assert (stats.context_id, stats.name) == (ctx.id, "s")
    # The discarded reply left a dead record of what it delivered ("q"), for the cost.
    assert (stats.records, stats.live_records) == (5, 3)
    assert (stats.prompts, stats.replies, stats.tool_calls, stats.tool_outputs) == (1, 2, 1, 1)
    assert stats.total_tokens == sum(r.est_tokens for r in records) == 2 + 1 + 2 + 3 + 1
    assert stats.live_tokens == sum(r.est_tokens for r in records if r.live) == 1 + 2 + 3
    assert stats.open_checkpoints == 1
    assert stats.usage == Usage(30, 6, 41, 2, 3)
    assert stats.last_activity == max(r.timestamp for r in records)
    with pytest.raises(ContextNotFound):
        store.context_stats("missing")


def test_the_totals_sum_every_usage_field_on_every_path_that_adds_to_them(store: Store):
    """Cache writes and web searches are counted as the other fields are: by a reply's
    commit, an import's usage, a discarded attempt's billed usage; an export carries them
    and an import of it starts from them."""
    ctx = store.get_or_create_context("u")
    reply = Usage(2000, 50, 2050, 0, 20, cache_write_tokens=1800, web_search_requests=3)
    store.commit_reply(ctx.id, [R("hi", metadata={"usage": reply.to_dict()})], usage=reply)
    imported = Usage(40, 4, 44, cache_write_tokens=30, web_search_requests=1)
    store.import_records(ctx.id, [P("more")], usage=imported)
    billed = Usage(700, 0, 700, cached_tokens=500, cache_write_tokens=200)
    store.discard_checkpoint(cut(store, ctx.id, "p", usage=billed).id)
    spent = reply + imported + billed
    assert spent.cache_write_tokens == 2030 and spent.web_search_requests == 4
    assert all(getattr(spent, f) for f in Usage.__dataclass_fields__)  # every field is tried
    assert store.context_stats(ctx.id).usage == spent
    exported = store.export_context(ctx.id)["context"]["usage"]
    assert exported == spent.to_dict()
    copy = store.import_context("copy", [], usage=Usage.from_dict(exported))
    assert store.context_stats(copy.id).usage == spent
    assert store.export_context(copy.id)["context"]["usage"] == spent.to_dict()


@sqlite_only
def test_stats_is_one_aggregate_query(sqlite_store: SQLiteStore):
    ctx = sqlite_store.get_or_create_context("s")
    sqlite_store.add_record(ctx.id, P("x"))
    statements: list[str] = []
    sqlite_store._db().set_trace_callback(statements.append)
    try:
        sqlite_store.context_stats(ctx.id)
    finally:
        sqlite_store._db().set_trace_callback(None)
    assert len(statements) == 1 and statements[0].lstrip().startswith("SELECT")


def test_threading_flag_and_last_response_id(store: SQLiteStore):
    ctx = store.get_or_create_context("t")
    store.set_threading(ctx.id, True)
    store.set_last_response_id(ctx.id, "resp_9")
    got = store.get_context(ctx.id)
    assert got.use_server_side_threading and got.last_response_id == "resp_9"
    store.set_threading(ctx.id, False)
    store.set_last_response_id(ctx.id, None)
    got = store.get_context(ctx.id)
    assert not got.use_server_side_threading and got.last_response_id is None
    with pytest.raises(ContextNotFound):
        store.set_threading("missing", True)


# -- Records -------------------------------------------------------------------------------


def test_add_record_returns_what_records_reads_back(any_store: SQLiteStore):
    ctx = any_store.get_or_create_context("r")
    added = any_store.add_record(
        ctx.id,
        RecordDraft(
            RecordType.TOOL_OUTPUT,
            "sunny",
            live=False,
            response_id="r1",
            streamed=True,
            tool_call_id="call_1",
            tool_name="weather",
            metadata={"nested": {"a": [1, "é"]}, "pair": (1, 2)},
        ),
    )
    (read,) = any_store.records(ctx.id)
    assert read == added  # metadata as stored: the tuple comes back as a JSON list
    assert read.metadata["pair"] == [1, 2]
    assert read.type is RecordType.TOOL_OUTPUT and read.est_tokens == 2
    assert read.timestamp.tzinfo is not None
    assert any_store.records(ctx.id, live_only=True) == []


def test_add_record_to_a_missing_context(store: SQLiteStore):
    with pytest.raises(ContextNotFound):
        store.add_record("missing", P("x"))


def test_records_are_ordered_by_position_not_by_clock(store: SQLiteStore):
    # The store's clock steps back (NTP, a VM resumed) between writes: order is unchanged.
    times = iter(datetime(2024, 1, d, tzinfo=UTC) for d in (5, 1, 9, 2, 2, 2, 3, 8, 8, 8, 8, 8, 8))
    stepped = isinstance(store, SQLiteStore)  # PostgreSQL's clock is the server's
    if stepped:
        store.clock = lambda: next(times)
    ctx = store.get_or_create_context("o")
    for content in "abc":
        store.add_record(ctx.id, P(content))
    replies = store.commit_reply(ctx.id, [R("d"), R("e"), R("f")])
    assert {r.pos for r in replies} == {3}  # one reply, one place
    store.add_record(ctx.id, P("g"))
    assert contents(store, ctx.id) == list("abcdefg")
    assert [r.pos for r in store.records(ctx.id)] == [0, 1, 2, 3, 3, 3, 4]
    if stepped:
        assert [r.timestamp.day for r in store.records(ctx.id)] == [1, 9, 2, 2, 2, 3, 8]


def test_set_live_range_is_inclusive_and_checked(store: SQLiteStore):
    ctx = store.get_or_create_context("l")
    for i in range(5):
        store.add_record(ctx.id, P(str(i)))
    assert store.set_live_range(ctx.id, 1, 3, False) == 3
    assert contents(store, ctx.id, live_only=True) == ["0", "4"]
    assert store.set_live_range(ctx.id, 2, 2, True) == 1
    assert contents(store, ctx.id, live_only=True) == ["0", "2", "4"]
    before = store.records(ctx.id)
    for start, end in [(0, 5), (-1, 2), (3, 2), (5, 5), (10, 20)]:
        with pytest.raises(IndexError):
            store.set_live_range(ctx.id, start, end, False)
        assert store.records(ctx.id) == before


def test_replace_system_prompt_keeps_one_live_sorted_first_and_the_old_ones_dead(store):
    # As contextwindow does: the previous system prompt stays, as a dead record.
    ctx = store.get_or_create_context("sys")
    first = store.replace_system_prompt(ctx.id, "v1")
    assert first.type is RecordType.SYSTEM_PROMPT
    store.add_record(ctx.id, P("q"))
    store.commit_reply(ctx.id, [R("a")])
    store.replace_system_prompt(ctx.id, "v2")
    store.replace_system_prompt(ctx.id, "v3")
    assert [(r.type, r.content, r.live) for r in store.records(ctx.id)] == [
        (RecordType.SYSTEM_PROMPT, "v3", True),
        (RecordType.SYSTEM_PROMPT, "v2", False),
        (RecordType.SYSTEM_PROMPT, "v1", False),
        (RecordType.PROMPT, "q", True),
        (RecordType.MODEL_RESP, "a", True),
    ]
    live = store.records(ctx.id, live_only=True)
    assert [r.content for r in live] == ["v3", "q", "a"]
    assert store.live_tokens(ctx.id) == sum(r.est_tokens for r in live)
    with pytest.raises(ContextNotFound):
        store.replace_system_prompt("missing", "x")


def test_replace_records_marks_dead_and_inserts_in_place(store: SQLiteStore):
    ctx = store.get_or_create_context("sum")
    ids = [store.add_record(ctx.id, P(c)).id for c in "abcd"]
    summary = store.replace_records(ctx.id, [ids[1], ids[2], ids[1]], R("summary of b, c"))
    assert summary.pos == store.records(ctx.id)[1].pos
    assert contents(store, ctx.id, live_only=True) == ["a", "summary of b, c", "d"]
    before = store.records(ctx.id)
    with pytest.raises(ValueError, match="no longer live"):
        store.replace_records(ctx.id, [ids[0], ids[1]], R("stale"))
    with pytest.raises(ValueError, match="no records"):
        store.replace_records(ctx.id, [], R("nothing"))
    assert store.records(ctx.id) == before


@sqlite_only
def test_commit_reply_writes_every_draft_in_one_transaction(sqlite_store: SQLiteStore):
    ctx = sqlite_store.get_or_create_context("c")
    sqlite_store.add_record(ctx.id, P("q"))
    statements: list[str] = []
    sqlite_store._db().set_trace_callback(statements.append)
    try:
        out = sqlite_store.commit_reply(
            ctx.id,
            [
                R("calling", streamed=True, response_id="r1"),
                RecordDraft(RecordType.TOOL_CALL, '{"a": 1}', tool_call_id="c1", tool_name="f"),
            ],
            usage=Usage.of(5, 2),
            last_response_id="r1",
        )
    finally:
        sqlite_store._db().set_trace_callback(None)
    assert sum(s.startswith("BEGIN") for s in statements) == 1
    assert sum(s == "COMMIT" for s in statements) == 1
    assert [r.content for r in out] == ["calling", '{"a": 1}']
    assert sqlite_store.records(ctx.id)[1:] == out
    assert sqlite_store.get_context(ctx.id).last_response_id == "r1"


@pytest.mark.parametrize(
    "bad",
    [
        RecordDraft(RecordType.MODEL_RESP, b"bytes"),  # type: ignore[arg-type]
        RecordDraft(RecordType.MODEL_RESP, None),  # type: ignore[arg-type]
        RecordDraft(99, "unknown type"),  # type: ignore[arg-type]
        RecordDraft(RecordType.MODEL_RESP, "x", metadata={"f": object()}),
    ],
    ids=["bytes", "none", "bad-type", "unserialisable-metadata"],
)
def test_commit_reply_with_one_bad_draft_stores_nothing(store: SQLiteStore, bad: RecordDraft):
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    begun = store.begin_reply(ctx.id, "r", owner=worker_id())
    ticket = ReplyTicket(begun.id, begun.epoch)
    store.save_checkpoint(ticket, CheckpointDraft("partial"))
    before = store.records(ctx.id)
    with pytest.raises((TypeError, ValueError)):
        store.commit_reply(
            ctx.id,
            [R("good one"), bad, R("after")],
            usage=Usage.of(5, 5),
            last_response_id="r1",
            reply=ticket,
            end="reply",
        )
    assert store.records(ctx.id) == before
    assert store.context_stats(ctx.id).usage == Usage()
    row = store.find_reply("r")
    assert row is not None and (row.state, row.text) == (ReplyState.STREAMING, "partial")
    assert store.get_context(ctx.id).last_response_id is None
    # The store is still usable afterwards.
    store.commit_reply(ctx.id, [R("fine")])
    assert contents(store, ctx.id) == ["q", "fine"]


def test_commit_reply_to_a_deleted_context_stores_nothing(store: SQLiteStore):
    ctx = store.get_or_create_context("gone")
    store.delete_context(ctx.id)
    with pytest.raises(ContextNotFound, match="deleted"):
        store.commit_reply(ctx.id, [R("x")])
    assert rows(store, "SELECT COUNT(*) FROM records") == [(0,)]


def test_commit_reply_drops_the_row_of_a_reply_never_interrupted(store: SQLiteStore):
    ctx = store.get_or_create_context("c")
    begun = store.begin_reply(ctx.id, "run", owner=worker_id())
    ticket = ReplyTicket(begun.id, begun.epoch)
    store.save_checkpoint(ticket, CheckpointDraft("run"))
    (rec,) = store.commit_reply(ctx.id, [R("run done")], reply=ticket, end="reply")
    assert (rec.pos, rec.reply_id) == (begun.pos, "run")
    assert store.checkpoints(ctx.id, include_resolved=True) == []
    assert rows(store, "SELECT COUNT(*) FROM checkpoint_parts") == [(0,)]
    with pytest.raises(CheckpointNotFound):
        store.get_checkpoint(begun.id)
    assert store.find_reply("run") is None and store.reply_records("run") == [rec]


def test_empty_and_huge_content_round_trip(any_store: SQLiteStore):
    ctx = any_store.get_or_create_context("big")
    huge = "0123456789abcdef🦀\n" * (10 * 1024 * 1024 // 20)
    assert len(huge.encode()) >= 10_000_000
    empty = any_store.add_record(ctx.id, P(""))
    big = any_store.commit_reply(ctx.id, [R(huge)])[0]
    assert empty.est_tokens == 0
    assert big.est_tokens == (len(huge.encode()) + 3) // 4
    assert contents(any_store, ctx.id) == ["", huge]


def test_long_values_are_stored_as_binding_them_whole_would(sqlite_store: SQLiteStore):
    store = sqlite_store
    # A long reply's content and metadata are written into the row a slice at a time
    # (store/_sqlite_long.py); the row must hold the same TEXT, byte for byte, as binding the
    # whole str, and the record returned must be what reading it gives, without new copies.
    from rxcontext.store import _sqlite_long as long
    from rxcontext.store import _sqlite_rows as sqlrows

    unit = 'é "q" \\ \n\t\x01 日本語 😀 '
    text = unit * (long.LONG // len(unit) + 1)
    pair_cut = "x" * (long.SLICE - 1) + "\ud83d\ude00" + "y" * long.LONG + "\udc00"
    meta = {
        "thinking": text,
        "thinking_blocks": [{"type": "thinking", "thinking": text, "signature": "s"}],
        "other": ("keep", 1, 2.5, None, True, {"k": pair_cut}),
        "\ud83d": "lone key",
    }
    ctx = store.get_or_create_context("long")
    db = store._db()
    (rec,) = store.commit_reply(ctx.id, [R(text + pair_cut, metadata=meta)])
    content, metadata, kinds = db.execute(
        "SELECT CAST(content AS BLOB), CAST(metadata AS BLOB),"
        " typeof(content) || typeof(metadata) FROM records WHERE id = ?",
        (rec.id,),
    ).fetchone()
    assert kinds == "texttext"
    assert content == sqlrows.storable(text + pair_cut).encode()
    # Stored as binding the JSON whole would store it, the block's text a span of the
    # reasoning (store/_thinking.py): the long text is in the row once.
    whole = sqlrows.to_json(dict(pack(meta)))
    assert whole is not None and metadata == whole.encode()
    assert metadata.count("日本語".encode()) == text.count("日本語")  # not twice that
    assert dict(rec.metadata) == json.loads(sqlrows.to_json(meta) or "")  # as it was given
    assert store.records(ctx.id) == [rec]
    # The returned record shares the caller's long text (one copy, not one a place).
    assert rec.metadata["thinking"] is text
    assert rec.metadata["thinking_blocks"][0]["thinking"] is text


def test_surrogates_are_stored_not_lost(store: SQLiteStore):
    # An emoji escaped as a pair and cut between two deltas joins to a surrogate pair that
    # UTF-8 refuses; the reply must still be stored (the pair joined, a lone half replaced).
    ctx = store.get_or_create_context("s")
    split_pair = "smile " + "\ud83d" + "\ude00"
    (stored,) = store.commit_reply(
        ctx.id, [R(split_pair + " and half \ud83d", metadata={"k": "\udc00"})]
    )
    assert stored.content == "smile 😀 and half \ufffd"
    assert dict(stored.metadata) == {"k": "\ufffd"}
    assert store.records(ctx.id) == [stored]
    cp = cut(
        store,
        ctx.id,
        split_pair,
        append_thinking="\ud800",
        tool_calls=[{"arguments": '{"a": "\ud83d'}],
        error="cut \ud83d",
    )
    assert (cp.text, cp.thinking, cp.error) == ("smile 😀", "\ufffd", "cut \ufffd")
    assert cp.tool_calls == ({"arguments": '{"a": "\ufffd'},)


# -- Tools ---------------------------------------------------------------------------------


def test_context_tools_set_update_list_remove(store: SQLiteStore):
    ctx = store.get_or_create_context("t")
    store.set_context_tool(ctx.id, "a", {"name": "a", "v": 1})
    store.set_context_tool(ctx.id, "b", {"name": "b"})
    store.set_context_tool(ctx.id, "a", {"name": "a", "v": 2})  # update keeps its place
    tools = store.context_tools(ctx.id)
    assert [(t["name"], t["definition"]) for t in tools] == [
        ("a", {"name": "a", "v": 2}),
        ("b", {"name": "b"}),
    ]
    assert store.remove_context_tool(ctx.id, "a") is True
    assert store.remove_context_tool(ctx.id, "a") is False
    assert [t["name"] for t in store.context_tools(ctx.id)] == ["b"]
    with pytest.raises(ContextNotFound):
        store.set_context_tool("missing", "a", {})


# -- Checkpoints ---------------------------------------------------------------------------


def test_checkpoint_text_is_appended_and_the_rest_replaced(store: SQLiteStore):
    ctx = store.get_or_create_context("cp")
    begun = store.begin_reply(ctx.id, "r1", owner=worker_id())
    assert (begun.state, begun.epoch, begun.text, begun.reply_id) == (
        ReplyState.STREAMING,
        1,
        "",
        "r1",
    )
    assert begun.updated_at == begun.created_at and begun.owner == worker_id()
    ticket = ReplyTicket(begun.id, 1)
    assert store.save_checkpoint(ticket, CheckpointDraft("He", chunks=1))
    fragments = [{"index": 0, "id": "c", "name": "f", "arguments": '{"a'}]
    assert store.save_checkpoint(
        ticket,
        CheckpointDraft(
            "llo",
            append_thinking="hmm",
            tool_calls=fragments,
            usage=Usage.of(3, 2),
            error="RuntimeError: boom",
            chunks=2,
            response_id="resp",
            metadata={"model": "m"},
        ),
        state=ReplyState.INTERRUPTED,
    )
    second = store.get_checkpoint(begun.id)
    assert second.created_at == begun.created_at
    assert second.updated_at is not None and second.updated_at >= begun.created_at
    assert (second.text, second.thinking, second.chunks, second.error) == (
        "Hello",
        "hmm",
        2,
        "RuntimeError: boom",
    )
    assert (second.state, second.owner) == (ReplyState.INTERRUPTED, None)
    assert second.tool_calls == tuple(fragments)
    assert second.usage == Usage(3, 2, 5)
    assert (second.response_id, dict(second.metadata)) == ("resp", {"model": "m"})
    assert store.checkpoints(ctx.id) == [second]
    assert store.find_reply("r1") == second
    # Interrupted: the writer's ticket no longer writes (a late periodic write changes nothing).
    assert not store.save_checkpoint(ticket, CheckpointDraft("late"))
    assert store.get_checkpoint(begun.id).text == "Hello"


def test_checkpoint_lookups(store: SQLiteStore):
    ctx = store.get_or_create_context("cp")
    with pytest.raises(CheckpointNotFound):
        store.get_checkpoint(12345)
    assert not store.save_checkpoint(ReplyTicket(12345, 1), CheckpointDraft("x"))
    with pytest.raises(ContextNotFound):
        store.begin_reply("missing", "r", owner=worker_id())
    assert store.find_reply("never") is None
    assert store.checkpoints(ctx.id) == [] == store.active_replies(ctx.id)
    assert issubclass(CheckpointNotFound, LookupError)


def test_claim_is_atomic_and_resolve_goes_through_commit_reply(store: SQLiteStore):
    ctx = store.get_or_create_context("cp")
    a = cut(store, ctx.id, "a")
    b = cut(store, ctx.id, "b")
    assert [c.id for c in store.checkpoints(ctx.id)] == [a.id, b.id]

    claimed = store.claim_checkpoint(a.id, owner=worker_id())
    assert (claimed.state, claimed.epoch, claimed.text) == (ReplyState.RESUMING, 2, "a")
    with pytest.raises(ReplyBusy, match="being resumed") as busy:
        store.claim_checkpoint(a.id, owner=worker_id())
    assert busy.value.state == "resuming"
    assert [c.id for c in store.active_replies(ctx.id)] == [a.id]
    with pytest.raises(CheckpointNotFound):
        store.claim_checkpoint(999, owner=worker_id())

    ticket = ReplyTicket(a.id, claimed.epoch)
    (rec,) = store.commit_reply(ctx.id, [R("a + rest")], reply=ticket, end="reply")
    assert rec.pos == a.pos
    resolved = store.get_checkpoint(a.id)
    assert resolved.resolved and resolved.resolved_at is not None
    assert resolved.state is ReplyState.COMPLETED
    assert [c.id for c in store.checkpoints(ctx.id)] == [b.id]
    assert [c.id for c in store.checkpoints(ctx.id, include_resolved=True)] == [a.id, b.id]
    with pytest.raises(CheckpointResolved, match="already completed"):
        store.claim_checkpoint(a.id, owner=worker_id())


def test_only_one_of_many_threads_claims_a_checkpoint(target: str):
    with rxcontext.open(target) as s:
        ctx = s.get_or_create_context("race")
        cp = cut(s, ctx.id, "x")
        stores = [rxcontext.open(target) for _ in range(8)]
        barrier = threading.Barrier(len(stores))
        wins: list[bool] = []

        def claim(other: SQLiteStore) -> None:
            barrier.wait()
            try:
                other.claim_checkpoint(cp.id, owner=worker_id())
            except ReplyBusy:
                wins.append(False)
            else:
                wins.append(True)

        threads = [threading.Thread(target=claim, args=(o,)) for o in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for o in stores:
            o.close()
    assert sorted(wins) == [False] * 7 + [True]


# -- Closed store --------------------------------------------------------------------------

CALLS: dict[str, Callable[[SQLiteStore, str], object]] = {
    "get_or_create_context": lambda s, c: s.get_or_create_context("x"),
    "create_context": lambda s, c: s.create_context("y"),
    "list_contexts": lambda s, c: s.list_contexts(),
    "get_context": lambda s, c: s.get_context(c),
    "get_context_by_name": lambda s, c: s.get_context_by_name("x"),
    "delete_context": lambda s, c: s.delete_context(c),
    "clone_context": lambda s, c: s.clone_context(c, "y"),
    "export_context": lambda s, c: s.export_context(c),
    "context_stats": lambda s, c: s.context_stats(c),
    "set_threading": lambda s, c: s.set_threading(c, True),
    "set_last_response_id": lambda s, c: s.set_last_response_id(c, "r"),
    "import_context": lambda s, c: s.import_context("y", [P("x")], tools=[("t", {})]),
    "add_record": lambda s, c: s.add_record(c, P("x")),
    "records": lambda s, c: s.records(c),
    "history": lambda s, c: s.history(c),
    "import_records": lambda s, c: s.import_records(c, [P("x")]),
    "live_tokens": lambda s, c: s.live_tokens(c),
    "set_live_range": lambda s, c: s.set_live_range(c, 0, 0, False),
    "replace_system_prompt": lambda s, c: s.replace_system_prompt(c, "x"),
    "replace_records": lambda s, c: s.replace_records(c, [1], R("x")),
    "commit_reply": lambda s, c: s.commit_reply(c, [R("x")]),
    "set_context_tool": lambda s, c: s.set_context_tool(c, "t", {}),
    "context_tools": lambda s, c: s.context_tools(c),
    "remove_context_tool": lambda s, c: s.remove_context_tool(c, "t"),
    "begin_reply": lambda s, c: s.begin_reply(c, "r", owner="me"),
    "save_checkpoint": lambda s, c: s.save_checkpoint(ReplyTicket(1, 1), CheckpointDraft("x")),
    "save_checkpoints": lambda s, c: s.save_checkpoints([]),
    "renew_leases": lambda s, c: s.renew_leases("me"),
    "renew_replies": lambda s, c: s.renew_replies([ReplyTicket(1, 1)]),
    "request_stop": lambda s, c: s.request_stop("r"),
    "hold_reply": lambda s, c: s.hold_reply(ReplyTicket(1, 1)),
    "stop_requests": lambda s, c: s.stop_requests([ReplyTicket(1, 1)]),
    "on_close": lambda s, c: s.on_close(lambda: None),
    "get_checkpoint": lambda s, c: s.get_checkpoint(1),
    "find_reply": lambda s, c: s.find_reply("r"),
    "reply_records": lambda s, c: s.reply_records("r"),
    "checkpoints": lambda s, c: s.checkpoints(c),
    "active_replies": lambda s, c: s.active_replies(c),
    "claim_checkpoint": lambda s, c: s.claim_checkpoint(1, owner="me"),
    "discard_checkpoint": lambda s, c: s.discard_checkpoint(1),
    "keep_checkpoint": lambda s, c: s.keep_checkpoint(1),
}


def test_the_closed_store_table_covers_the_whole_interface():
    public = {
        name
        for name, value in vars(Store).items()
        if callable(value) and not name.startswith("_") and name != "close"
    }
    assert public == set(CALLS)


@pytest.fixture(scope="module", params=["file", "postgres"])
def module_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like ``target`` but one database for the whole module (fresh ones cost ~0.2 s each)."""
    if request.param == "file":
        yield str(tmp_path_factory.mktemp("closed") / "chat.db")
        return
    import pgtest

    yield from pgtest.fresh_database(request.getfixturevalue("pg_server"))


@pytest.mark.parametrize("method", sorted(CALLS))
def test_every_method_of_a_closed_store_raises_store_closed(module_target: str, method: str):
    target = module_target
    s = rxcontext.open(target)
    ctx = s.get_or_create_context(method)
    s.add_record(ctx.id, P("kept"))
    s.close()
    with pytest.raises(StoreClosedError, match=r"closed; open it again with rxcontext\.open"):
        CALLS[method](s, ctx.id)
    assert issubclass(StoreClosedError, StoreError)
    with rxcontext.open(target) as again:
        assert contents(again, ctx.id) == ["kept"]


# -- Bad files -----------------------------------------------------------------------------


def snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


@sqlite_only
@pytest.mark.parametrize(
    "content",
    [
        b"hello, I am a text file\n",
        os.urandom(4096),
        b"SQLite",  # shorter than the header
        b"SQLite format 2\x00" + bytes(100),
        b"SQLite format 3\x00" + b"\xff" * 200,  # the header, then garbage
    ],
    ids=["text", "random", "short", "near-header", "corrupt-after-header"],
)
def test_a_non_database_file_is_refused_and_left_untouched(db_path: Path, content: bytes):
    db_path.write_bytes(content)
    os.utime(db_path, ns=(1_000_000_000, 1_000_000_000))
    before = snapshot(db_path)
    with pytest.raises(NotADatabaseError, match=r"not a.* SQLite database") as info:
        rxcontext.open(db_path)
    assert str(db_path) in str(info.value)
    assert snapshot(db_path) == before


@sqlite_only
def test_an_empty_file_becomes_a_database(db_path: Path):
    db_path.write_bytes(b"")
    with rxcontext.open(db_path) as s:
        s.get_or_create_context("x")
    assert db_path.read_bytes().startswith(b"SQLite format 3\x00")


@sqlite_only
def test_a_directory_is_refused(tmp_path: Path):
    with pytest.raises(StoreError, match="is a directory"):
        rxcontext.open(tmp_path)


@sqlite_only
def test_a_missing_folder_is_refused_without_creating_it(tmp_path: Path):
    target = tmp_path / "no" / "such" / "chat.db"
    with pytest.raises(StoreError, match="does not exist"):
        rxcontext.open(target)
    assert not (tmp_path / "no").exists()


@contextmanager
def unwritable(path: Path) -> Iterator[Path]:
    """``path`` made read-only for this process for the duration of the block."""
    path.chmod(0o444)
    if os.geteuid() != 0:
        yield path
        return
    # chmod does not stop root; the immutable attribute does, where the system allows it.
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode != 0:
        pytest.skip("running as root, and chattr +i is not available to make a read-only file")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@sqlite_only
def test_a_read_only_database_reads_but_refuses_writes_clearly(db_path: Path):
    with rxcontext.open(db_path) as s:
        ctx = s.get_or_create_context("ro")
        s.add_record(ctx.id, P("before"))
    data = db_path.read_bytes()
    with unwritable(db_path), rxcontext.open(db_path) as s:
        assert contents(s, ctx.id) == ["before"]
        with pytest.raises(StoreError, match="read-only"):
            s.add_record(ctx.id, P("lost?"))
        with pytest.raises(StoreError, match="read-only"):
            s.commit_reply(ctx.id, [R("lost?")])
        assert contents(s, ctx.id) == ["before"]
    assert db_path.read_bytes() == data


@sqlite_only
def test_an_empty_read_only_file_is_refused_clearly(db_path: Path):
    # It needs the schema written and cannot get it.
    db_path.write_bytes(b"")
    with unwritable(db_path):
        with pytest.raises(StoreError, match="read-only"):
            rxcontext.open(db_path)
        assert db_path.read_bytes() == b""


# -- Other processes and threads -----------------------------------------------------------

READER = """
import json, sys
import rxcontext
with rxcontext.open(sys.argv[1]) as s:
    ctx = s.get_context_by_name(sys.argv[2])
    print(json.dumps([[r.type.name, r.content, r.streamed] for r in s.records(ctx.id)]))
"""


def test_another_process_sees_every_committed_reply(target: str):
    s = rxcontext.open(target)  # stays open: the replies may still be in the WAL only
    name = "x'); DROP TABLE records;-- 🦀"
    ctx = s.get_or_create_context(name)
    expected = []
    for i in range(20):
        s.add_record(ctx.id, P(f"q{i}"))
        s.commit_reply(ctx.id, [R(f"a{i} ✓", streamed=True)], usage=Usage.of(1, 1))
        expected += [["PROMPT", f"q{i}", False], ["MODEL_RESP", f"a{i} ✓", True]]
    out = subprocess.run(
        [sys.executable, "-c", READER, target, name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout) == expected
    s.close()


def test_this_process_sees_what_another_process_committed(target: str):
    writer = """
import sys, rxcontext
from rxcontext import RecordType
from rxcontext.store import RecordDraft
s = rxcontext.open(sys.argv[1])
ctx = s.get_or_create_context("shared")
s.commit_reply(ctx.id, [RecordDraft(RecordType.MODEL_RESP, "from the child")])
s.close()
"""
    with rxcontext.open(target) as s:
        ctx = s.get_or_create_context("shared")
        subprocess.run([sys.executable, "-c", writer, target], check=True, timeout=60)
        assert contents(s, ctx.id) == ["from the child"]


def test_threads_adding_to_one_store_lose_nothing(any_store: SQLiteStore):
    ctx = any_store.get_or_create_context("threads")
    workers, per_worker = 8, 50
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_worker):
                if i % 2:
                    any_store.add_record(ctx.id, P(f"{n}:{i}"))
                else:
                    any_store.commit_reply(ctx.id, [R(f"{n}:{i}")], usage=Usage(1, 1, 2))
                any_store.records(ctx.id, live_only=True)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = contents(any_store, ctx.id)
    assert sorted(got) == sorted(f"{n}:{i}" for n in range(workers) for i in range(per_worker))
    for n in range(workers):  # each thread's own records stay in its order
        mine = [c for c in got if c.split(":")[0] == str(n)]
        assert mine == [f"{n}:{i}" for i in range(per_worker)]
    assert any_store.context_stats(ctx.id).usage == Usage(200, 200, 400)


def test_a_claim_of_a_process_that_exited_can_be_taken_over(target: str):
    path = target
    store = rxcontext.open(path)
    ctx = store.get_or_create_context("c")
    cp = cut(store, ctx.id)
    code = (
        "import os, sys, rxcontext; from rxcontext.store.owner import worker_id;"
        "s = rxcontext.open(sys.argv[1]);"
        "print(s.claim_checkpoint(int(sys.argv[2]), owner=worker_id()).state.value)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(cp.id)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "resuming"
    # The claimer has exited: its reply reads as interrupted, and can be claimed again.
    assert store.checkpoints(ctx.id)[0].state is ReplyState.INTERRUPTED
    assert store.claim_checkpoint(cp.id, owner=worker_id()).epoch == 3
    store.close()


# -- a reply's reasoning, stored once ------------------------------------------------------


def test_a_replys_reasoning_is_stored_once_and_read_back_as_given(store: Any):
    # A thinking block's text is stored as a span of the reply's thinking (store/_thinking.py):
    # the stored metadata holds the reasoning once, the record's metadata is as written
    # (the same blocks, keys and order), and a block whose text is not in it keeps its text.
    from stores import scalar

    thinking = "step one. " * 500 + "step two. " * 500
    blocks = [
        {"type": "thinking", "thinking": thinking[:5000], "signature": "a"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"signature": "b", "thinking": thinking[5000:], "type": "thinking"},
        {"type": "thinking", "thinking": "said elsewhere", "signature": "c"},
        {"type": "thinking", "thinking": "", "signature": "d"},
    ]
    meta = {"thinking": thinking, "thinking_blocks": blocks, "finish_reason": "stop"}
    ctx = store.get_or_create_context("reasoning")
    (rec,) = store.commit_reply(ctx.id, [R("answer", metadata=meta)])
    for got in (rec.metadata, store.records(ctx.id)[-1].metadata):
        assert got == meta
        assert [list(b) for b in got["thinking_blocks"]] == [list(b) for b in blocks]
    raw = scalar(store, f"SELECT metadata FROM records WHERE id = {rec.id}")
    assert raw.count("step one. ") == 500 and raw.count("step two. ") == 500  # not 1,000
    assert "said elsewhere" in raw
    # An export (and so a copy) shows the blocks whole.
    dumped = json.dumps(store.export_context(ctx.id))
    assert dumped.count("step two. ") == 1000


def test_thinking_blocks_after_an_emoji_cut_between_deltas_read_back_with_their_text(store: Any):
    # A provider may cut an escaped emoji between two deltas: the reasoning then holds the
    # pair's two halves, which the stored text joins into one character. A block's span
    # must count the stored characters, else it points past the text (the block read back
    # without its text) or at the wrong characters.
    cut = "a\ud83d\ude00b"
    meta = {
        "thinking": cut + "cd",
        "thinking_blocks": [
            {"type": "thinking", "thinking": cut, "signature": "s1"},
            {"type": "thinking", "thinking": "cd", "signature": "s2"},
        ],
    }
    whole = {
        "thinking": cut,
        "thinking_blocks": [{"type": "thinking", "thinking": cut, "signature": "s"}],
    }
    ctx = store.get_or_create_context("cut-emoji")
    for given_meta, texts in ((meta, ["a\U0001f600b", "cd"]), (whole, ["a\U0001f600b"])):
        (rec,) = store.commit_reply(ctx.id, [R("answer", metadata=given_meta)])
        for got in (rec.metadata, store.records(ctx.id)[-1].metadata):
            assert [b.get("thinking") for b in got["thinking_blocks"]] == texts
            assert got["thinking"] == "a\U0001f600b" + ("cd" if given_meta is meta else "")


@given(st.text(max_size=30), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30))))
def test_stored_thinking_spans_round_trip_any_blocks(thinking: str, cuts: list[tuple[int, int]]):
    blocks = [
        {"type": "thinking", "thinking": thinking[min(a, b) : max(a, b)], "signature": "s"}
        for a, b in cuts
    ]
    meta = {"thinking": thinking, "thinking_blocks": blocks}
    packed = pack(meta)
    assert meta == {"thinking": thinking, "thinking_blocks": blocks}  # not changed
    assert unpack(json.loads(json.dumps(packed))) == meta


@given(
    st.datetimes(
        timezones=st.one_of(
            st.none(),
            st.just(UTC),
            st.builds(
                lambda minutes: timezone(timedelta(minutes=minutes)),
                st.integers(min_value=-23 * 60, max_value=23 * 60),
            ),
        ),
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 30),
    )
)
def test_a_stored_time_is_written_as_isoformat_writes_it_in_utc(when: datetime):
    # The store formats its times itself (every reply's begin writes two), as this did.
    from rxcontext.store import _sqlite_rows as sqlrows

    aware = when.replace(tzinfo=UTC) if when.tzinfo is None else when
    assert sqlrows.stamp(when) == aware.astimezone(UTC).isoformat(timespec="microseconds")
