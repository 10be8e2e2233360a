"""PostgreSQL-only store behaviour: opening, migrations, connections, exactly-once commits,
positions under concurrency, and the text codec (round-trips proved against the server,
and against SQLite: the same operations give the same records and exports).

The shared conformance suite is tests/test_store.py; destructive fault tests against a
private server are in tests/test_pg_faults.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pgtest
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rxcontext
from rxcontext import (
    NotADatabaseError,
    RecordType,
    ReplyState,
    RxContextError,
    SchemaTooNew,
    SQLiteStore,
    StoreError,
    Usage,
)
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket, Store
from rxcontext.store.owner import worker_id
from rxcontext.store.pg_codec import ESC, dec, enc

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
from faultproxy import FaultProxy  # noqa: E402
from pgtrace import traced  # noqa: E402

from rxcontext.store import pg_migrations  # noqa: E402
from rxcontext.store.pg_migrations import MIGRATIONS, MIGRATIONS_TABLE  # noqa: E402
from rxcontext.store.pg_writes import BATCH, CheckpointWrite, batch_params  # noqa: E402
from rxcontext.store.postgres import PostgresStore  # noqa: E402


def P(content: str, **kw: Any) -> RecordDraft:
    return RecordDraft(RecordType.PROMPT, content, **kw)


def R(content: str, **kw: Any) -> RecordDraft:
    return RecordDraft(RecordType.MODEL_RESP, content, **kw)


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:
    s = rxcontext.open(pg_url)
    assert isinstance(s, PostgresStore)
    yield s
    s.close()


def begin(store: Store, context_id: str, reply_id: str) -> ReplyTicket:
    cp = store.begin_reply(context_id, reply_id, owner=worker_id())
    return ReplyTicket(cp.id, cp.epoch)


_rids = iter(range(10**9))


def interrupted(store: Store, context_id: str, text: str, **kw: Any) -> ReplyTicket:
    """A reply begun and interrupted with ``text`` delivered."""
    ticket = begin(store, context_id, f"cut-{next(_rids)}")
    assert store.save_checkpoint(ticket, CheckpointDraft(text, **kw), state=ReplyState.INTERRUPTED)
    return ticket


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


# -- Opening ----------------------------------------------------------------------------------


def test_sqlite_never_imports_the_postgres_driver(tmp_path):
    code = (
        "import sys, rxcontext\n"
        "s = rxcontext.open(sys.argv[1]); s.get_or_create_context('x'); s.close()\n"
        "rxcontext.open(':memory:').close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a.db")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


def test_a_missing_extra_is_named_in_the_error():
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if the extra were not installed\n"
        "import rxcontext\n"
        "try:\n"
        "    rxcontext.open('postgresql://u@localhost/db')\n"
        "except rxcontext.StoreError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'rxcontext[postgres]'" in out.stdout


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_open_dispatches_by_scheme(pg_url: str, scheme: str):
    url = scheme + pg_url[len("postgresql") :]
    with rxcontext.open(url) as s:
        assert isinstance(s, PostgresStore)
        assert s.get_or_create_context("x").name == "x"


def test_unknown_database_and_bad_server_are_clear_and_never_show_the_password(
    pg_server: pgtest.PgServer,
):
    missing = pgtest.url_for(pg_server.admin_url, "rxct_no_such_database")
    with pytest.raises(StoreError, match=r"cannot connect to .*does not exist"):
        rxcontext.open(missing)
    with pytest.raises(
        StoreError, match=r"cannot connect to postgresql://u@127\.0\.0\.1:1/x"
    ) as info:
        rxcontext.open("postgresql://u:s3cret@127.0.0.1:1/x", retry_budget=0.2)
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(info.value.__cause__)


@pytest.mark.parametrize("password", ["hunter2 s3cret", "hunter2%zzs3cret"])
def test_a_url_libpq_cannot_parse_never_shows_its_password(password: str):
    """libpq's own message for a URL it cannot parse quotes the part it failed on, which is
    the password when one is not percent-encoded: the error says what to fix, without it,
    and chains nothing that holds it."""
    with pytest.raises(StoreError, match="percent-encode") as info:
        rxcontext.open(f"postgresql://u:{password}@127.0.0.1:1/x", retry_budget=0.2)
    shown = "".join(traceback.format_exception(info.value))
    assert "hunter2" not in shown and "s3cret" not in shown


def test_repr_hides_the_password_and_close_is_idempotent(pg_url: str):
    s = PostgresStore(pg_url.replace("postgres@", "postgres:pw@"))
    assert "pw" not in repr(s) and s.path == s.url and not s.closed
    s.close()
    s.close()
    assert s.closed and "closed" in repr(s)


def through(proxy: FaultProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    host_part = url.split("@", 1)[1].split("/", 1)[0]
    return url.replace(host_part, f"127.0.0.1:{proxy.port}")


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    p = FaultProxy(("127.0.0.1", 5432))
    yield p
    p.close()


@pytest.fixture
def empty_pg_url(pg_server: pgtest.PgServer) -> Iterator[str]:
    """A database of this test's own with no schema at all (not from the template)."""
    name = f"{pgtest.PREFIX}{__import__('os').getpid()}_bare_{next(_rids)}"
    pg_server.admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pgtest.url_for(pg_server.admin_url, name)
    finally:
        pg_server.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("at", "cut"),
    [
        (b"rxcontext_migrations", "before"),  # the schema check, never received
        (b"rxcontext_migrations", "after"),  # the schema check, its answer lost
        (b"SHOW synchronous_commit", "before"),  # the settings read
    ],
)
def test_a_connection_lost_right_after_connecting_is_retried_within_the_budget(
    pg_url: str, proxy: FaultProxy, at: bytes, cut: Any
):
    """A worker starting during a failover or restart: its first connection is lost at its
    first queries. Opening is retried as a store call is, within ``retry_budget``."""
    proxy.arm(2, cut, on=(at,))  # twice: the retry's first connection is lost too
    with PostgresStore(through(proxy, pg_url), retry_budget=10) as store:
        assert proxy.cut_done == 2
        assert store.get_or_create_context("c").name == "c"


def test_a_connection_lost_while_opening_until_the_budget_ends_is_a_clear_store_error(
    pg_url: str, proxy: FaultProxy
):
    proxy.arm(10**6, "before", on=(b"rxcontext_migrations",))
    url = through(proxy, pg_url).replace("postgres@", "postgres:s3cret@")
    with pytest.raises(
        StoreError, match=r"cannot prepare postgresql://postgres@127\.0\.0\.1:"
    ) as info:
        PostgresStore(url, retry_budget=0.5)
    assert proxy.cut_done >= 1 and "s3cret" not in str(info.value)


def test_an_error_that_retrying_cannot_mend_fails_the_opening_at_once(
    empty_pg_url: str, proxy: FaultProxy
):
    """Not a lost connection: the schema check finds something no retry will change."""
    query(empty_pg_url, f"CREATE TABLE {MIGRATIONS_TABLE} (other text)")
    url = through(proxy, empty_pg_url)
    with pytest.raises(StoreError, match=r'cannot prepare .*column "name" does not exist'):
        PostgresStore(url, retry_budget=10)
    query(empty_pg_url, f"DROP TABLE {MIGRATIONS_TABLE}")
    query(empty_pg_url, f"CREATE TABLE {MIGRATIONS_TABLE} (name text)")
    query(empty_pg_url, f"INSERT INTO {MIGRATIONS_TABLE} VALUES ('m999_from_the_future')")
    with pytest.raises(SchemaTooNew):
        PostgresStore(url, retry_budget=10)
    assert proxy.accepted == 2  # one connection each: neither was tried again


# -- Migrations -------------------------------------------------------------------------------


def test_every_step_is_recorded_once_and_reopen_applies_nothing(pg_url: str):
    names = [r[0] for r in query(pg_url, f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY name")]
    assert names == sorted(n for n, _ in MIGRATIONS)
    tables = {
        r[0] for r in query(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"contexts", "records", "context_tools", "checkpoints", "checkpoint_parts"} <= tables
    assert {"commits", MIGRATIONS_TABLE} <= tables
    for _ in range(2):
        PostgresStore(pg_url).close()
    assert len(query(pg_url, f"SELECT name FROM {MIGRATIONS_TABLE}")) == len(MIGRATIONS)


def test_a_database_from_a_newer_rxcontext_is_refused_untouched(pg_url: str):
    query(pg_url, f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES ('m999_from_the_future')")
    before = query(pg_url, "SELECT tablename FROM pg_tables ORDER BY 1")
    with pytest.raises(SchemaTooNew, match=r"newer rxcontext.*m999_from_the_future.*upgrade"):
        rxcontext.open(pg_url)
    assert query(pg_url, "SELECT tablename FROM pg_tables ORDER BY 1") == before


def _public(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The tables of ``url``'s public schema, and the rows of its own ``contexts``."""
    return (
        query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"),
        query(url, "SELECT * FROM contexts ORDER BY 1"),
    )


@pytest.mark.parametrize("left_over", [False, True])
def test_another_applications_database_is_refused_and_left_as_it_was(
    empty_pg_url: str, left_over: bool
):
    """Its ``contexts`` table is not ours: the refusal left an empty rxcontext_migrations
    table behind (created in a transaction of its own, before the first step found the
    name taken), and said only 'relation "contexts" already exists'. ``left_over``: a
    database an older rxcontext left so is refused the same, and kept as it is."""
    query(empty_pg_url, "CREATE TABLE contexts (id int PRIMARY KEY, title text)")
    query(empty_pg_url, "INSERT INTO contexts VALUES (1, 'their data')")
    if left_over:
        query(empty_pg_url, f"CREATE TABLE {MIGRATIONS_TABLE} (name text PRIMARY KEY)")
    before = _public(empty_pg_url)
    with pytest.raises(NotADatabaseError, match=r"another application.*left unchanged") as info:
        rxcontext.open(empty_pg_url)
    assert 'relation "contexts" already exists' in str(info.value)
    assert _public(empty_pg_url) == before


def test_a_database_with_other_tables_whose_names_differ_is_shared(empty_pg_url: str):
    """Tables of another application whose names are not ours are no reason to refuse (a
    database shared by several applications): they are left alone, as before."""
    query(empty_pg_url, "CREATE TABLE invoices (id int PRIMARY KEY, total numeric)")
    query(empty_pg_url, "INSERT INTO invoices VALUES (1, 9.5)")
    with rxcontext.open(empty_pg_url) as s:
        s.get_or_create_context("c")
    assert query(empty_pg_url, "SELECT id, total::text FROM invoices") == [(1, "9.5")]
    assert len(query(empty_pg_url, f"SELECT name FROM {MIGRATIONS_TABLE}")) == len(MIGRATIONS)


def test_a_database_from_before_the_cache_write_totals_keeps_its_totals(empty_pg_url: str):
    """An upgrade adds the cache-write and web-search totals at 0 (they count from then on:
    a context's totals cannot be rebuilt exactly from its records, see the step) and
    leaves every existing total exactly as it was."""
    names = [name for name, _ in MIGRATIONS]
    _migrated_up_to(empty_pg_url, "m006_cut_text")
    query(
        empty_pg_url,
        "INSERT INTO contexts (id, name, input_tokens, output_tokens, total_tokens,"
        " cached_tokens, reasoning_tokens) VALUES ('c1', 'old', 2000, 50, 2050, 7, 9)",
    )
    with rxcontext.open(empty_pg_url) as s:
        assert s.context_stats("c1").usage == Usage(2000, 50, 2050, 7, 9)
        more = Usage(100, 5, 105, cache_write_tokens=80, web_search_requests=1)
        s.commit_reply("c1", [R("hi")], usage=more)
        assert s.context_stats("c1").usage == Usage(2000, 50, 2050, 7, 9) + more
    applied = query(empty_pg_url, f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY applied_at")
    assert [r[0] for r in applied] == names


def test_a_migration_whose_commit_was_cut_off_is_applied_once_by_the_retry(
    empty_pg_url: str, proxy: FaultProxy
):
    """Every schema transaction's COMMIT (each step's; the first one's makes the migrations
    table too) reaches the server, which commits, and its answer is lost: each retry of the
    opening finds what the last one committed and goes on from there."""
    proxy.arm(len(MIGRATIONS), "after")
    with PostgresStore(through(proxy, empty_pg_url), retry_budget=10) as store:
        assert proxy.cut_done == len(MIGRATIONS)
        assert store.get_or_create_context("c").name == "c"
    rows = query(empty_pg_url, f"SELECT name, COUNT(*) FROM {MIGRATIONS_TABLE} GROUP BY name")
    assert sorted(rows) == sorted((n, 1) for n, _ in MIGRATIONS)


def _migrated_up_to(url: str, last: str) -> None:
    """Make ``url``'s empty database what an older rxcontext left: the steps up to ``last``."""
    names = [name for name, _ in MIGRATIONS]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {MIGRATIONS_TABLE} (name text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        for name, step in MIGRATIONS[: names.index(last) + 1]:
            with conn.transaction():
                step(conn)
                conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (%s)", (name,))


def _opening(url: str, out: dict[str, Any], **options: Any) -> threading.Thread:
    def run() -> None:
        try:
            rxcontext.open(url, **options).close()
            out["opened"] = True
        except BaseException as exc:  # the test looks at it
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _waiting_statement(conn: Any, like: str, alive: threading.Thread, not_at: Any = None) -> Any:
    """The start time of a statement of this database (``like`` its text) waiting for a
    lock, once one other than ``not_at`` is seen (``alive`` still runs)."""
    deadline = time.monotonic() + 60
    while True:
        row = conn.execute(
            "SELECT query_start FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s AND query_start IS DISTINCT FROM %s",
            (like, not_at),
        ).fetchone()
        if row is not None:
            return row[0]
        assert time.monotonic() < deadline and alive.is_alive(), "no such lock wait"
        threading.Event().wait(0.01)


def test_an_upgrade_that_a_reader_blocks_gives_up_with_a_clear_error_and_stalls_no_one(
    empty_pg_url: str,
):
    """An older database opened while another session (pg_dump, a psql left idle in its
    transaction, an old worker's report) holds a transaction that read ``checkpoints``: the
    step altering that table waits a bounded time per try, between tries the other readers
    of the table go on, and once ``retry_budget`` is spent opening fails with StoreBusy
    naming the table and the session; the database is left as it was."""
    _migrated_up_to(empty_pg_url, "m003_attachments")
    out: dict[str, Any] = {}
    read: dict[str, Any] = {}
    with (
        psycopg.connect(empty_pg_url, autocommit=True) as admin,
        psycopg.connect(empty_pg_url, application_name="long report") as holder,
    ):
        holder.execute("SELECT count(*) FROM checkpoints").fetchone()  # idle in transaction
        holder_pid = holder.info.backend_pid
        opener = _opening(empty_pg_url, out, retry_budget=1)
        _waiting_statement(admin, "ALTER TABLE checkpoints%", opener)
        reader = threading.Thread(
            target=lambda: read.setdefault(
                "n", query(empty_pg_url, "SELECT count(*) FROM checkpoints")
            ),
            daemon=True,
        )
        reader.start()
        reader.join(60)
        opener.join(60)
        stalled = reader.is_alive() or opener.is_alive()
        holder.rollback()
        reader.join(60)
        opener.join(60)
    assert not stalled, "a reader or the opening waited as long as the holder held"
    assert read["n"] == [(0,)]
    error = out["error"]
    assert isinstance(error, rxcontext.StoreBusy), repr(error)
    message = str(error)
    assert "checkpoints" in message and f"pid {holder_pid}" in message, message
    assert "long report" in message and "idle in transaction" in message, message
    assert "m004_stop_requests" in message and "nothing was changed" in message, message
    applied = query(empty_pg_url, f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY name")
    assert [r[0] for r in applied] == [n for n, _ in MIGRATIONS[:3]]


def test_an_upgrade_goes_on_once_the_session_blocking_it_ends(empty_pg_url: str):
    """The same wait, within the budget: the step is tried again, the table's other readers
    go on meanwhile, and it is applied once the holder's transaction ends."""
    _migrated_up_to(empty_pg_url, "m005_thinking_spans")
    out: dict[str, Any] = {}
    read: dict[str, Any] = {}
    with (
        psycopg.connect(empty_pg_url, autocommit=True) as admin,
        psycopg.connect(empty_pg_url) as holder,
    ):
        holder.execute("SELECT count(*) FROM checkpoints").fetchone()
        opener = _opening(empty_pg_url, out, retry_budget=300)
        first = _waiting_statement(admin, "ALTER TABLE checkpoints%", opener)
        reader = threading.Thread(
            target=lambda: read.setdefault(
                "n", query(empty_pg_url, "SELECT count(*) FROM checkpoints")
            ),
            daemon=True,
        )
        reader.start()
        reader.join(60)
        _waiting_statement(admin, "ALTER TABLE checkpoints%", opener, not_at=first)  # a retry
        holder.commit()
        opener.join(60)
    assert read == {"n": [(0,)]}, "the reader waited as long as the holder held"
    assert not opener.is_alive() and out == {"opened": True}, out
    applied = query(empty_pg_url, f"SELECT name, COUNT(*) FROM {MIGRATIONS_TABLE} GROUP BY name")
    assert sorted(applied) == sorted((n, 1) for n, _ in MIGRATIONS)


def test_an_upgrade_gives_up_on_a_schema_lock_held_by_a_stuck_migrator(empty_pg_url: str):
    """Another process holding the schema lock (an older rxcontext stuck in its own step
    waiting for a table): opening waits for it within the budget, then says so."""
    _migrated_up_to(empty_pg_url, "m007_inherited_records")
    out: dict[str, Any] = {}
    with psycopg.connect(empty_pg_url) as stuck:
        stuck.execute("SELECT pg_advisory_xact_lock(%s)", (pg_migrations._LOCK_KEY,))
        stuck_pid = stuck.info.backend_pid
        opener = _opening(empty_pg_url, out, retry_budget=1)
        opener.join(60)
        stalled = opener.is_alive()
        stuck.rollback()
        opener.join(60)
    assert not stalled, "the opening waited as long as the schema lock was held"
    error = out["error"]
    assert isinstance(error, rxcontext.StoreBusy), repr(error)
    message = str(error)
    assert "schema lock" in message and f"pid {stuck_pid}" in message, message
    assert "m008_cache_write_and_search_totals" in message, message


MIGRATE = """
import sys, rxcontext
from rxcontext.store.pg_migrations import migrate
import psycopg
sys.stdin.readline()  # start together
s = rxcontext.open(sys.argv[1]); s.get_or_create_context("x"); s.close()
print("ok")
"""


def test_processes_migrating_one_empty_database_at_once_apply_each_step_once(
    pg_server: pgtest.PgServer,
):
    name = f"{pgtest.PREFIX}{__import__('os').getpid()}_empty"
    pg_server.admin.execute(f'CREATE DATABASE "{name}"')  # empty: not from the template
    url = pgtest.url_for(pg_server.admin_url, name)
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", MIGRATE, url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
        assert [o[0].strip() for o in outs] == ["ok"] * 4, [o[1][-500:] for o in outs]
        rows = query(url, f"SELECT name, COUNT(*) FROM {MIGRATIONS_TABLE} GROUP BY name")
        assert sorted(rows) == sorted((n, 1) for n, _ in MIGRATIONS)
        assert query(url, "SELECT name FROM contexts") == [("x",)]
    finally:
        pg_server.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Connections --------------------------------------------------------------------------------


def test_connections_are_pgbouncer_safe_autocommit_read_committed(pg: PostgresStore, pg_url: str):
    ctx = pg.get_or_create_context("c")
    pg.commit_reply(ctx.id, [R("a")], commit_id="k")
    ticket = begin(pg, ctx.id, "r")
    assert pg.save_checkpoints([(ticket, CheckpointDraft("p"))]) == [True]  # SET LOCAL only
    pg.renew_leases(worker_id())
    pg.save_checkpoint(ticket, CheckpointDraft("q"), state=ReplyState.INTERRUPTED)
    pg.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())
    with pg._runner.pool().connection() as conn:
        assert conn.autocommit and conn.prepare_threshold is None
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
        # Nothing session-level is left behind: no advisory locks, no LISTEN, no prepared
        # statements, no changed settings.
        assert conn.execute("SELECT COUNT(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SELECT pg_listening_channels()").fetchall() == []
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
    # This test's database only: other tests (other databases, xdist workers) take
    # advisory locks of their own on the same server meanwhile.
    locks = query(
        pg_url,
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert locks == [(0,)]


# -- Exactly-once commits -------------------------------------------------------------------


def test_a_commit_id_stores_a_reply_once(pg: PostgresStore, pg_url: str):
    ctx = pg.get_or_create_context("c")
    pg.add_record(ctx.id, P("q"))
    first = pg.commit_reply(ctx.id, [R("a"), R("b")], usage=Usage.of(2, 3), commit_id="reply-1")
    again = pg.commit_reply(ctx.id, [R("a"), R("b")], usage=Usage.of(2, 3), commit_id="reply-1")
    assert again == first
    assert [r.content for r in pg.records(ctx.id)] == ["q", "a", "b"]
    assert pg.context_stats(ctx.id).usage == Usage.of(2, 3)
    assert query(pg_url, "SELECT pos FROM records ORDER BY pos") == [(0,), (1,), (1,)]
    assert query(pg_url, "SELECT next_pos FROM contexts") == [(2,)]
    assert query(pg_url, "SELECT COUNT(*) FROM commits WHERE commit_id = 'reply-1'") == [(1,)]


@pytest.fixture
def proxied(pg_url: str, proxy: FaultProxy) -> Iterator[tuple[PostgresStore, FaultProxy]]:
    store = PostgresStore(through(proxy, pg_url), retry_budget=10)
    yield store, proxy
    store.close()


@pytest.mark.parametrize("cut", ["after", "before"])
def test_a_commit_cut_off_during_commit_is_stored_exactly_once(
    proxied: tuple[PostgresStore, FaultProxy], pg_url: str, cut: Any
):
    store, proxy = proxied
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    ticket = begin(store, ctx.id, "r")
    assert store.save_checkpoint(ticket, CheckpointDraft("partial"))
    proxy.arm(1, cut)  # the next COMMIT: forwarded but unanswered, or dropped
    out = store.commit_reply(
        ctx.id, [R("answer"), R("more")], usage=Usage.of(5, 6), reply=ticket, end="reply"
    )
    assert proxy.cut_done == 1
    assert [(r.content, r.pos, r.reply_id) for r in out] == [("answer", 1, "r"), ("more", 1, "r")]
    assert store.records(ctx.id)[1:] == out
    assert store.context_stats(ctx.id).usage == Usage.of(5, 6)
    assert store.find_reply("r") is None and store.checkpoints(ctx.id) == []
    assert query(pg_url, "SELECT pos FROM records ORDER BY pos") == [(0,), (1,), (1,)]
    assert query(pg_url, "SELECT next_pos FROM contexts") == [(2,)]


WRITES = [
    "add_record",
    "replace_system_prompt",
    "replace_records",
    "clone",
    "begin",
    "checkpoint",
    "interrupt",
    "claim",
    "discard",
    "keep",
]


@pytest.mark.parametrize("write", WRITES)
def test_every_write_cut_off_during_commit_lands_once(
    proxied: tuple[PostgresStore, FaultProxy], pg_url: str, write: str
):
    store, proxy = proxied
    ctx = store.get_or_create_context("c")
    a = store.add_record(ctx.id, P("a"))
    live = begin(store, ctx.id, "live")
    assert store.save_checkpoint(live, CheckpointDraft("li"))
    cut = interrupted(store, ctx.id, "cut")
    proxy.arm(1, "after")
    if write == "add_record":
        assert store.add_record(ctx.id, P("b")).content == "b"
    elif write == "replace_system_prompt":
        assert store.replace_system_prompt(ctx.id, "sys").content == "sys"
    elif write == "replace_records":
        assert store.replace_records(ctx.id, [a.id], R("sum")).content == "sum"
    elif write == "clone":
        assert store.clone_context(ctx.id, "copy").name == "copy"
        assert [r.content for r in store.records(store.get_context_by_name("copy").id)] == ["a"]
    elif write == "begin":
        assert store.begin_reply(ctx.id, "new", owner=worker_id()).pos == 3
        assert query(pg_url, "SELECT next_pos FROM contexts WHERE id = %s", (ctx.id,)) == [(4,)]
    elif write == "checkpoint":
        assert store.save_checkpoint(live, CheckpointDraft("ve"))
        assert store.get_checkpoint(live.checkpoint_id).text == "live"
    elif write == "interrupt":
        assert store.save_checkpoint(live, CheckpointDraft("ve"), state=ReplyState.INTERRUPTED)
        got = store.get_checkpoint(live.checkpoint_id)
        assert (got.text, got.state) == ("live", ReplyState.INTERRUPTED)
    elif write == "claim":
        claimed = store.claim_checkpoint(cut.checkpoint_id, owner=worker_id())
        assert (claimed.state, claimed.epoch) == (ReplyState.RESUMING, 2)
    elif write == "discard":
        assert store.discard_checkpoint(cut.checkpoint_id).state is ReplyState.DISCARDED
    else:
        (kept,) = store.keep_checkpoint(cut.checkpoint_id)
        assert (kept.content, kept.pos) == ("cut", 2)
    assert proxy.cut_done == 1
    counts = dict(query(pg_url, "SELECT context_id, COUNT(*) FROM records GROUP BY 1"))
    expected = {
        "add_record": 2,
        "replace_system_prompt": 2,
        "replace_records": 2,
        "discard": 2,  # a dead record of what the discarded reply was billed for
        "keep": 2,
    }
    assert counts[ctx.id] == expected.get(write, 1)
    epochs = query(pg_url, "SELECT reply_id, epoch FROM checkpoints ORDER BY id")
    moved = write in ("claim", "discard", "keep")
    assert [e for _, e in epochs[:2]] == [1, 2 if moved else 1]


@pytest.mark.parametrize("among", ["live", "all"])
def test_live_flags_set_by_index_land_once_when_the_commit_is_cut_off(
    proxied: tuple[PostgresStore, FaultProxy], among: str
):
    """set_live_range picks records by index among the live ones: a retry after a COMMIT
    whose answer was lost must find its own write, not apply the indexes again to the
    shortened list (killing the next records in line)."""
    store, proxy = proxied
    ctx = store.get_or_create_context("c")
    for text in ["p0", "p1", "p2", "p3", "p4", "p5"]:
        store.add_record(ctx.id, P(text))
    proxy.arm(1, "after")
    assert store.set_live_range(ctx.id, 0, 1, False, live_only=among == "live") == 2
    assert proxy.cut_done == 1
    live = [r.content for r in store.records(ctx.id) if r.live]
    assert live == ["p2", "p3", "p4", "p5"]
    assert store.live_tokens(ctx.id) == sum(r.est_tokens for r in store.records(ctx.id) if r.live)


def test_an_import_of_usage_alone_lands_once_when_the_commit_is_cut_off(
    proxied: tuple[PostgresStore, FaultProxy],
):
    """An import with no records but usage totals (a context whose only reply was cut and
    discarded) has no record for its retry to find: it keeps a commit id of its own."""
    store, proxy = proxied
    ctx = store.get_or_create_context("c")
    proxy.arm(1, "after")
    assert store.import_records(ctx.id, [], usage=Usage.of(10, 20)) == []
    assert proxy.cut_done == 1
    usage = store.context_stats(ctx.id).usage
    assert (usage.input_tokens, usage.output_tokens) == (10, 20)


def test_a_context_created_when_the_commit_is_cut_off_is_ours(
    proxied: tuple[PostgresStore, FaultProxy],
):
    """create_context's retry after a lost COMMIT finds its own row, not a name in use."""
    store, proxy = proxied
    proxy.arm(1, "after")
    made = store.create_context("mine")
    assert proxy.cut_done == 1 and made.name == "mine"
    assert [c.id for c in store.list_contexts()] == [made.id]


# -- Periodic writes and leases ---------------------------------------------------------------


def test_a_periodic_write_gives_up_at_once_when_its_reply_is_locked(pg: PostgresStore, pg_url: str):
    ctx = pg.get_or_create_context("c")
    ticket = begin(pg, ctx.id, "r")
    assert pg.save_checkpoints([(ticket, CheckpointDraft("one "))]) == [True]
    answer: list[Any] = []
    with psycopg.connect(pg_url) as other:  # a claim elsewhere holds the reply's row
        other.execute("SELECT 1 FROM checkpoints WHERE id = %s FOR UPDATE", (ticket.checkpoint_id,))
        writer = threading.Thread(
            target=lambda: answer.append(pg.save_checkpoints([(ticket, CheckpointDraft("two"))]))
        )
        writer.start()
        writer.join(timeout=60)  # a bound, not a measurement: it would wait for the lock
        assert not writer.is_alive() and answer == [None]
        other.rollback()
    # Nothing was written; written again (as the persister does), it lands once.
    assert pg.get_checkpoint(ticket.checkpoint_id).text == "one "
    assert pg.save_checkpoints([(ticket, CheckpointDraft("two"))]) == [True]
    assert pg.get_checkpoint(ticket.checkpoint_id).text == "one two"


def test_a_periodic_write_neither_waits_for_nor_holds_its_context(pg: PostgresStore, pg_url: str):
    """The batch of a process's streaming replies took every one of their contexts' locks:
    it waited for whatever commit, begin or prompt was under way in any of them (giving up
    after ``lock_timeout``), and they waited for it, ~50 contexts at a time in the scale-out
    benchmark. Its fence is the reply's row; it locks nothing else."""
    ctx = pg.get_or_create_context("c")
    ticket = begin(pg, ctx.id, "r")
    with psycopg.connect(pg_url) as other:  # a commit elsewhere in the context, under way
        other.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", (ctx.id,))
        assert pg.save_checkpoints([(ticket, CheckpointDraft("one "))]) == [True]
        other.rollback()
    with psycopg.connect(pg_url) as other:  # the batch left no lock on the context
        other.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE NOWAIT", (ctx.id,))
        other.rollback()
    assert pg.get_checkpoint(ticket.checkpoint_id).text == "one "


def test_a_claim_reads_what_a_periodic_write_of_the_lost_owner_stored(
    pg: PostgresStore, pg_url: str
):
    """A periodic write takes no context lock, so a claim (which reads the text it hands to
    the resume) locks the reply's row before reading: an old owner's write under way then
    lands before the read, never between the read and the claim's compare-and-set."""
    ctx = pg.get_or_create_context("c")
    ticket = begin(pg, ctx.id, "r")
    assert pg.save_checkpoints([(ticket, CheckpointDraft("one "))]) == [True]
    # Its owner is gone (elsewhere, lease run out); it has not stopped writing yet.
    query(
        pg_url,
        "UPDATE checkpoints SET owner = 'elsewhere:1:1',"
        " lease_until = clock_timestamp() - interval '1 minute'",
    )
    claimed: list[Any] = []
    with psycopg.connect(pg_url) as zombie:  # its periodic write, under way
        write = CheckpointWrite(ticket, CheckpointDraft("two "), None)
        assert zombie.execute(BATCH, batch_params([write])).fetchall()
        claimer = threading.Thread(
            target=lambda: claimed.append(pg.claim_checkpoint(ticket.checkpoint_id, owner="me"))
        )
        claimer.start()
        deadline = time.monotonic() + 60
        while not zombie.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone():
            assert time.monotonic() < deadline and claimer.is_alive(), "the claim never waited"
            threading.Event().wait(0.01)
        zombie.commit()
    claimer.join(timeout=60)
    assert claimed and claimed[0].text == "one two "
    assert pg.get_checkpoint(ticket.checkpoint_id).text == "one two "
    assert pg.save_checkpoints([(ticket, CheckpointDraft("three"))]) == [False]  # fenced


def _lock_waiters(conn: Any, at_least: int, alive: threading.Thread) -> None:
    """Until ``at_least`` backends of this database wait for a lock (``alive`` still runs)."""
    deadline = time.monotonic() + 60
    while (
        conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).fetchone()[0]
        < at_least
    ):
        assert time.monotonic() < deadline and alive.is_alive(), "nobody waited for the lock"
        threading.Event().wait(0.01)


def test_a_clone_holds_a_reply_that_commits_while_it_waits(pg: PostgresStore, pg_url: str):
    """A clone decides which replies are still streaming after it locks the context: a
    reply whose commit goes first is copied whole, not left out as if still busy."""
    ctx = pg.get_or_create_context("src")
    pg.add_record(ctx.id, P("question"))
    ticket = begin(pg, ctx.id, "r")
    out: dict[str, Any] = {}
    with psycopg.connect(pg_url, autocommit=True) as admin, psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM contexts WHERE id = %s FOR UPDATE", (ctx.id,))
        committer = threading.Thread(
            target=lambda: pg.commit_reply(ctx.id, [R("the answer")], reply=ticket, end="reply")
        )
        committer.start()
        _lock_waiters(admin, 1, committer)  # the commit waits for the context
        cloner = threading.Thread(
            target=lambda: out.setdefault("clone", pg.clone_context(ctx.id, "copy"))
        )
        cloner.start()
        _lock_waiters(admin, 2, cloner)  # the clone too, behind it
        holder.rollback()
        committer.join(60)
        cloner.join(60)
    copy = out["clone"]
    assert [r.content for r in pg.records(copy.id)] == ["question", "the answer"]
    assert pg.live_tokens(copy.id) == pg.live_tokens(ctx.id)


def test_a_naive_timestamp_is_utc_on_both_stores_whatever_the_servers_zone(pg_url: str):
    """A record's naive timestamp is taken as UTC (as an import takes it), the same on both
    stores and the same returned as read back: not the server's zone when stored and the
    client's when returned."""
    name = pg_url.rpartition("/")[2].partition("?")[0]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET timezone = 'Asia/Tokyo'")
    naive = datetime.datetime(2001, 2, 3, 4, 5, 6)
    want = naive.replace(tzinfo=datetime.UTC)
    try:
        for target in (pg_url, ":memory:"):
            with rxcontext.open(target) as store:
                ctx = store.get_or_create_context("c")
                draft = RecordDraft(RecordType.PROMPT, "x", timestamp=naive)
                added = store.add_record(ctx.id, draft)
                (read,) = store.records(ctx.id)
                assert added.timestamp == read.timestamp == want, target
                assert read.timestamp.utcoffset() == datetime.timedelta(0)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} RESET timezone")


def test_the_hot_writes_are_two_round_trips_each(pg_url: str):
    """A prompt, a reply's begin, its commit, the periodic batch of many replies and their
    lease renewal each wait for the server twice (BEGIN and the statements whose answers
    the write needs; the rest with COMMIT), whatever the number of replies or records.
    They were 4, 5, 8, 6 and 4: under load every round trip also waits for the process's
    GIL, and the scale-out benchmark's commits spent most of their time in them."""
    store = PostgresStore(pg_url, pool_size=1)
    try:
        ctx = store.get_or_create_context("c")
        with traced(store) as prompt:
            store.add_record(ctx.id, P("q"))
        with traced(store) as begun:
            ticket = begin(store, ctx.id, "r")
        tickets = [ticket]
        for i in range(39):
            tickets.append(begin(store, store.get_or_create_context(f"c{i}").id, f"r{i}"))
        batch = [(t, CheckpointDraft(f"text {i}", chunks=1)) for i, t in enumerate(tickets)]
        with traced(store) as periodic:
            assert store.save_checkpoints(batch) == [True] * 40
        with traced(store) as renewal:
            assert store.renew_replies(tickets) == [True] * 40
        parts = "SELECT COUNT(*) FROM checkpoint_parts WHERE checkpoint_id = %s"
        assert query(pg_url, parts, (ticket.checkpoint_id,)) == [(1,)]  # the periodic write's
        with traced(store) as committed:
            out = store.commit_reply(
                ctx.id,
                [
                    R("calling", streamed=True),
                    RecordDraft(RecordType.TOOL_CALL, "{}", tool_call_id="c1", tool_name="f"),
                ],
                usage=Usage.of(5, 2),
                last_response_id="resp",
                reply=ticket,
                end="reply",
                commit_id="k",
            )
        for trace in (prompt, begun, periodic, renewal, committed):
            assert trace.round_trips == 2, trace
        # The reply's row goes with its parts by the foreign key's cascade: no statement
        # of its own for them (one statement less on every reply's commit).
        assert not [s for s in committed.statements if "checkpoint_parts" in s], committed
        assert query(pg_url, parts, (ticket.checkpoint_id,)) == [(0,)]
        assert len(periodic.statements) == 4, periodic  # BEGIN, its settings, one, COMMIT
        assert [r.content for r in out] == ["calling", "{}"]
        assert store.records(ctx.id)[1:] == out
        assert store.find_reply("r") is None
        assert store.get_checkpoint(tickets[7].checkpoint_id).text == "text 7"
    finally:
        store.close()


def _rows_scanned(url: str, sql: str, params: tuple[Any, ...]) -> int:
    """The most rows any scan of ``checkpoints`` returned in ``sql``'s plan (its loops
    included), run by ``EXPLAIN ANALYZE`` and rolled back."""
    with psycopg.connect(url) as conn:
        (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
        conn.rollback()
    most = 0
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if node.get("Relation Name") == "checkpoints":
            most = max(most, node["Actual Rows"] * node["Actual Loops"])
        nodes.extend(node.get("Plans", ()))
    return most


def test_a_workers_batch_and_renewal_read_its_own_live_replies_not_every_workers(pg_url: str):
    """Every worker writes its periodic batch once a second and renews its leases every few
    seconds. Found by their tickets alone, PostgreSQL read every live reply of the database
    to find them (the partial index of live replies holds every worker's; with statistics
    the batch became a scan of the whole table): a cluster's cost grew with the square of
    its size. A ticket names its owner, and both statements look the owner's rows up."""
    from rxcontext.store.pg_leases import renew_statement
    from rxcontext.store.pg_writes import batch_statement

    store = PostgresStore(pg_url)
    try:
        mine = []
        for i in range(10):
            cp = store.begin_reply(
                store.get_or_create_context(f"c{i}").id, f"r{i}", owner=worker_id()
            )
            mine.append(ReplyTicket(cp.id, cp.epoch, cp.owner))
        other = store.get_or_create_context("other")
        query(
            pg_url,
            "INSERT INTO checkpoints (context_id, reply_id, state, pos, owner, epoch,"
            " lease_until, created_at, updated_at) SELECT %s, 'o' || g, 'streaming', g,"
            " 'elsewhere:1:1', 1, now() + interval '1 hour', now(), now()"
            " FROM generate_series(1, 400) g",
            (other.id,),
        )
        for analyzed in (False, True):
            if analyzed:
                query(pg_url, "ANALYZE checkpoints")
            writes = [CheckpointWrite(t, CheckpointDraft("x"), None) for t in mine]
            assert _rows_scanned(pg_url, *batch_statement(writes)) == len(mine), analyzed
            assert _rows_scanned(pg_url, *renew_statement(mine, 5.0)) == len(mine), analyzed
        # The same writes land (and tickets that name no owner are still served).
        draft = CheckpointDraft("y")
        assert store.save_checkpoints([(t, draft) for t in mine]) == [True] * len(mine)
        assert store.renew_replies(mine) == [True] * len(mine)
        unnamed = [dataclasses.replace(t, owner=None) for t in mine]
        assert store.renew_replies(unnamed) == [True] * len(mine)
        assert store.get_checkpoint(mine[3].checkpoint_id).text == "y"
    finally:
        store.close()


def _hot_writes(store: PostgresStore, n: int) -> list[Any]:
    """The store's frequent writes and reads, ``n`` replies' worth, and what they gave."""
    out: list[Any] = []
    for i in range(n):
        ctx = store.get_or_create_context(f"c{i % 2}")
        out.append(store.add_record(ctx.id, P(f"q{i}")))
        ticket = begin(store, ctx.id, f"r{i}")
        out.append(store.save_checkpoints([(ticket, CheckpointDraft(f"t{i}", chunks=1))]))
        out.append(store.renew_replies([ticket]))
        out.append(store.get_checkpoint(ticket.checkpoint_id).text)
        out.append(
            store.commit_reply(
                ctx.id, [R(f"a{i}", streamed=True)], reply=ticket, end="reply", commit_id=f"k{i}"
            )
        )
        out.append(store.records(ctx.id, live_only=True))
    return out


def _plain(value: Any) -> Any:
    """What the writes gave, without the ids and times that differ between databases."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.asdict(value)
        return {
            k: _plain(v) for k, v in fields.items() if k not in ("id", "context_id", "timestamp")
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def test_prepared_statements_are_opt_in_and_give_the_same_results(pg_url: str):
    """``prepared_statements=True`` keeps the frequent statements prepared on the
    connection (psycopg prepares one on its fifth use), in the same two round trips, with
    the same results; by default nothing is prepared (PgBouncer transaction mode)."""
    prepared = PostgresStore(pg_url, pool_size=1, prepared_statements=True)
    try:
        got = _hot_writes(prepared, 8)
        ctx = prepared.get_or_create_context("c0")
        with traced(prepared) as trace:
            prepared.add_record(ctx.id, P("again"))
        assert trace.round_trips == 2, trace
        with prepared._runner.pool().connection() as conn:
            assert conn.prepare_threshold == 5
            names = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        assert len(names) >= 5, names  # the hot writes' statements, not one or two
    finally:
        prepared.close()
    query(pg_url, "DELETE FROM records")
    query(pg_url, "DELETE FROM checkpoints")
    query(pg_url, "DELETE FROM contexts")
    plain = PostgresStore(pg_url, pool_size=1)
    try:
        assert _plain(_hot_writes(plain, 8)) == _plain(got)
        with plain._runner.pool().connection() as conn:
            assert conn.execute("SELECT COUNT(*) FROM pg_prepared_statements").fetchone() == (0,)
    finally:
        plain.close()


@pytest.mark.parametrize("lost", ["a write lost in a crash", "an unsettled write that landed"])
def test_a_write_that_finds_the_text_wrong_writes_it_whole(pg: PostgresStore, pg_url: str, lost):
    ctx = pg.get_or_create_context("c")
    ticket = begin(pg, ctx.id, "r")
    for part in ("Hel", "lo, ", "wor"):
        assert pg.save_checkpoints([(ticket, CheckpointDraft(part, append_thinking="."))])
    if lost == "a write lost in a crash":  # acknowledged with synchronous_commit off, then gone
        query(pg_url, "DELETE FROM checkpoint_parts WHERE seq = 3")
        query(pg_url, "UPDATE checkpoints SET text_len = 7, thinking_len = 2, parts = 2")
    else:  # a COMMIT cut off: the store said None, the writer sends the text again
        query(
            pg_url,
            "INSERT INTO checkpoint_parts VALUES (%s, 4, 'ld', '.')",
            (ticket.checkpoint_id,),
        )
        query(pg_url, "UPDATE checkpoints SET text_len = 12, thinking_len = 4, parts = 4")
    assert pg.save_checkpoints([(ticket, CheckpointDraft("ld", append_thinking="."))]) == [True]
    got = pg.get_checkpoint(ticket.checkpoint_id)
    assert (got.text, got.thinking) == ("Hello, world", "....")
    assert pg.save_checkpoint(ticket, CheckpointDraft("!"), state=ReplyState.INTERRUPTED)
    got = pg.get_checkpoint(ticket.checkpoint_id)
    assert (got.text, got.thinking) == ("Hello, world!", "....")
    assert query(pg_url, "SELECT text_len, thinking_len FROM checkpoints") == [(13, 4)]


def test_a_periodic_write_whose_commit_was_cut_off_is_never_duplicated(
    proxied: tuple[PostgresStore, FaultProxy],
):
    store, proxy = proxied
    ctx = store.get_or_create_context("c")
    ticket = begin(store, ctx.id, "r")
    assert store.save_checkpoints([(ticket, CheckpointDraft("one "))]) == [True]
    proxy.arm(1, "after")  # the server commits; the answer never comes
    assert store.save_checkpoints([(ticket, CheckpointDraft("two "))]) is None
    assert proxy.cut_done == 1
    # The persister gives the text back: the next write carries it again, with what came since.
    assert store.save_checkpoints([(ticket, CheckpointDraft("two three"))]) == [True]
    assert store.get_checkpoint(ticket.checkpoint_id).text == "one two three"


def test_leases_are_timed_by_the_database_clock(pg: PostgresStore, pg_url: str):
    pg.lease_ttl = 60.0
    ctx = pg.get_or_create_context("c")
    ticket = begin(pg, ctx.id, "r")
    # The client's clock never enters: the lease is the server's time plus the ttl.
    left = query(
        pg_url, "SELECT EXTRACT(EPOCH FROM lease_until - clock_timestamp()) FROM checkpoints"
    )
    assert 0 < float(left[0][0]) <= 60
    query(pg_url, "UPDATE checkpoints SET lease_until = clock_timestamp() - interval '1 s'")
    pg.renew_leases(worker_id())
    left = query(
        pg_url, "SELECT EXTRACT(EPOCH FROM lease_until - clock_timestamp()) FROM checkpoints"
    )
    assert 0 < float(left[0][0]) <= 60
    store = rxcontext.open(pg_url)
    assert store.get_checkpoint(ticket.checkpoint_id).state is ReplyState.STREAMING
    store.close()


# -- Positions --------------------------------------------------------------------------------


def test_concurrent_writers_to_one_context_get_contiguous_positions_in_commit_order(
    pg_url: str,
):
    stores = [PostgresStore(pg_url, pool_size=1) for _ in range(4)]
    ctx = stores[0].get_or_create_context("hot")
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def work(n: int, store: PostgresStore) -> None:
        try:
            barrier.wait()
            for i in range(15):
                if i % 2:  # a plain commit takes the next position as it commits
                    store.commit_reply(ctx.id, [R(f"{n}:{i}:a"), R(f"{n}:{i}:b")])
                    continue
                # A reply takes its position when it begins and commits there later.
                ticket = begin(store, ctx.id, f"{n}:{i}")
                assert store.save_checkpoints([(ticket, CheckpointDraft("x"))]) in ([True], None)
                store.commit_reply(
                    ctx.id, [R(f"{n}:{i}:a"), R(f"{n}:{i}:b")], reply=ticket, end="reply"
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    rows = query(pg_url, "SELECT pos, id, content, reply_id FROM records ORDER BY pos, id")
    replies = len(stores) * 15
    assert [r[0] for r in rows] == [p for p in range(replies) for _ in "ab"]  # contiguous
    for i in range(0, len(rows), 2):  # each reply's two records share its place
        assert rows[i][2].endswith(":a") and rows[i + 1][2] == rows[i][2][:-1] + "b"
        assert rows[i][3] == rows[i + 1][3] == (rows[i][2][:-2] if rows[i][3] else None)
    plain = [r for r in rows if r[3] is None]
    assert [r[1] for r in plain] == sorted(r[1] for r in plain)  # commit order = position order
    assert query(pg_url, "SELECT COUNT(*) FROM checkpoints") == [(0,)]


def test_positions_follow_the_rules(pg: PostgresStore, pg_url: str):
    ctx = pg.get_or_create_context("p")
    ids = [pg.add_record(ctx.id, P(c)).id for c in "abcd"]
    pg.replace_system_prompt(ctx.id, "sys")
    summary = pg.replace_records(ctx.id, ids[1:3], R("sum"))
    clone = pg.clone_context(ctx.id, "copy")
    pos = dict(query(pg_url, "SELECT id, pos FROM records WHERE context_id = %s", (ctx.id,)))
    assert [pos[i] for i in ids] == [0, 1, 2, 3]
    assert pos[summary.id] == 1  # the earliest replaced record's place
    sys_pos = query(
        pg_url, "SELECT pos FROM records WHERE source = 4 AND context_id = %s", (ctx.id,)
    )
    assert sys_pos == [(-1,)]  # before everything
    copied = query(
        pg_url,
        "SELECT pos, content FROM records WHERE context_id = %s ORDER BY pos, id",
        (clone.id,),
    )
    original = query(
        pg_url, "SELECT pos, content FROM records WHERE context_id = %s ORDER BY pos, id", (ctx.id,)
    )
    assert copied == original
    assert query(pg_url, "SELECT next_pos FROM contexts WHERE id = %s", (clone.id,)) == [(4,)]
    assert [r.content for r in pg.records(ctx.id, live_only=True)] == ["sys", "a", "sum", "d"]


# -- Text codec -------------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, categories=None))
nasty = st.sampled_from(["\x00", ESC, ESC + "0", ESC + ESC, "\x000", "\ud83d", "\ude00", "😀"])
texts = st.lists(st.one_of(any_text, nasty), max_size=6).map("".join)


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


storable = texts.filter(encodable)  # what reaches the codec: surrogates are settled before


@given(storable)
def test_codec_round_trips_any_storable_string(text: str):
    encoded = enc(text)
    assert "\x00" not in encoded
    assert dec(encoded) == text


@given(storable, storable)
def test_codec_is_injective(a: str, b: str):
    assert (enc(a) == enc(b)) == (a == b)


@pytest.mark.parametrize("text", ["\x00\ud800", ESC + "\udfff", "ok\x00\ud83d"])
def test_codec_refuses_what_utf8_refuses_with_the_same_error(text: str):
    with pytest.raises(UnicodeEncodeError) as expected:
        text.encode("utf-8")
    with pytest.raises(UnicodeEncodeError) as got:
        enc(text)
    assert str(got.value) == str(expected.value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)


def canonical(value: Any) -> str:
    """JSON text with NaN made comparable (NaN != NaN); key order kept."""
    return json.dumps(value, ensure_ascii=False, default=str, allow_nan=True)


@pytest.fixture
def both(pg_url: str) -> Iterator[tuple[SQLiteStore, PostgresStore]]:
    lite, pg = rxcontext.open(":memory:"), rxcontext.open(pg_url)
    assert isinstance(lite, SQLiteStore) and isinstance(pg, PostgresStore)
    yield lite, pg
    lite.close()
    pg.close()


_names = iter(range(10**9))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=texts,
    meta=st.dictionaries(texts, json_values, max_size=4),
    name=texts.filter(lambda t: t.encode("utf-8", "surrogatepass") == t.encode("utf-8", "ignore")),
    tool_id=texts,
)
def test_records_round_trip_exactly_as_on_sqlite(
    both: tuple[SQLiteStore, PostgresStore],
    content: str,
    meta: dict[str, Any],
    name: str,
    tool_id: str,
):
    lite, pg = both
    suffix = f" #{next(_names)}"
    got = []
    for store in (lite, pg):
        try:
            ctx = store.get_or_create_context(name + suffix)
            draft = RecordDraft(
                RecordType.TOOL_CALL,
                content,
                tool_call_id=tool_id,
                tool_name=name,
                response_id=content[:5],
                metadata=meta,
            )
            added = store.add_record(ctx.id, draft)
            (stored,) = store.records(ctx.id)
            begun = store.begin_reply(ctx.id, tool_id + suffix, owner=worker_id())
            ticket = ReplyTicket(begun.id, begun.epoch)
            for half in (content[: len(content) // 2], content[len(content) // 2 :]):
                assert store.save_checkpoints([(ticket, CheckpointDraft(half))]) == [True]
            assert store.save_checkpoint(
                ticket,
                CheckpointDraft(
                    append_thinking=name,
                    tool_calls=[meta],
                    error=content,
                    metadata=meta,
                    response_id=content[:3],
                ),
                state=ReplyState.INTERRUPTED,
            )
            cp = store.get_checkpoint(begun.id)
            kept = store.keep_checkpoint(cp.id)[0] if cp.text else None
            got.append(
                (
                    ctx.name,
                    store.get_context_by_name(name + suffix).id == ctx.id,
                    added.content,
                    canonical(dict(added.metadata)),
                    (stored.content, stored.tool_call_id, stored.tool_name, stored.response_id),
                    stored.est_tokens,
                    canonical(dict(stored.metadata)),
                    list(stored.metadata),
                    (
                        cp.text,
                        cp.thinking,
                        cp.error,
                        cp.response_id,
                        cp.reply_id[: -len(suffix)],
                        canonical(cp.tool_calls),
                        canonical(dict(cp.metadata)),
                    ),
                    kept and (kept.content, kept.reply_id == cp.reply_id, kept.pos),
                    store.find_reply(tool_id + suffix) == store.get_checkpoint(cp.id),
                )
            )
        except UnicodeEncodeError as exc:  # lone surrogates in names/ids: refused alike
            got.append(("refused", type(exc).__name__))
    assert got[0] == got[1]
    if got[0][0] != "refused":
        assert got[1][2] == got[1][4][0]  # what add_record returns is what a read gives
        assert "\x00" not in content or "\x00" in got[1][2]  # NUL survived


def normalised(export: dict[str, Any]) -> dict[str, Any]:
    """An export without what differs by store: ids and clock readings."""
    return {
        "context": {k: v for k, v in export["context"].items() if k not in ("id", "start_time")},
        "records": [
            {k: v for k, v in r.items() if k not in ("id", "timestamp")} for r in export["records"]
        ],
        "tools": [{k: v for k, v in t.items() if k != "created_at"} for t in export["tools"]],
    }


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(list(RecordType)[:4]), texts, st.booleans()),
        st.tuples(st.just("commit"), st.lists(texts, min_size=0, max_size=3), st.integers(0, 50)),
        st.tuples(st.just("system"), texts),
        st.tuples(st.just("live"), st.integers(-1, 8), st.integers(-1, 8), st.booleans()),
        st.tuples(st.just("summary"), st.lists(st.integers(0, 8), min_size=1, max_size=3), texts),
        st.tuples(st.just("tool"), st.sampled_from(["f", "g", "\x00h"]), json_values),
        st.tuples(st.just("untool"), st.sampled_from(["f", "g", "\x00h"])),
        st.tuples(st.just("threading"), st.booleans(), st.none() | texts),
        # The reply lifecycle; ``k`` picks one of the tickets handed out so far.
        st.tuples(st.just("begin"), st.sampled_from(["live", "dead", "elsewhere"])),
        st.tuples(st.just("write"), st.integers(0, 5), texts, texts, st.integers(0, 9)),
        st.tuples(st.just("batch"), st.lists(st.integers(0, 5), max_size=3), texts),
        st.tuples(st.just("interrupt"), st.integers(0, 5), texts),
        st.tuples(st.just("round"), st.integers(0, 5), st.lists(texts, max_size=2)),
        st.tuples(st.just("finish"), st.integers(0, 5), st.lists(texts, max_size=2)),
        st.tuples(st.just("outputs"), st.integers(0, 5), texts),
        st.tuples(st.just("claim"), st.integers(0, 5)),
        st.tuples(st.just("discard"), st.integers(0, 5)),
        st.tuples(st.just("keep"), st.integers(0, 5)),
    ),
    max_size=14,
)
begins = st.lists(st.tuples(st.just("begin"), st.sampled_from(["live", "dead", "elsewhere"])))
programs = st.tuples(begins.map(lambda b: b[:3]), ops).map(lambda p: p[0] + p[1])
"""Most programs open a few replies first, so the lifecycle operations have one to act on."""

DEAD = f"{worker_id().split(':')[0]}:{__import__('os').getpid()}:gone"
OWNERS = {"live": worker_id(), "dead": DEAD, "elsewhere": "elsewhere.invalid:1:1"}


def apply(store: Any, ctx_id: str, op: tuple[Any, ...], tickets: list[ReplyTicket]) -> Any:
    """Run one operation; its answer, or the kind of error it gave (ids differ by store)."""
    kind = op[0]
    ticket = tickets[op[1] % len(tickets)] if tickets and isinstance(op[1], int) else None
    try:
        if kind == "begin":
            rid = f"{store.get_context(ctx_id).name}/{len(tickets)}"
            cp = store.begin_reply(ctx_id, rid, owner=OWNERS[op[1]])
            tickets.append(ReplyTicket(cp.id, cp.epoch))
            return cp.pos
        if kind == "batch":
            chosen = [tickets[k % len(tickets)] for k in op[1]] if tickets else []
            return store.save_checkpoints([(t, CheckpointDraft(op[2])) for t in chosen])
        if kind in ("write", "interrupt", "round", "finish", "outputs", "claim", "discard", "keep"):
            if ticket is None:
                return "no reply"
            cid = ticket.checkpoint_id
        if kind == "write":
            return store.save_checkpoint(ticket, CheckpointDraft(op[2], op[3], chunks=op[4]))
        if kind == "interrupt":
            draft = CheckpointDraft(op[2], error="cut")
            return store.save_checkpoint(ticket, draft, state=ReplyState.INTERRUPTED)
        if kind in ("round", "finish", "outputs"):
            drafts = (
                [R(t) for t in op[2]]
                if kind != "outputs"
                else [RecordDraft(RecordType.TOOL_OUTPUT, op[2], tool_call_id="c")]
            )
            end = {"round": "round", "finish": "reply", "outputs": None}[kind]
            out = store.commit_reply(ctx_id, drafts, reply=ticket, end=end, usage=Usage.of(1, 2))
            return [(r.content, r.pos, r.reply_id) for r in out]
        if kind == "claim":
            cp = store.claim_checkpoint(cid, owner=worker_id())
            tickets.append(ReplyTicket(cp.id, cp.epoch))
            return (cp.state, cp.epoch, cp.text, cp.thinking)
        if kind == "discard":
            cp = store.discard_checkpoint(cid)
            return (cp.state, cp.epoch, cp.text)
        if kind == "keep":
            return [(r.content, r.pos, dict(r.metadata)) for r in store.keep_checkpoint(cid)]
        if kind == "add":
            return store.add_record(ctx_id, RecordDraft(op[1], op[2], live=op[3])).content
        if kind == "commit":
            drafts = [R(t, streamed=True, metadata={"i": i}) for i, t in enumerate(op[1])]
            out = store.commit_reply(ctx_id, drafts, usage=Usage.of(op[2], 1))
            return [r.content for r in out]
        if kind == "system":
            return store.replace_system_prompt(ctx_id, op[1]).content
        if kind == "live":
            return store.set_live_range(ctx_id, op[1], op[2], op[3])
        if kind == "summary":
            records = store.records(ctx_id)
            ids = [records[i].id for i in op[1] if i < len(records)]
            return store.replace_records(ctx_id, ids, R(op[2])).content
        if kind == "tool":
            store.set_context_tool(ctx_id, op[1], {"name": op[1], "v": op[2]})
            return None
        if kind == "untool":
            return store.remove_context_tool(ctx_id, op[1])
        store.set_threading(ctx_id, op[1])
        store.set_last_response_id(ctx_id, op[2])
        return None
    except (IndexError, ValueError) as exc:
        return f"{type(exc).__name__}: {re.sub(r'checkpoint [0-9]+', 'checkpoint #', str(exc))}"
    except RxContextError as exc:  # its message names ids, which differ by store
        return type(exc).__name__


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(program=programs)
def test_the_same_operations_give_the_same_records_and_exports(
    both: tuple[SQLiteStore, PostgresStore], program: list[tuple[Any, ...]]
):
    lite, pg = both
    name = f"diff {next(_names)}"
    results = []
    for store in (lite, pg):
        ctx = store.get_or_create_context(name)
        tickets: list[ReplyTicket] = []
        answers = [apply(store, ctx.id, op, tickets) for op in program]
        clone = store.clone_context(ctx.id, name + " clone")
        stats = store.context_stats(ctx.id)
        results.append(
            (
                canonical(answers),
                canonical(normalised(store.export_context(ctx.id))),
                canonical(normalised(store.export_context(clone.id))),
                [
                    (
                        c.reply_id,
                        c.state,
                        c.epoch,
                        c.pos,
                        c.owner,
                        c.text,
                        c.thinking,
                        c.chunks,
                        c.error,
                        c.resolved,
                    )
                    for c in store.checkpoints(ctx.id, include_resolved=True)
                ],
                [c.id for c in store.checkpoints(ctx.id)]
                == [
                    c.id
                    for c in store.checkpoints(ctx.id, include_resolved=True)
                    if c.state is ReplyState.INTERRUPTED
                ],
                [c.reply_id for c in store.active_replies(ctx.id)],
                (stats.records, stats.live_records, stats.live_tokens, stats.total_tokens),
                (stats.prompts, stats.replies, stats.tool_calls, stats.tool_outputs),
                (stats.open_checkpoints, stats.usage),
                [r.content for r in store.records(ctx.id, live_only=True)],
            )
        )
    assert results[0] == results[1]


def test_nan_and_infinity_in_metadata_store_as_on_sqlite(both: tuple[SQLiteStore, PostgresStore]):
    # json/jsonb columns would refuse these at commit time; the reply would be lost.
    for store in both:
        ctx = store.get_or_create_context("nan")
        store.commit_reply(ctx.id, [R("x", metadata={"b": math.inf, "a": math.nan})])
        (back,) = store.records(ctx.id)
        assert list(back.metadata) == ["b", "a"]  # key order kept
        assert back.metadata["b"] == math.inf and math.isnan(back.metadata["a"])


# -- Incremental history ----------------------------------------------------------------------

history_ops = st.lists(
    st.tuples(
        st.sampled_from(["prompt", "reply", "live", "system", "summary", "in-place", "read"]),
        st.integers(0, 30),
        st.booleans(),  # written through the other store (another process)
    ),
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(program=history_ops)
def test_the_history_cache_equals_a_full_read_with_another_writer(pg_url: str, program):
    from rxcontext.history import HistoryCache

    mine, other = PostgresStore(pg_url, pool_size=1), PostgresStore(pg_url, pool_size=1)
    ctx = mine.get_or_create_context(f"h{next(_names)}")
    cache = HistoryCache(mine, ctx.id)
    try:
        for n, (op, arg, by_other) in enumerate(program):
            store = other if by_other else mine
            if op == "prompt":
                store.add_record(ctx.id, P(f"p{n}"))
            elif op == "reply":
                store.commit_reply(ctx.id, [R(f"r{n}")])
            elif op == "live" and (records := store.records(ctx.id)):
                store.set_live_range(ctx.id, arg % len(records), arg % len(records), by_other)
            elif op == "system":
                store.replace_system_prompt(ctx.id, f"s{n}")
            elif op == "summary" and (live := store.records(ctx.id, live_only=True)):
                store.replace_records(ctx.id, [r.id for r in live[: 1 + arg % 3]], R("sum"))
            elif op == "in-place":  # a reply stored at an earlier place, not at the end
                ticket = begin(store, ctx.id, f"{ctx.id}/{n}")
                store.add_record(ctx.id, P("after"))
                store.commit_reply(ctx.id, [R(f"late{n}")], reply=ticket, end="reply")
            elif op == "read":
                assert cache.live(arg) == mine.records(ctx.id, live_only=True, upto=arg)
            assert cache.live() == mine.records(ctx.id, live_only=True)
            assert mine.live_tokens(ctx.id) == sum(
                r.est_tokens for r in mine.records(ctx.id, live_only=True)
            )
    finally:
        mine.close()
        other.close()


def test_history_reads_only_what_changed_in_one_statement(pg: PostgresStore):
    ctx = pg.get_or_create_context("c")
    for i in range(5):
        pg.add_record(ctx.id, P(f"p{i}"))
    version, everything = pg.history(ctx.id)
    assert [r.content for r in everything] == [f"p{i}" for i in range(5)]
    assert pg.history(ctx.id, since=version) == (version, [])
    pg.set_live_range(ctx.id, 1, 1, False)
    new = pg.add_record(ctx.id, P("new"))
    later, changed = pg.history(ctx.id, since=version)
    assert later > version
    assert [(r.content, r.live) for r in changed] == [("p1", False), ("new", True)]
    assert changed[1] == new
    with pytest.raises(rxcontext.ContextNotFound):
        pg.history("missing")


def test_the_pools_reconnect_jitter_leaves_the_global_random_alone() -> None:
    """psycopg_pool draws each new connection's expiry jitter from the global ``random``, on
    its worker threads; Hypothesis compares that global state around each of its draws and
    warns (a deprecation, an error to come) when another thread moved it meanwhile, as a
    pool growing in the background did in this suite. tests/conftest.py gives the pools a
    ``Random`` of their own."""
    import random

    from psycopg_pool.base import BasePool

    before = random.getstate()
    BasePool._jitter(60.0, -0.05, 0.0)
    assert random.getstate() == before


def test_closing_a_fail_fast_store_waits_for_its_pool_threads(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``retry_budget=0`` (fail fast) bounds a call's retries, not how long ``close()`` lets
    the pool's own threads stop: it gets 1 s at least, as background attempts do. Before the
    fix the pool was closed with a 0 s timeout, so psycopg_pool warned "couldn't stop thread
    ... within 0 seconds" on every close of a healthy store, and left its threads running."""
    store = rxcontext.open(pg_url, retry_budget=0)
    rxcontext.ContextWindow(store, None, context="c").add_prompt("hello")
    pool = store._runner.pool()
    threads = [*pool._workers, pool._sched_runner]
    with caplog.at_level("WARNING", logger="psycopg.pool"):
        store.close()
    assert not [r for r in caplog.records if "couldn't stop" in r.getMessage()], caplog.text
    assert not [t for t in threads if t is not None and t.is_alive()], threads
