"""SQLite storage: contextwindow's schema plus reply lifecycle rows.

One connection per store, guarded by a lock, so a store may be shared by threads and by
many concurrent streams; file databases get a second connection for the background
checkpoint writer, so a write it has to wait for never holds up the rest. WAL journal,
foreign keys on, a busy timeout for other processes. Completed replies commit with
``synchronous=FULL`` (durable once ``on_completed`` is delivered); checkpoints use
``NORMAL``. Records are ordered by per-context positions allocated inside the write's
transaction; timestamps (from :attr:`SQLiteStore.clock`) are for display only.

The reply lifecycle (begin, checkpoint, commit, claim, keep, discard) is in
:mod:`.sqlite_replies`; row encoding in :mod:`._sqlite_rows`; the schema in
:mod:`.migrations`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import _forks
from .._memory import let_go
from .._signals import deferred
from ..chunks import Usage
from ..errors import (
    ContextNotFound,
    NotADatabaseError,
    StoreBusy,
    StoreClosedError,
    StoreError,
)
from ..records import Context, ContextStats, Record, RecordType
from ..tokens import sized_record_tokens
from . import _sqlite_blobs as blobs
from . import _sqlite_long as long
from . import _sqlite_rows as rows
from ._export import export_document
from ._thinking import pack
from .base import RecordDraft, Spending, check_name, check_text, usage_counts
from .migrations import copy_current_schema, migrate, pending
from .owner import check_lease_ttl, process_gone
from .sqlite_holds import attach as attach_holds
from .sqlite_holds import detach as detach_holds
from .sqlite_holds import holds_path
from .sqlite_leases import SQLiteLeases
from .sqlite_replies import CODECS, SQLiteReplies

__all__ = ["SQLiteStore", "open_store"]

_HEADER = b"SQLite format 3\x00"

LEAN_CACHE = 16
"""Pages of the foreground connection's page cache while a long value is written
(:meth:`SQLiteStore.lean`)."""

_INSERT_RECORD = (
    "INSERT INTO records (context_id, ts, source, content, live, est_tokens, response_id,"
    " streamed, tool_call_id, tool_name, metadata, pos, reply_id, attachments, inherited,"
    " rev)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?, (SELECT version FROM contexts WHERE id = ?))"
)
"""The record's insert (a long value goes in empty: :data:`_LONG_VALUES`)."""

_PLACEHOLDER = {True: "CAST(zeroblob(?) AS TEXT)", False: "CAST(substr(zeroblob(?), 1) AS TEXT)"}
"""A TEXT of ``?`` bytes, in a UTF-8 file (True) and in a UTF-16 one. A cast reads a blob in
the file's encoding, but SQLite reads ``zeroblob(n)``'s own value as UTF-8 (its length made
even in UTF-16 first): in UTF-16, ``2 * (n & ~1)`` bytes. A function's blob result, as
``substr``'s, is read in the file's encoding: ``n`` bytes (one more copy of them)."""

_LONG_VALUES = {
    (utf8, long_content, long_metadata): "UPDATE records SET "
    + ", ".join(
        [
            f"{c} = {_PLACEHOLDER[utf8]}"
            for c, on in (("content", long_content), ("metadata", long_metadata))
            if on
        ]
    )
    + " WHERE id = ?"
    for utf8 in (True, False)
    for long_content, long_metadata in ((True, False), (False, True), (True, True))
}
"""A record's long values as TEXT placeholders of their size in the database's encoding
(each ``?``: :func:`_sqlite_long.stored_size`; keyed by whether that is UTF-8 first), which
:func:`_sqlite_long.write` then writes over. An update, after the insert: a ``BEFORE INSERT``
trigger (``records_refuse_older_writers``) makes SQLite copy the new row for it, one more
whole copy of a long value beside its placeholder and the row's record (a 10 MB value
peaked at 3x its size inserted, 2x updated)."""


_NOT_FILES = (
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _check_file(path: str) -> None:
    """Refuse, without writing a byte, a path that is not (or cannot become) a database."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError:  # not there (or not reachable): SQLite creates it, or says why not
        if not p.parent.exists():
            raise StoreError(
                f"cannot create {path!r}: folder {str(p.parent)!r} does not exist"
            ) from None
        return
    if stat.S_ISDIR(mode):
        raise StoreError(f"{path!r} is a directory; give a database file path")
    if not stat.S_ISREG(mode):  # SQLite would open it: a named pipe blocks for ever
        kind = next((name for test, name in _NOT_FILES if test(mode)), "special file")
        raise NotADatabaseError(
            f"{path!r} is a {kind}, not a database file (it was left unchanged); "
            "give the path of an rxcontext database or of a new file"
        )
    try:
        with p.open("rb") as f:
            head = f.read(len(_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
    if head and head != _HEADER:
        raise NotADatabaseError(
            f"{path!r} is not an SQLite database (it was left unchanged); "
            "give the path of an rxcontext database or of a new file"
        )
    if os.path.exists(path + "-wal"):
        _check_schema_read_only(path)


def _check_schema_read_only(path: str) -> None:
    """Refuse a file not ours (or too new) whose -wal is still there, without changing it.

    The last connection to close checkpoints the -wal into the file and deletes the -wal and
    -shm, so a writer killed with pages in its -wal would have its file rewritten by the
    very open that refuses it. This one reads through a read-only connection that maps the
    -shm read-only too (SQLite's ``readonly_shm``), so it writes to no file. What it cannot
    read so (no -shm beside the -wal, a hot journal, a lock) is left to the ordinary open,
    which decides again.
    """
    uri = Path(path).absolute().as_uri() + "?mode=ro&readonly_shm=1"
    try:
        probe = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        pending(probe, path)
    except sqlite3.Error:
        return
    finally:
        probe.close()


def _use_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch a database to WAL (once; a no-op after). Processes racing to open a new file
    all try: SQLite may refuse the switch at once ("database is locked") instead of waiting
    for the busy timeout, so it is tried again until the timeout."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # another process holds the lock for a moment: wait, then retry
        pause = min(pause * 2, 0.05)


AT_ONCE_RECORDS = 256
"""The most records a history read in :meth:`SQLiteStore.at_once` returns (more: it raises
:class:`NotNow`, and the read is made again with no bound, off the event loop)."""


AT_ONCE_TOKENS = 16_384
"""The most live tokens (the context's estimate, kept on write: ~64 KiB of text) a history
read in :meth:`SQLiteStore.at_once` may hold; more raises :class:`NotNow` before a row is
read (a few records of megabytes would stall the event loop as surely as many records)."""


class NotNow(StoreBusy):
    """Internal: what :meth:`SQLiteStore.at_once` will not do on the calling thread."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _open_error(path: str, exc: sqlite3.Error, busy_timeout: float) -> StoreError:
    msg = str(exc)
    if "locked" in msg or "busy" in msg:  # as a write's (``_tx``): upgrades are writes
        return StoreBusy(
            f"{path!r} is locked by another process (waited {busy_timeout:g} s): {msg}"
        )
    if "readonly" in msg or "read-only" in msg:
        return StoreError(f"{path!r} is read-only; rxcontext needs to write to its database")
    if "not a database" in msg or "malformed" in msg:
        return NotADatabaseError(f"{path!r} is not a valid SQLite database")
    return StoreError(f"cannot open {path!r}: {msg}")


_refused_files: set[tuple[int, int]] = set()
"""In a forked child: the database files (device, inode) a connection of the parent's was in
use on at the fork (:meth:`SQLiteStore._forked`). SQLite's per-process lock record of such a
file is the kept connection's: no store of this process may use the file."""


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _refused_message(path: str) -> str:
    return (
        f"store {path!r} was in use by another thread when this process forked, and SQLite"
        " connections must not cross a fork: this process cannot use that database; open"
        " stores after forking (rxcontext.open() in each worker, in a process forked before"
        " its parent used the store), or fork before serving"
    )


_CONTEXT_STATS = (
    "SELECT c.id, c.name, COUNT(r.id), COALESCE(SUM(r.live), 0),"
    " COALESCE(SUM(CASE WHEN r.live THEN r.est_tokens ELSE 0 END), 0),"
    " COALESCE(SUM(r.est_tokens), 0),"
    " COALESCE(SUM(r.source = 0), 0), COALESCE(SUM(r.source = 1), 0),"
    " COALESCE(SUM(r.source = 2), 0), COALESCE(SUM(r.source = 3), 0),"
    " (SELECT COUNT(*) FROM checkpoints k WHERE k.context_id = c.id"
    "   AND k.state = 'interrupted'),"
    " (SELECT json_group_array(json_array(k.id, k.owner,"
    "   COALESCE(k.lease_until > ?1, 0))) FROM checkpoints k"
    "   WHERE k.context_id = c.id AND k.state IN ('streaming', 'resuming')),"
    f" {rows.USAGE_COLUMNS}, MAX(r.ts)"
    " FROM contexts c LEFT JOIN records r ON r.context_id = c.id"
    " WHERE c.id = ?2 GROUP BY c.id"
)
"""A context's aggregate numbers in one query (:meth:`SQLiteStore.context_stats`)."""


class SQLiteStore(SQLiteReplies, SQLiteLeases):
    """The SQLite implementation of :class:`~rxcontext.store.base.Store`.

    Open one with :func:`rxcontext.open`. ``":memory:"`` gives a private in-memory database.
    ``clock`` gives the (display-only) timestamps and the leases' time; ``lease_ttl`` is how
    long a reply whose owner stopped renewing it stays ``STREAMING`` for other hosts (on
    this host a dead owner is seen at once).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        busy_timeout: float = 5.0,
        clock: Callable[[], datetime] = _utc_now,
        lease_ttl: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        self.clock = clock
        """Wall clock for timestamps and leases (never for order)."""
        self.lease_ttl = check_lease_ttl(lease_ttl)
        self._close_hooks: list[Callable[[], None]] = []
        self.busy_timeout = busy_timeout
        self._memory = self.path == ":memory:" or self.path.startswith("file::memory:")
        self._holds = None if self._memory else holds_path(self.path)
        """The file of the holds on this database's rows (:mod:`.sqlite_holds`)."""
        if _refused_files and not self._memory and _file_key(self.path) in _refused_files:
            raise StoreError(_refused_message(self.path))
        if not self._memory:
            _check_file(self.path)
        self._lock = threading.RLock()
        self._bg_lock = threading.Lock()
        self._lean = False  # lean(): the foreground page cache is kept small now
        self._bg_conn: sqlite3.Connection | None = None
        self._at_once: int | None = None
        """The thread in :meth:`at_once` (it holds ``_lock``), if one is."""
        conn = self._connect(busy_timeout)
        try:
            if self.path == ":memory:":  # private and new: the migrated pages, copied
                copy_current_schema(conn)
            # Decide whether this is our database before anything (WAL included) writes.
            pending(conn, self.path)
            if not self._memory:
                _use_wal(conn, busy_timeout)
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn, self.path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _open_error(self.path, exc, busy_timeout) from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._autocheckpoint = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self._lent = False
        """Whether the foreground connection may still have :meth:`at_once`'s settings (no
        busy wait, no WAL checkpoint at a commit): the next use outside it gives the
        store's back first (:meth:`_given_back`), under the store's lock."""
        self._lent_whole = False
        """Whether both of :meth:`at_once`'s settings are in effect (both PRAGMAs ran and
        none was given back since): only then does the next ``at_once`` skip them. A
        Ctrl-C between two PRAGMAs leaves this False and :attr:`_lent` True, so both
        sides set theirs again."""
        # Fixed now the schema is in it (a file its user made in UTF-16 stays so).
        self._codec = CODECS[conn.execute("PRAGMA encoding").fetchone()[0]]
        attach_holds(self._holds)  # until close(): its descriptor stays open till then
        self._inherited = False
        """A forked child's connection is the parent's until its first use (:meth:`_forked`)."""
        self._refused = False
        """A forked child's: a connection was in use at the fork, the store refuses use."""
        self._fork_lock = threading.Lock()  # a leaf: nothing is taken while it is held
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child. SQLite forbids using a connection across fork: its file locks are
        # the parent's (POSIX locks belong to the process), its cache and WAL state too.
        # Nor may the child keep one open beside its own: SQLite keeps one record of the
        # locks per file and process, which the child's connection would share, believing
        # it holds the locks the parent's do: it would then hold none, and the parent's
        # last close would checkpoint and delete the WAL under it (its next write lost,
        # tests/test_fork.py). So the parent's are closed here, which in the child only
        # frees that record: the parent's locks stay (they keep a close from checkpointing).
        # One in use at the fork (its lock held, or a transaction open) cannot be closed (a
        # close would roll back into the WAL index the parent shares) nor kept beside one of
        # the child's (its writes lost, or its write lock the child's for good): it is kept
        # unused, and the store refuses every call in the child (:meth:`_own_connection`).
        # The child's first call opens its own. A private in-memory database is the child's
        # copy: it stays. A parent's thread may have held the locks.
        fg_idle = self._lock.acquire(blocking=False)
        bg_idle = self._bg_lock.acquire(blocking=False)
        self._lock = threading.RLock()
        self._bg_lock = threading.Lock()
        self._fork_lock = threading.Lock()
        self._at_once = None
        self._lean = False
        if self._memory or self._conn is None or self._inherited:
            return  # an inherited connection is the grandparent's: closed or kept already
        for conn, idle in ((self._bg_conn, bg_idle), (self._conn, fg_idle)):
            if conn is not None and (not idle or conn.in_transaction):
                _forks.keep(conn)
                self._refused = True
                key = _file_key(self.path)  # a store opened anew would share its lock record
                if key is not None:
                    _refused_files.add(key)
            elif conn is not None:
                conn.close()
        self._bg_conn = None  # made again when first needed
        self._inherited = True

    def _own_connection(self) -> sqlite3.Connection:
        """A forked child's first use: a connection of its own in place of the parent's.
        Refused when a connection of the parent's to this file (this store's, or another
        store object's) was in use at the fork: the new one would share its lock record."""
        if self._conn is not None and (
            self._refused or (_refused_files and _file_key(self.path) in _refused_files)
        ):
            raise StoreError(_refused_message(self.path))
        with self._fork_lock:
            conn = self._conn
            if self._inherited and conn is not None:
                conn = self._connect(self.busy_timeout)
                conn.execute("PRAGMA synchronous = NORMAL")
                self._lent_whole = False  # (a new connection: the store's settings)
                self._conn, self._inherited, self._lent = conn, False, False
        if conn is None:
            raise StoreClosedError(
                f"store {self.path!r} is closed; open it again with rxcontext.open()"
            )
        return conn

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc, busy_timeout) from exc
        return conn

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}{', closed' if self.closed else ''})"

    # -- plumbing -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._conn is None

    def close(self) -> None:
        """Close the connections (idempotent); this store's heartbeat stops first."""
        self._run_close_hooks()
        with self._lock:
            with self._bg_lock:
                if self._bg_conn is not None:
                    self._bg_conn.close()
                    self._bg_conn = None
            if self._conn is not None:
                if self._lent and not self._inherited:
                    self._given_back(self._conn)  # (its close checkpoints the WAL)
                with self._fork_lock:
                    conn, self._conn = self._conn, None
                    inherited, self._inherited = self._inherited, False
                if not inherited:  # the parent's (a forked child's): closed or kept already
                    conn.close()
                detach_holds(self._holds)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> str:
        """The store clock's time as stored (ISO 8601, UTC whatever the clock's zone)."""
        return rows.stamp(self.clock())

    def _db(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StoreClosedError(
                f"store {self.path!r} is closed; open it again with rxcontext.open()"
            )
        if self._inherited:
            return self._own_connection()
        return conn

    @contextmanager
    def lean(self, db: sqlite3.Connection) -> Iterator[None]:
        """SQLite's page cache of ``db`` (the foreground connection, under its lock) kept
        to :data:`LEAN_CACHE` pages, and the free heap handed back, while a long value is
        written: the cache (2 MB by default) and the pages the allocator keeps count
        against a long reply's peak beside SQLite's two whole copies of it (the zeroed
        placeholder and the row's record), 0.2-0.45x of a 10 MB reply. The blob writes
        go to the WAL a page at a time anyway (a 10 MB value spills the default cache)."""
        if self._lean:
            yield
            return
        cache = db.execute("PRAGMA cache_size").fetchone()[0]
        db.execute(f"PRAGMA cache_size = {LEAN_CACHE}")  # frees the pages above it
        self._lean = True
        try:
            yield
        finally:
            self._lean = False
            db.execute(f"PRAGMA cache_size = {int(cache)}")

    def release_background(self) -> None:
        """Hand back what the background connection's page cache holds (a long reply's
        periodic writes filled it), before a long reply's commit on the foreground one."""
        with self._bg_lock:
            if self._bg_conn is not None:
                self._bg_conn.execute("PRAGMA shrink_memory")

    @contextmanager
    def at_once(self) -> Iterator[bool]:
        """Hold the store for the calling thread if nothing holds it now; yield whether it
        was. Inside, nothing waits and nothing syncs to disk: a lock another process or
        connection holds raises :class:`~rxcontext.StoreBusy` at once (busy timeout 0), a
        commit never checkpoints the WAL, a durable commit, an unbounded read (more than
        :data:`AT_ONCE_RECORDS` records or :data:`AT_ONCE_TOKENS` live tokens, dead
        records, or attachments) raise
        :class:`StoreBusy` too: what raised is done again elsewhere, with the waits. So
        does a caller's lock that another thread holds (:meth:`not_now`): that thread may
        be waiting for this store.

        For the asyncio driver, which opens a reply and reads its history on the event
        loop's thread when this lets it, and in a worker thread otherwise."""
        lock = self._lock
        mine = lock._is_owned()  # type: ignore[attr-defined]  # (re-entrant: ours already?)
        try:
            free = lock.acquire(blocking=False)
        except BaseException:
            # A Ctrl-C as the acquire returned (a handler runs there, before the try below
            # is entered): let go of what it took, or every other thread of the store
            # blocked for good.
            if not mine and lock._is_owned():  # type: ignore[attr-defined]
                lock.release()
            raise
        if not free:
            yield False
            return
        try:
            db = self._conn if self._conn is None else self._db()
            if db is None or self._at_once is not None:  # closed, or this thread is in one
                yield False
                return
            # Set once, and given back lazily: by the next use of the connection outside
            # (``_read``, ``_tx``, ``close``: _given_back), not as this ends. On an asyncio
            # reply's way to its first chunk these are SQLite statements it compiles anew
            # at each run (~11,000 instructions each); given back at its first write
            # outside (its commit, in a worker thread), set again at the next reply's.
            # Marked before they run: a Ctrl-C between them still finds them given back.
            if not self._lent_whole:
                self._lent = True
                db.execute("PRAGMA busy_timeout = 0")
                db.execute("PRAGMA wal_autocheckpoint = 0")
                self._lent_whole = True
            self._at_once = threading.get_ident()
            try:
                yield True
            finally:
                self._at_once = None
        finally:
            lock.release()

    def not_now(self, what: str) -> None:
        """Raise :class:`NotNow` if the calling thread is in :meth:`at_once`: ``what``
        would wait (or sync to disk), which is done again elsewhere. A lock of the caller's
        that another thread may hold while it waits for this store's must be taken
        without waiting in there, and this called if it is taken (lock order: a thread
        in :meth:`at_once` holds the store's lock first)."""
        if self._at_once is not None and self._at_once == threading.get_ident():
            raise NotNow(f"{what}: not at once")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """``with self._read() as db``: the foreground connection under the store's lock;
        an SQLite error in the block raises :class:`~rxcontext.StoreError`. A generator, not
        a class (as :meth:`_tx` is): a Ctrl-C landing just after the lock's acquire, or as
        the block ends, left a class's lock held for good (every other thread of the store
        then blocked), where the generator's ``with`` lets go as it is closed; a read holds
        no signals back (:func:`deferred`), so nothing else covers those two points."""
        with self._lock:
            try:
                db = self._db()
                if self._lent and self._at_once is None:
                    self._given_back(db)
                yield db
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    def _given_back(self, db: sqlite3.Connection) -> None:
        """The store's busy wait and WAL checkpoints on the foreground connection ``db``
        again, after :meth:`at_once` (under the store's lock, outside it)."""
        self._lent_whole = False
        db.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint}")
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        self._lent = False

    def _tx(self, *, durable: bool = False, background: bool = False) -> _Writing:
        """One write transaction, whole or not at all even under Ctrl-C.

        ``durable`` commits with ``synchronous=FULL``. ``background`` writes through the
        background connection, which waits for another process's lock only briefly (the
        caller tries again later) and never holds up the foreground connection.
        """
        return _Writing(self, durable, background)

    def _tx_failed(self, exc: sqlite3.Error, background: bool) -> StoreError:
        """What a write transaction's SQLite error raises."""
        msg = str(exc)
        if "readonly" in msg:
            return StoreError(f"{self.path!r} is read-only: {msg}")
        if "locked" in msg or "busy" in msg:
            return StoreBusy(
                f"{self.path!r} is locked by another process (waited "
                f"{self.busy_timeout if not background else _BG_BUSY:g} s): {msg}"
            )
        return StoreError(f"database error: {msg}")

    def _background(self) -> sqlite3.Connection:
        if self._memory:
            return self._db()
        self._db()  # closed stores refuse background writes too (a forked child's refused)
        if self._bg_conn is None:
            self._bg_conn = self._connect(_BG_BUSY)
            self._bg_conn.execute("PRAGMA synchronous = NORMAL")
        return self._bg_conn

    # -- contexts -------------------------------------------------------------------------

    def get_or_create_context(self, name: str) -> Context:
        """The context called ``name``, created now if missing; ``""`` gets a generated name."""
        if not isinstance(name, str):
            raise TypeError(f"context name must be a str, not {type(name).__name__}")
        name = name or uuid.uuid4().hex
        check_text(name, "context name")  # no database holds it (else the codec's error)
        # Read first: opening a context that exists is no write, and must not wait for
        # another process's write lock (and fail with StoreBusy) as a write would.
        with self._read() as db:
            row = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE name = ?", (name,)
            ).fetchone()
        if row is not None:
            return rows.context(row)
        check_name(name, "context name")
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO contexts (id, name, start_time) VALUES (?, ?, ?)",
                (uuid.uuid4().hex, name, self.now()),
            )
            row = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE name = ?", (name,)
            ).fetchone()
        return rows.context(row)

    def create_context(self, name: str) -> Context:
        """A new context called ``name``; ``ValueError`` if one exists (checked and created
        in one statement: two writers can never both get it)."""
        _name_arg(name)
        check_name(name, "context name")
        context_id = uuid.uuid4().hex
        with self._tx() as db:
            created = db.execute(
                "INSERT OR IGNORE INTO contexts (id, name, start_time) VALUES (?, ?, ?)",
                (context_id, name, self.now()),
            ).rowcount
            if not created:
                raise ValueError(f"a context named {name!r} already exists")
            row = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE id = ?", (context_id,)
            ).fetchone()
        return rows.context(row)

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
        state in one transaction (see :meth:`Store.import_context
        <rxcontext.store.base.Store.import_context>`); ``ValueError`` if the name is taken."""
        _name_arg(name)
        check_name(name, "context name")
        for tool_name, _ in tools:
            check_name(tool_name, "tool name")
        context_id = uuid.uuid4().hex
        totals = usage if usage is not None else Usage()
        with self._tx(durable=True) as db:
            created = db.execute(
                "INSERT OR IGNORE INTO contexts (id, name, start_time, use_server_side_threading,"
                " last_response_id) VALUES (?, ?, ?, ?, ?)",
                (context_id, name, self.now(), int(server_side_threading), last_response_id),
            ).rowcount
            if not created:
                raise ValueError(f"a context named {name!r} already exists")
            first = self._allocate(db, context_id, len(drafts))
            live = 0
            for i, draft in enumerate(drafts):  # one at a time: no list of every record
                record = self._insert(db, context_id, draft, first + i, count=False)
                live += record.est_tokens if record.live else 0
            db.execute(
                "UPDATE contexts SET live_tokens = ?, "
                + ", ".join(f"{f} = ?" for f in rows.USAGE_FIELDS)
                + " WHERE id = ?",
                (live, *usage_counts(totals, rows.USAGE_FIELDS), context_id),
            )
            db.executemany(
                "INSERT INTO context_tools (context_id, tool_name, created_at, definition)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(context_id, tool_name)"
                " DO UPDATE SET definition = excluded.definition",
                [(context_id, n, self.now(), rows.to_json(dict(d))) for n, d in tools],
            )
            row = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE id = ?", (context_id,)
            ).fetchone()
        return rows.context(row)

    def list_contexts(self) -> list[Context]:
        """All contexts, newest first."""
        with self._read() as db:
            found = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts ORDER BY start_time DESC, rowid DESC"
            ).fetchall()
        return [rows.context(r) for r in found]

    def get_context(self, context_id: str) -> Context:
        """The context with this id, or :class:`ContextNotFound`."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE id = ?", (context_id,)
            ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r}")
        return rows.context(row)

    def get_context_by_name(self, name: str) -> Context:
        """The context with this name, or :class:`ContextNotFound`."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context named {name!r}")
        return rows.context(row)

    def delete_context(self, context_id: str) -> None:
        """Delete a context with its records, tools and checkpoints."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM contexts WHERE id = ?", (context_id,))
            if cur.rowcount == 0:
                raise ContextNotFound(f"no context with id {context_id!r}")
            # Bytes no record refers to any more (SQLite's writes are serialised, so no
            # other write can be linking to them meanwhile).
            db.execute(
                "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM record_attachments a"
                " WHERE a.sha256 = blobs.sha256)"
            )

    def clone_context(self, context_id: str, dest_name: str) -> Context:
        """Copy a context's records (positions and timestamps included; not its tools or
        replies in progress) to a new context, marked ``inherited``: the clone's usage
        totals start at 0 and its cost leaves the copied replies out."""
        if not dest_name:
            raise ValueError("the clone needs a name")
        check_name(dest_name, "context name")
        with self._tx() as db:
            src = db.execute("SELECT 1 FROM contexts WHERE id = ?", (context_id,)).fetchone()
            if src is None:
                raise ContextNotFound(f"no context with id {context_id!r}")
            if db.execute("SELECT 1 FROM contexts WHERE name = ?", (dest_name,)).fetchone():
                raise ValueError(f"a context named {dest_name!r} already exists")
            new_id = uuid.uuid4().hex
            # Not the records of replies still being generated: their rounds are not done.
            busy = json.dumps(sorted(self.busy_reply_ids(context_id)))
            copied = (
                "context_id = ? AND (reply_id IS NULL"
                " OR reply_id NOT IN (SELECT value FROM json_each(?)))"
            )
            # The copy is the clone's first change (version 1): every record written
            # carries a version, and one without is refused (migrations.py, m015).
            db.execute(
                "INSERT INTO contexts (id, name, start_time, use_server_side_threading,"
                " last_response_id, next_pos, version, live_tokens) SELECT ?, ?, ?,"
                " use_server_side_threading, last_response_id, next_pos, 1, live_tokens"
                " - (SELECT COALESCE(SUM(est_tokens), 0) FROM records WHERE context_id = ?"
                " AND live AND reply_id IN (SELECT value FROM json_each(?)))"
                " FROM contexts WHERE id = ?",
                (new_id, dest_name, self.now(), context_id, busy, context_id),
            )
            linked = db.execute(
                f"SELECT id FROM records WHERE {copied} AND attachments > 0 ORDER BY pos, id",
                (context_id, busy),
            ).fetchall()
            db.execute(
                "INSERT INTO records (context_id, ts, source, content, live, est_tokens,"
                " response_id, streamed, tool_call_id, tool_name, metadata, pos, attachments,"
                " inherited, rev) SELECT ?, ts, source, content, live, est_tokens, response_id,"
                " streamed, tool_call_id, tool_name, metadata, pos, attachments, 1, 1 FROM records"
                f" WHERE {copied} ORDER BY pos, id",
                (new_id, context_id, busy),
            )
            if linked:
                # Rows are inserted in the SELECT's order, so ids pair up in that order.
                copies = db.execute(
                    "SELECT id FROM records WHERE context_id = ? AND attachments > 0 ORDER BY id",
                    (new_id,),
                ).fetchall()
                blobs.copy_links(db, [(o[0], n[0]) for o, n in zip(linked, copies, strict=True)])
            row = db.execute(
                f"SELECT {rows.CONTEXT_COLUMNS} FROM contexts WHERE id = ?", (new_id,)
            ).fetchone()
        return rows.context(row)

    def export_context(self, context_id: str) -> dict[str, Any]:
        """A context with all its records and tools as JSON-ready dicts, read in one
        transaction: one moment of the database, whatever other processes commit meanwhile
        (as PostgreSQL's export reads in ``REPEATABLE READ``)."""
        with self._read() as db:
            db.execute("BEGIN")  # a read transaction: its first read fixes the snapshot
            try:
                ctx = self.get_context(context_id)
                records = self.records(context_id)
                tools = self.context_tools(context_id)
                stats = self.context_stats(context_id)
            finally:
                db.execute("COMMIT")  # nothing was written: this only ends the snapshot
        return export_document(ctx, records, tools, stats)

    def budget_spent(self, context_id: str, own: str | None, *, records: bool) -> Spending:
        """What a budget check reads of a context (:class:`.base.Spending`), in one read
        transaction: its totals and its unsettled replies' usage (never their text) as of
        one moment, whatever other processes commit meanwhile; its records too if
        ``records``. Reply ``own``'s row is left out."""
        with self._read() as db:
            began = not db.in_transaction  # (in one already: it is the snapshot)
            if began:
                db.execute("BEGIN")  # a read transaction: its first read fixes the snapshot
            try:
                stats = self.context_stats(context_id)
                stored = self.records(context_id) if records else []
                unsettled = self._unsettled(db, context_id, own)
            finally:
                if began:
                    db.execute("COMMIT")  # nothing was written: this only ends the snapshot
        return Spending(stats, stored, unsettled)

    def context_stats(self, context_id: str) -> ContextStats:
        """Aggregate numbers of one context, in one query.

        Its open checkpoints are those :meth:`checkpoints` lists: interrupted replies, live
        ones whose lease ran out (unless their owner holds them for a final write, see
        :mod:`.sqlite_holds`) and leased ones whose owner's process on this host is gone
        (the query gives the live rows, a handful, to ask)."""
        for reread in range(3):
            now = rows.stamp(self.clock())
            with self._read() as db:
                row = db.execute(_CONTEXT_STATS, (now, context_id)).fetchone()
                if row is None:
                    raise ContextNotFound(f"no context with id {context_id!r}")
                live: list[tuple[int, str | None, int]] = json.loads(row[11])
                orphaned = [
                    (cid, owner, leased)
                    for cid, owner, leased in live
                    if (not self._held(cid, owner) if not leased else process_gone(owner))
                ]
                # A row its owner held when read may have been written, and let go, before
                # the hold was asked (its final write: completed, or interrupted): read
                # again while one such row changed (see SQLiteReplies._load).
                if not orphaned or db.in_transaction or reread == 2:
                    break
                again = db.execute(
                    "SELECT id, owner, COALESCE(lease_until > ?, 0) FROM checkpoints"
                    " WHERE context_id = ? AND state IN ('streaming', 'resuming')",
                    (now, context_id),
                ).fetchall()
                if {tuple(o) for o in orphaned} <= {tuple(a) for a in again}:
                    break
        orphans = len(orphaned)
        return ContextStats(
            context_id=row[0],
            name=row[1],
            records=row[2],
            live_records=row[3],
            live_tokens=row[4],
            total_tokens=row[5],
            prompts=row[6],
            replies=row[7],
            tool_calls=row[8],
            tool_outputs=row[9],
            open_checkpoints=row[10] + orphans,
            usage=Usage(*row[12:-1]),
            last_activity=rows.time_of(row[-1]),
        )

    def set_threading(self, context_id: str, enabled: bool) -> None:
        """Turn server-side threading (``previous_response_id``) on or off for a context."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE contexts SET use_server_side_threading = ? WHERE id = ?",
                (int(enabled), context_id),
            )
            if cur.rowcount == 0:
                raise ContextNotFound(f"no context with id {context_id!r}")

    def set_last_response_id(self, context_id: str, response_id: str | None) -> None:
        """Remember the provider's id of the context's last response."""
        with self._tx() as db:
            db.execute(
                "UPDATE contexts SET last_response_id = ? WHERE id = ?", (response_id, context_id)
            )

    # -- records --------------------------------------------------------------------------

    @staticmethod
    def _allocate(db: sqlite3.Connection, context_id: str, n: int = 1) -> int:
        """Reserve ``n`` positions of the context; the first one. Also its existence check,
        its write lock, and a new version of it (records this write changes carry it)."""
        row = db.execute(
            "UPDATE contexts SET next_pos = next_pos + ?, version = version + 1 WHERE id = ?"
            " RETURNING next_pos - ?",
            (n, context_id, n),
        ).fetchone()
        if row is None:
            raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
        return int(row[0])

    @staticmethod
    def _live_tokens(db: sqlite3.Connection, context_id: str, delta: int) -> None:
        if delta:
            db.execute(
                "UPDATE contexts SET live_tokens = live_tokens + ? WHERE id = ?",
                (delta, context_id),
            )

    def _insert(
        self,
        db: sqlite3.Connection,
        context_id: str,
        draft: RecordDraft,
        pos: int,
        reply_id: str | None = None,
        *,
        count: bool = True,
        body_from: long.Long | None = None,
        thinking_from: long.Long | None = None,
    ) -> Record:
        """Insert one record at ``pos``; ``count``: add a live record's tokens to the
        context's total here (a caller that writes the context's row anyway adds them in
        that statement instead). ``body_from``: the content, as pieces written in slices
        (``draft.content`` is not used), read back from the row once written;
        ``thinking_from``: the metadata's ``thinking`` so (its thinking blocks are spans of
        it already), read back from its pieces once written."""
        if not isinstance(draft.content, str):
            raise TypeError(f"record content must be a str, not {type(draft.content).__name__}")
        if thinking_from is not None:
            metadata, read_back = long.json_value({**draft.metadata, "thinking": thinking_from})
        else:
            metadata, read_back = long.json_value(pack(draft.metadata))
        attachments = blobs.checked(draft.attachments)
        content: str | None
        body: str | long.Long
        if body_from is not None:
            content, body = None, body_from
            # Its pieces are storable: its UTF-8 size is what estimate_tokens counts.
            est = sized_record_tokens(body_from.size, attachments)
        else:
            content, size = rows.storable_sized(draft.content)
            # Long values go in a slice at a time (store/_sqlite_long.py): no whole copies.
            body = long.text_value(content)
            est = sized_record_tokens(size, attachments)
        # In UTC, as every time here: an import's local times sort and read as PostgreSQL's.
        ts = rows.stamp(draft.timestamp) if draft.timestamp is not None else self.now()
        cur = db.execute(
            _INSERT_RECORD,
            (
                context_id,
                ts,
                int(draft.type),
                "" if isinstance(body, long.Long) else body,
                int(draft.live),
                est,
                draft.response_id,
                int(draft.streamed),
                draft.tool_call_id,
                draft.tool_name,
                "" if isinstance(metadata, long.Long) else metadata,
                pos,
                reply_id,
                len(attachments),
                int(draft.inherited),
                context_id,
            ),
        )
        assert cur.lastrowid is not None
        codec = self._codec  # the blob handle writes and reads the file's own encoding
        sizes = [long.stored_size(v, codec) for v in (body, metadata) if isinstance(v, long.Long)]
        if sizes:
            with self.lean(db):
                # Sizing the values freed their slices (and a reply's own memory may be free
                # still): hand it back before SQLite's copies of the placeholder.
                let_go(sum(sizes))
                db.execute(
                    _LONG_VALUES[
                        codec == "utf-8",
                        isinstance(body, long.Long),
                        isinstance(metadata, long.Long),
                    ],
                    (*sizes, cur.lastrowid),
                )
                if isinstance(body, long.Long):
                    long.write(db, "records", "content", cur.lastrowid, body, codec)
                if isinstance(metadata, long.Long):
                    long.write(db, "records", "metadata", cur.lastrowid, metadata, codec)
                let_go(sum(sizes))
                if content is None:
                    content = long.read(db, "records", "content", cur.lastrowid, codec)
                if callable(read_back):  # after the writes: not beside SQLite's copies
                    read_back = read_back()
        assert content is not None
        if attachments:
            blobs.save(db, cur.lastrowid, attachments)
        if draft.live and count:
            self._live_tokens(db, context_id, est)
        assert cur.lastrowid is not None
        return Record(
            id=cur.lastrowid,
            context_id=context_id,
            type=RecordType(draft.type),
            content=content,
            live=draft.live,
            est_tokens=est,
            timestamp=rows.read_time(ts),
            response_id=draft.response_id,
            streamed=draft.streamed,
            tool_call_id=draft.tool_call_id,
            tool_name=draft.tool_name,
            metadata=read_back,  # exactly what a read gives back
            pos=pos,
            reply_id=reply_id,
            attachments=tuple(a.stored() for a in attachments),
            inherited=draft.inherited,
        )

    def add_record(self, context_id: str, draft: RecordDraft) -> Record:
        """Append one record (at the context's next position)."""
        with self._tx() as db:
            return self._insert(db, context_id, draft, self._allocate(db, context_id))

    def records(
        self, context_id: str, *, live_only: bool = False, upto: int | None = None
    ) -> list[Record]:
        """A context's records in conversation order (live ones only if asked).

        ``upto`` keeps only positions up to and including it: the history a reply at that
        position was asked after (with that reply's own records).
        """
        self.not_now("all the records")
        where = "context_id = ?"
        args: tuple[Any, ...] = (context_id,)
        if live_only:
            where += " AND live = 1"
        if upto is not None:
            where += " AND pos <= ?"
            args += (upto,)
        with self._read() as db:
            found = db.execute(
                f"SELECT {rows.RECORD_COLUMNS} FROM records WHERE {where} ORDER BY pos, id", args
            ).fetchall()
            return blobs.records_of(db, found)

    def import_records(
        self, context_id: str, drafts: Sequence[RecordDraft], *, usage: Usage | None = None
    ) -> list[Record]:
        """Append ``drafts`` in order, each at its own position, in one transaction."""
        with self._tx(durable=True) as db:
            first = self._allocate(db, context_id, len(drafts))
            out = [
                self._insert(db, context_id, d, first + i, count=False)
                for i, d in enumerate(drafts)
            ]
            sets, args = rows.context_totals(out, usage, None)
            if sets:
                db.execute(f"UPDATE contexts SET {sets} WHERE id = ?", (*args, context_id))
        return out

    def history(self, context_id: str, *, since: int | None = None) -> tuple[int, list[Record]]:
        """The context's version, and its records (live and dead) written or changed since
        version ``since`` (all of them when None), in conversation order."""
        after = -1 if since is None else since
        with self._read() as db:
            if self._at_once is None or self._at_once != threading.get_ident():
                # The version and the records in one statement (one read of one snapshot):
                # on every request's way, where two were a statement's round into sqlite3
                # more (issue 14). No row: no context; a row of NULL record columns: the
                # context with no record changed since.
                found = db.execute(_VERSION_HISTORY, (context_id, after)).fetchall()
                if not found:
                    raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
                version = int(found[0][_VERSION_AT])
                if (since is not None and since >= version) or found[0][0] is None:
                    return version, []
                return version, blobs.records_of(db, found)
            # Dead records come back too (all of them on a window's first read, those just
            # set dead on a later one), and no total bounds their text: none is read here.
            # Counted on ``live`` alone, which a row's header holds (0 and 1 take no bytes
            # of its body), so no record's text is walked through to find it. Asked with
            # the version, in one statement (issue 14: one round into sqlite3 fewer).
            row = db.execute(_AT_ONCE_COUNT, (context_id, after)).fetchone()
            if row is None:
                raise ContextNotFound(f"no context with id {context_id!r} (was it deleted?)")
            version = int(row[0])
            if since is not None and since >= version:
                return version, []
            if int(row[1]) > AT_ONCE_TOKENS:  # a few long records are a long read too
                raise NotNow("a long history: not at once")
            count, live = row[2], row[3]
            if count > AT_ONCE_RECORDS:
                raise NotNow("a long history: not at once")
            if live < count:
                raise NotNow("dead records, of unknown length: not at once")
            found = db.execute(
                _HISTORY + " LIMIT ?", (context_id, after, AT_ONCE_RECORDS + 1)
            ).fetchall()
            if len(found) > AT_ONCE_RECORDS or any(r[14] for r in found):
                raise NotNow("a long history, or attachments: not at once")
            return version, blobs.records_of(db, found)

    def live_tokens(self, context_id: str) -> int:
        """Estimated tokens of the live records (kept on every write, read in one row)."""
        with self._read() as db:
            row = db.execute(
                "SELECT live_tokens FROM contexts WHERE id = ?", (context_id,)
            ).fetchone()
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
        where = "context_id = ? AND live = 1" if live_only else "context_id = ?"
        with self._tx() as db:
            rows_ = db.execute(
                f"SELECT id, live, est_tokens FROM records WHERE {where} ORDER BY pos, id",
                (context_id,),
            ).fetchall()
            if end >= len(rows_):
                raise IndexError(
                    f"record range {start}..{end} is outside 0..{len(rows_) - 1} of this context"
                )
            chosen = rows_[start : end + 1]
            changed = [r for r in chosen if bool(r[1]) != live]
            if changed:
                self._allocate(db, context_id, 0)
                db.executemany(
                    "UPDATE records SET live = ?, rev = (SELECT version FROM contexts"
                    " WHERE id = records.context_id) WHERE id = ?",
                    [(int(live), r[0]) for r in changed],
                )
                tokens = sum(r[2] for r in changed)
                self._live_tokens(db, context_id, tokens if live else -tokens)
                _break_thread(db, context_id)
        return len(chosen)

    def replace_system_prompt(self, context_id: str, content: str) -> Record:
        """Store ``content`` as the system prompt, first in the context; the previous one
        stays as a dead record (as contextwindow keeps it)."""
        with self._tx() as db:
            self._allocate(db, context_id, 0)
            first = db.execute(
                "SELECT MIN(p) FROM (SELECT MIN(pos) AS p FROM records WHERE context_id = ?"
                " UNION ALL SELECT MIN(pos) FROM checkpoints WHERE context_id = ?)",
                (context_id, context_id),
            ).fetchone()[0]
            self._retire(
                db,
                context_id,
                "context_id = ? AND source = ? AND live = 1",
                (context_id, int(RecordType.SYSTEM_PROMPT)),
            )
            pos = first - 1 if first is not None else self._allocate(db, context_id)
            return self._insert(db, context_id, RecordDraft(RecordType.SYSTEM_PROMPT, content), pos)

    def _retire(
        self, db: sqlite3.Connection, context_id: str, where: str, args: tuple[Any, ...]
    ) -> None:
        """Mark the live records matching ``where`` dead (the context already locked)."""
        dead = db.execute(
            f"UPDATE records SET live = 0, rev = (SELECT version FROM contexts"
            f" WHERE id = records.context_id) WHERE {where} RETURNING est_tokens",
            args,
        ).fetchall()
        self._live_tokens(db, context_id, -sum(r[0] for r in dead))

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
        with self._tx() as db:
            self._allocate(db, context_id, 0)
            marks = ",".join("?" * len(ids))
            row = db.execute(
                f"SELECT COUNT(*), MIN(pos) FROM records"
                f" WHERE context_id = ? AND live = 1 AND id IN ({marks})",
                (context_id, *ids),
            ).fetchone()
            if row[0] != len(ids):
                raise ValueError(
                    f"{len(ids) - row[0]} of the {len(ids)} records to replace are no longer "
                    "live in this context (stale summary?); nothing was changed"
                )
            self._retire(db, context_id, f"id IN ({marks})", tuple(ids))
            _break_thread(db, context_id)
            return self._insert(db, context_id, draft, row[1])

    # -- tools ----------------------------------------------------------------------------

    def set_context_tool(self, context_id: str, name: str, definition: Mapping[str, Any]) -> None:
        """Record that ``name`` is available in the context (with its schema)."""
        check_name(name, "tool name")
        with self._tx() as db:
            self._allocate(db, context_id, 0)
            db.execute(
                "INSERT INTO context_tools (context_id, tool_name, created_at, definition)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(context_id, tool_name)"
                " DO UPDATE SET definition = excluded.definition",
                (context_id, name, self.now(), rows.to_json(dict(definition))),
            )

    def context_tools(self, context_id: str) -> list[dict[str, Any]]:
        """Tools recorded for the context, oldest first."""
        with self._read() as db:
            found = db.execute(
                "SELECT tool_name, created_at, definition FROM context_tools"
                " WHERE context_id = ? ORDER BY created_at, id",
                (context_id,),
            ).fetchall()
        return [
            {"name": r[0], "created_at": r[1], "definition": rows.from_json(r[2], {})}
            for r in found
        ]

    def remove_context_tool(self, context_id: str, name: str) -> bool:
        """Forget a tool; whether it was there."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM context_tools WHERE context_id = ? AND tool_name = ?",
                (context_id, name),
            )
            return cur.rowcount > 0


_BG_BUSY = 0.05
"""How long a background checkpoint write waits for another process's lock before it gives
up until the next interval (the stream never waits for it)."""

_HISTORY = (
    f"SELECT {rows.RECORD_COLUMNS} FROM records WHERE context_id = ? AND rev > ? ORDER BY pos, id"
)
"""A context's records changed since a version, in history order (``store.history``)."""

_VERSION_HISTORY = (
    "SELECT "
    + ", ".join(f"r.{c.strip()}" for c in rows.RECORD_COLUMNS.split(","))
    + ", c.version FROM contexts c"
    " LEFT JOIN records r INDEXED BY idx_records_context_rev"
    " ON r.context_id = c.id AND r.rev > ?2"
    " WHERE c.id = ?1 ORDER BY r.pos, r.id"
)
"""The context's version with :data:`_HISTORY`'s rows (its columns, then the version),
read in one statement: one row of NULL record columns when none changed. The records are
found by their change version's index, as :data:`_HISTORY`'s are (the planner would walk
the context's every record in order of position instead, for a join)."""
_VERSION_AT = len(rows.RECORD_COLUMNS.split(","))

_AT_ONCE_COUNT = (
    "SELECT c.version, c.live_tokens, n.count, n.live FROM contexts c,"
    " (SELECT count(*) AS count, coalesce(sum(live), 0) AS live FROM (SELECT live FROM records"
    f" WHERE context_id = ?1 AND rev > ?2 LIMIT {AT_ONCE_RECORDS + 1})) n"
    " WHERE c.id = ?1"
)
"""The context's version and live tokens, and how many records (up to one over the bound)
a history read would return and how many of them are live: read from the index and the
rows' headers, never their text. No row: no context."""


def open_store(path: str | os.PathLike[str] = ":memory:", **kwargs: Any) -> SQLiteStore:
    """Open (creating if missing) the SQLite database at ``path``; ``":memory:"`` works."""
    return SQLiteStore(path, **kwargs)


def _break_thread(db: sqlite3.Connection, context_id: str) -> None:
    """Records changed their live flag (in the write transaction): the server-side thread
    holds what its responses were given, so it may not be continued (see
    :func:`rxcontext.chain.validate_chain`); the next reply starts one again."""
    db.execute("UPDATE contexts SET last_response_id = NULL WHERE id = ?", (context_id,))


def _name_arg(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a context name must be a non-empty str, not {name!r}")


class _Writing:
    """:meth:`SQLiteStore._tx`: signals held (:func:`deferred`), the store's lock (the
    background one for ``background``), ``BEGIN IMMEDIATE``; at the end ``COMMIT``, or
    ``ROLLBACK`` if the block raised; an SQLite error raises :class:`StoreError` (or
    :class:`StoreBusy`). A class, not a ``@contextmanager`` generator: every reply begins
    with one on its way to its first chunk, where the generator's machinery cost about what
    the rest did in Python (issue 14). Signals are held (:func:`deferred`) from before the
    lock is taken until after it is let go, so none can land between (unlike ``_read``)."""

    __slots__ = ("_background", "_db", "_deferred", "_durable", "_lock", "_store")

    def __init__(self, store: SQLiteStore, durable: bool, background: bool) -> None:
        self._store = store
        self._durable = durable
        self._background = background

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        background = self._background
        durable = self._durable
        lock = store._bg_lock if background and not store._memory else store._lock
        if durable:
            store.not_now("a durable commit")
        held = self._deferred = deferred()
        held.__enter__()
        try:  # (as ``with deferred(), lock:``)
            lock.acquire()
            try:
                db = store._background() if background else store._db()
            except BaseException:
                lock.release()
                raise
        except BaseException:
            held.__exit__(None, None, None)
            raise
        self._lock = lock
        self._db = db
        try:
            if store._lent and lock is store._lock and store._at_once is None:
                store._given_back(db)  # (the foreground connection, after at_once)
            if db.in_transaction:  # left open by an earlier failure: never build on it
                db.execute("ROLLBACK")
            if durable:
                db.execute("PRAGMA synchronous = FULL")
            try:
                db.execute("BEGIN IMMEDIATE")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except BaseException as error:
            self.__exit__(type(error), error, None)
            raise
        return db

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        store = self._store
        db = self._db
        try:
            try:
                if exc is None:
                    try:
                        db.execute("COMMIT")
                    except BaseException:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise
                else:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.Error):
                        raise store._tx_failed(exc, self._background) from exc
            except sqlite3.Error as error:
                raise store._tx_failed(error, self._background) from error
            finally:
                if self._durable and store._conn is not None:
                    db.execute("PRAGMA synchronous = NORMAL")
        finally:
            try:
                self._lock.release()
            finally:
                self._deferred.__exit__(None, None, None)
