"""Opening SQLite files: upgrading a database of the last release, many processes opening a
new or just-upgraded database at once, and files that are not ours left untouched."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    NotADatabaseError,
    ReplyState,
    SchemaTooNew,
    StoreBusy,
)
from rxcontext.providers import ScriptedModel
from rxcontext.store.migrations import MIGRATIONS
from rxcontext.window import CONTINUE_PROMPT

RELEASE_0_1_0 = Path(__file__).parent / "data" / "rxcontext-0.1.0.db"


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- a new in-memory database ------------------------------------------------------------------


def schema(conn: sqlite3.Connection) -> dict[str, object]:
    return {
        "master": sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
        "steps": [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")],
        "user_version": conn.execute("PRAGMA user_version").fetchone(),
    }


def test_a_new_in_memory_store_is_the_database_the_steps_give(tmp_path: Path):
    # ":memory:" copies the pages of a database this process migrated once; a new file
    # runs every step. Both must be the same database.
    rxcontext.open(tmp_path / "steps.db").close()
    with sqlite3.connect(tmp_path / "steps.db") as stepped:
        expected = schema(stepped)
    assert expected["steps"] == sorted(name for name, _ in MIGRATIONS)

    first, second = rxcontext.open(":memory:"), rxcontext.open(":memory:")
    try:
        for store in (first, second):
            assert schema(store._conn) == expected
            applied = store._conn.execute("SELECT MIN(applied_at) FROM schema_migrations")
            assert applied.fetchone()[0] is not None
        # Each is a database of its own: what one stores, the other never sees.
        cw = ContextWindow(first, ScriptedModel([[T("one")]]), "a")
        cw.add_prompt("hi")
        assert cw.call().text == "one"
        assert [c.name for c in first.list_contexts()] == ["a"]
        assert second.list_contexts() == []
        third = rxcontext.open(":memory:")  # opened after the first one stored something
        assert third.list_contexts() == []
        third.close()
    finally:
        first.close()
        second.close()


def _open_memory_in_child(out: multiprocessing.Queue[int]) -> None:
    store = rxcontext.open(":memory:")
    out.put(len(store._conn.execute("SELECT name FROM schema_migrations").fetchall()))
    store.close()


def test_a_forked_child_opens_in_memory_stores_of_its_own():
    rxcontext.open(":memory:").close()  # the parent has its template
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = ctx.Queue()
    child = ctx.Process(target=_open_memory_in_child, args=(out,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert out.get(timeout=5) == len(MIGRATIONS)


# -- the database of the last release ---------------------------------------------------------


def test_a_database_of_release_0_1_0_keeps_its_order_and_its_open_checkpoint_resumes_in_place(
    tmp_path: Path,
):
    # Made by rxcontext 0.1.0 (tests/data/make_v0_1_0_db.py): records ordered by time, one
    # open checkpoint cut after "Tell me a long story.", one resumed.
    path = tmp_path / "old.db"
    shutil.copy(RELEASE_0_1_0, path)
    store = rxcontext.open(path)
    cw = ContextWindow(store, None, "old")
    got = [(r.pos, r.type.name, r.content) for r in cw.records()]
    assert got == [
        (0, "SYSTEM_PROMPT", "Be brief."),
        (1, "PROMPT", "Capital of France?"),
        (2, "MODEL_RESP", "Paris."),
        (3, "PROMPT", "Weather in Oslo?"),
        (4, "TOOL_CALL", '{"city":"Oslo"}'),
        (5, "TOOL_OUTPUT", "sunny"),
        (6, "MODEL_RESP", "Sunny in Oslo."),
        (7, "PROMPT", "Tell me a long story."),
        (9, "PROMPT", "Something short?"),
        (10, "MODEL_RESP", "Short answer."),
        (11, "PROMPT", "Last question"),
    ]
    (open_,) = cw.checkpoints()
    assert (open_.pos, open_.state, open_.text) == (8, ReplyState.INTERRUPTED, "The long answer ")
    (resolved,) = [c for c in store.checkpoints(cw.context_id, include_resolved=True) if c.resolved]
    assert resolved.state is ReplyState.COMPLETED
    assert [r.content for r in ContextWindow(store, None, "second").records()] == [
        "hello from another context"
    ]

    cw.model = model = ScriptedModel([[T("about a fox."), Chunk(ChunkKind.DONE)]])
    assert cw.resume_call(open_.id).text == "The long answer about a fox."
    assert [r.content for r in model.requests[0].records] == [
        "Be brief.",
        "Capital of France?",
        "Paris.",
        "Weather in Oslo?",
        '{"city":"Oslo"}',
        "sunny",
        "Sunny in Oslo.",
        "Tell me a long story.",
        "The long answer ",
        CONTINUE_PROMPT,
    ]
    assert [r.content for r in cw.records()][7:10] == [
        "Tell me a long story.",
        "The long answer about a fox.",
        "Something short?",
    ]
    store.close()


def test_a_resumed_checkpoint_of_release_0_1_0_keeps_its_settled_row(tmp_path: Path):
    # 0.1.0 rows had no epoch (the upgrade gives them 0), so a resume's claim brought one to
    # 1, the epoch of a reply never cut: its commit deleted the row, and the cut text with it.
    path = tmp_path / "old.db"
    shutil.copy(RELEASE_0_1_0, path)
    store = rxcontext.open(path)
    cw = ContextWindow(store, ScriptedModel([[T("about a fox."), Chunk(ChunkKind.DONE)]]), "old")
    (open_,) = cw.checkpoints()
    assert cw.resume_call(open_.id).text == "The long answer about a fox."
    settled = store.get_checkpoint(open_.id)
    assert (settled.state, settled.text, settled.resolved) == (
        ReplyState.COMPLETED,
        "The long answer ",
        True,
    )
    found = store.find_reply(open_.reply_id)
    assert found is not None and found.id == open_.id
    # A reply never cut still leaves no row, in the upgraded file as in a new one.
    cw.model = ScriptedModel([[T("Fine."), Chunk(ChunkKind.DONE)]])
    cw.add_prompt("And now?")
    assert cw.call(reply_id="never-cut").text == "Fine."
    assert [r.content for r in store.reply_records("never-cut")] == ["Fine."]
    assert store.find_reply("never-cut") is None
    store.close()


# -- many processes at once --------------------------------------------------------------------


def _open_and_write(path: str, barrier: multiprocessing.synchronize.Barrier, n: int) -> str:
    barrier.wait(30)
    try:
        store = rxcontext.open(path)
        ContextWindow(store, None, f"p{n}").add_prompt(f"hello {n}")
        store.close()
    except Exception as exc:  # reported to the parent
        return f"{type(exc).__name__}: {exc}"
    return "ok"


PROCESSES = 6
TRIALS = 4  # the old code failed about every other trial: several catch a regression


def test_processes_opening_a_database_at_once_all_succeed(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    paths = []
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        for trial in range(TRIALS):
            for start in ("new", "release-0.1.0"):
                path = tmp_path / f"race-{trial}-{start}.db"
                if start != "new":
                    shutil.copy(RELEASE_0_1_0, path)
                barrier = manager.Barrier(PROCESSES)
                results = pool.starmap(
                    _open_and_write, [(str(path), barrier, n) for n in range(PROCESSES)]
                )
                assert results == ["ok"] * PROCESSES, (trial, start)
                paths.append(path)
    for path in paths:
        with sqlite3.connect(path) as db:
            applied = [
                r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY rowid")
            ]
            assert applied == [name for name, _ in MIGRATIONS]
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        with rxcontext.open(path) as store:
            names = {c.name for c in store.list_contexts()}
        assert {f"p{n}" for n in range(PROCESSES)} <= names


# -- files that are not ours (or are too new) --------------------------------------------------


def test_a_database_of_a_newer_rxcontext_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "new.db"
    rxcontext.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations (name) VALUES ('m999_from_the_future')")
    db.close()
    before = snapshot(tmp_path)
    with pytest.raises(SchemaTooNew, match=r"newer rxcontext.*upgrade"):
        rxcontext.open(path)
    assert snapshot(tmp_path) == before


def test_another_applications_sqlite_file_is_refused_before_wal_is_switched_on(tmp_path: Path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (9.5)")
    db.close()
    before = snapshot(tmp_path)
    with pytest.raises(NotADatabaseError, match=r"another application's.*left unchanged"):
        rxcontext.open(path)
    assert snapshot(tmp_path) == before  # no -wal/-shm files, same bytes
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


# A writer killed with committed pages still in its -wal: the file as it then is on disk.
_KILLED_WRITERS = {
    "newer rxcontext": """
        rxcontext.open(path).close()
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("INSERT INTO schema_migrations (name) VALUES ('m999_from_the_future')")
    """,
    "another application": """
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.execute("INSERT INTO invoices (total) VALUES (9.5)")
    """,
}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
@pytest.mark.parametrize(
    ("writer", "refusal"),
    [("newer rxcontext", SchemaTooNew), ("another application", NotADatabaseError)],
)
def test_a_refused_file_whose_writer_was_killed_keeps_its_wal(
    tmp_path: Path, writer: str, refusal: type[Exception]
):
    # Closing the connection that read the schema checkpointed the -wal into the file and
    # deleted the -wal and -shm: the refused file was rewritten.
    path = tmp_path / "killed.db"
    script = "import os, signal, sqlite3, rxcontext\n" + f"path = {str(path)!r}\n"
    script += textwrap.dedent(_KILLED_WRITERS[writer])
    script += "os.kill(os.getpid(), signal.SIGKILL)\n"
    child = subprocess.run([sys.executable, "-c", script], check=False)
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "killed.db-wal").stat().st_size > 0
    before = snapshot(tmp_path)
    with pytest.raises(refusal, match="left unchanged"):
        rxcontext.open(path)
    assert snapshot(tmp_path) == before


# superfly/contextwindow's schema (storage.go, InitializeSchema at 8d45723): its tables and
# the columns it adds, with Go's time format as mattn/go-sqlite3 stores time.Time.
CONTEXTWINDOW_SCHEMA = """
CREATE TABLE IF NOT EXISTS contexts (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, start_time DATETIME NOT NULL,
    use_server_side_threading BOOLEAN NOT NULL DEFAULT 0, last_response_id TEXT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT, context_id TEXT NOT NULL, ts DATETIME NOT NULL,
    source INTEGER NOT NULL, content TEXT NOT NULL, live BOOLEAN NOT NULL,
    est_tokens INTEGER NOT NULL, response_id TEXT NULL,
    FOREIGN KEY (context_id) REFERENCES contexts(id) ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS context_tools (
    id INTEGER PRIMARY KEY AUTOINCREMENT, context_id TEXT NOT NULL, tool_name TEXT NOT NULL,
    created_at DATETIME NOT NULL,
    FOREIGN KEY (context_id) REFERENCES contexts(id) ON DELETE CASCADE,
    UNIQUE(context_id, tool_name));
CREATE INDEX IF NOT EXISTS idx_context_live ON records(context_id, live);
CREATE INDEX IF NOT EXISTS idx_context_ts ON records(context_id, ts);
CREATE INDEX IF NOT EXISTS idx_context_tools_context ON context_tools(context_id);
"""


def make_contextwindow_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(CONTEXTWINDOW_SCHEMA)
        db.execute(
            "INSERT INTO contexts VALUES ('c-1', 'notes', '2025-09-17 10:00:00.5+00:00', 1, 'r2')"
        )
        rows = [
            ("2025-09-17 10:00:01.123456789+00:00", 4, "old system", 0, None),
            ("2025-09-17 10:00:02+00:00", 0, "What is 2+2?", 1, None),
            ("2025-09-17 10:00:02.25+00:00", 1, "4", 1, "r1"),
            ("2025-09-17 10:00:03.1+00:00", 4, "Be brief.", 1, None),
            ("2025-09-17 10:00:04+00:00", 0, "And 3+3?", 1, None),
            ("2025-09-17 10:00:04.000000001+00:00", 1, "6", 1, "r2"),
        ]
        db.executemany(
            "INSERT INTO records (context_id, ts, source, content, live, est_tokens,"
            " response_id) VALUES ('c-1', ?, ?, ?, ?, 3, ?)",
            rows,
        )
        db.execute(
            "INSERT INTO context_tools (context_id, tool_name, created_at)"
            " VALUES ('c-1', 'calc', '2025-09-17 10:00:00+00:00')"
        )
    db.close()


def test_a_contextwindow_database_is_taken_over_and_its_conversations_go_on(tmp_path: Path):
    path = tmp_path / "cw.db"
    make_contextwindow_db(path)
    store = rxcontext.open(path)
    cw = ContextWindow(store, ScriptedModel([[T("8"), Chunk(ChunkKind.DONE)]]), "notes")
    assert [(r.type.name, r.content, r.live, r.response_id) for r in cw.records()] == [
        ("SYSTEM_PROMPT", "old system", False, None),
        ("PROMPT", "What is 2+2?", True, None),
        ("MODEL_RESP", "4", True, "r1"),
        ("SYSTEM_PROMPT", "Be brief.", True, None),
        ("PROMPT", "And 3+3?", True, None),
        ("MODEL_RESP", "6", True, "r2"),
    ]
    ctx = cw.context
    assert (ctx.use_server_side_threading, ctx.last_response_id) == (True, "r2")
    assert ctx.created_at.year == 2025
    assert [t["name"] for t in store.context_tools(ctx.id)] == ["calc"]
    assert cw.live_tokens() == 15
    cw.add_prompt("And 4+4?")
    assert cw.call().text == "8"
    assert [r.content for r in cw.live_records()][-2:] == ["And 4+4?", "8"]
    store.close()
    with rxcontext.open(path) as again:  # opens as an rxcontext database from now on
        assert len(again.records(ctx.id)) == 8


def test_a_contextwindow_database_with_an_extra_table_is_another_applications(tmp_path):
    path = tmp_path / "cw-plus.db"
    make_contextwindow_db(path)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    db.close()
    before = snapshot(tmp_path)
    with pytest.raises(NotADatabaseError, match="another application"):
        rxcontext.open(path)
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_refusals_need_no_write_permission(tmp_path: Path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    path.chmod(0o444)
    try:
        with pytest.raises(NotADatabaseError):
            rxcontext.open(path)
    finally:
        path.chmod(0o644)


# -- a file another process holds locked -------------------------------------------------------

_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@pytest.mark.parametrize("start", ["release-0.1.0", "contextwindow"])
def test_an_older_database_another_process_holds_locked_raises_store_busy(
    tmp_path: Path, start: str
):
    """Its upgrade needs the write lock (the 0.1.0 file is in WAL mode: its schema is read,
    the lock waited for; contextwindow's is not: even the read waits). Either way the open
    waits ``busy_timeout`` and raises StoreBusy, as any write does; it was a plain
    StoreError ("cannot open ...: database is locked")."""
    path = tmp_path / "old.db"
    if start == "release-0.1.0":
        shutil.copy(RELEASE_0_1_0, path)
    else:
        make_contextwindow_db(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(StoreBusy, match=r"locked by another process \(waited 0\.2 s\)"):
            rxcontext.open(path, busy_timeout=0.2)
    finally:
        holder.communicate("release\n", timeout=60)
    assert holder.returncode == 0
    with rxcontext.open(path) as store:  # the lock was all that stood in the way
        assert store.list_contexts()


# -- paths that are not files ------------------------------------------------------------------


def _unix_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
@pytest.mark.parametrize("kind", ["named pipe", "socket", "character device"])
def test_a_path_that_is_a_pipe_socket_or_device_is_refused_without_opening_it(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
):
    """SQLite opened a named pipe and blocked on it until a writer came (forever); a socket
    gave "cannot read: No such device or address"; a device (here one like /dev/null)
    was opened as an empty database. Each is refused by what it is, before SQLite opens it."""
    monkeypatch.chdir(tmp_path)  # a short relative path: a socket's is limited to ~100 bytes
    path = Path("p")
    held = None
    if kind == "named pipe":
        os.mkfifo(path)
    elif kind == "socket":
        held = _unix_socket(path)
    else:
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs CAP_MKNOD")
    outcome: list[BaseException | None] = []

    def open_it() -> None:
        try:
            rxcontext.open(path).close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    opener.join(timeout=60)
    try:
        assert not opener.is_alive(), "rxcontext.open blocked on the path"
    finally:
        if opener.is_alive():  # a writer ends the blocked read (EOF), so the thread ends
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            opener.join(timeout=60)
        if held is not None:
            held.close()
    (exc,) = outcome
    assert isinstance(exc, NotADatabaseError), exc
    assert f"'p' is a {kind}, not a database file" in str(exc)
    assert not stat.S_ISREG(path.stat().st_mode)
    assert sorted(os.listdir(".")) == ["p"]  # no -wal, -shm or -journal made beside it
