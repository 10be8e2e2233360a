"""Running one unit of work against PostgreSQL: pool, transaction, retries, clear errors.

Every store call is a *body* run by :class:`Runner`: in one transaction on a pooled
connection (or, for single-statement reads, none). A transient failure (connection lost,
server restarting, serialization failure) is retried with backoff until ``retry_budget``
seconds have passed; then :class:`~rxcontext.StoreError` says so. A transaction is all or
nothing, so a failure never leaves half a write.

A lock the server refused (SQLSTATE 55P03, lock not available: a ``lock_timeout`` the user
set for the database, role or connection ran out while another session held the lock) is
the database being busy, not failing: it is tried again within the same budget, then
:class:`~rxcontext.StoreBusy` says so, as SQLite's busy database does. So does a pool
whose every connection stayed busy with the store's other calls (waited for 1 s at least):
nothing was written and a later attempt succeeds. A reply's final write refused either way
is kept and written once the lock is gone or a connection is free
(:meth:`~rxcontext.persist.ReplyPersister.write_pending`).

A failure *during COMMIT* is ambiguous: the server may have committed. The retry then runs
with ``ambiguous=True`` and the body settles it, after taking the context's row lock (which
waits for any earlier attempt still running on the server): a write carries a commit id and
finds it already stored, so nothing is stored twice and nothing is lost.

The hot writes run ``pipeline=True`` (psycopg's pipeline mode): ``BEGIN``, the setup and the
statements a body sends before it reads a result go in one round trip, and a body that needs
no result before ``COMMIT`` returns :class:`Later` so its last statements and the ``COMMIT``
share one too. Under load every round trip is a wait for the server *and* for this process's
GIL, so a commit's time is mostly its count of round trips. In pipeline mode an error of any
statement can surface at ``COMMIT``: such a failure counts as ambiguous, which only makes the
retry look for its earlier attempt.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

import psycopg
from psycopg import errors as pgerr
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from .. import _forks
from ..errors import PoolBusy, StoreBusy, StoreClosedError, StoreError
from .pg_deadline import BoundedConnection, Unanswered, at_work
from .pg_url import ambiguous, redact_text

_jitter = random.Random()  # its own: retries never draw from (or disturb) the app's global random

__all__ = ["Conn", "Cursor", "Later", "Runner", "Stored", "redact", "transient"]

Conn = psycopg.Connection[Any]
ATTEMPT_BOUND = 1.0
"""Seconds a background attempt waits for the server's answer, whatever the
``retry_budget``: its writes wait for no lock, so a longer silence is a partition
(:mod:`.pg_deadline`). (It was the budget when shorter: ``retry_budget=0`` then cut every
heartbeat write of a healthy store, and a reply's lease ran out.)"""
PATIENCE = 1.0
"""The least seconds a call waits for the server's answer before it asks whether the call
is at work there, and then between asks, and for a pooled connection; ``retry_budget``
when longer. A short budget (0: fail fast) bounds the retries, not a healthy server's
pace: tied to it, every statement of every call opened a probe connection, and a call
finding the pool busy with other calls failed after 50 ms."""
PROBE_BOUND = 0.5
"""Seconds the server has to say whether a silent call is still at work there (after
connecting, which ``connect_timeout`` bounds)."""
Cursor = psycopg.Cursor[Any]
T = TypeVar("T")

_TRANSIENT_STATES = {"57P01", "57P02", "57P03", "40001", "40P01", "53300"}
_TRANSIENT_WORDS = (
    "starting up",
    "shutting down",
    "in recovery mode",
    "not yet accepting connections",
    "too many clients",
)


class Stored(Exception, Generic[T]):
    """Raised inside a body to roll its transaction back and return ``value`` instead.

    Used when a retry finds that an earlier attempt already stored the write.
    """

    def __init__(self, value: T) -> None:
        super().__init__("already stored")
        self.value = value


class Later(Generic[T]):
    """What a pipelined body returns when its value is read from results that come with the
    ``COMMIT`` (``value()`` is called once the transaction committed)."""

    __slots__ = ("value",)

    def __init__(self, value: Callable[[], T]) -> None:
        self.value = value


def _settled(result: Any) -> Any:
    return result.value() if isinstance(result, Later) else result


def _pipelined(
    conn: Conn,
    setup: str | None,
    body: Callable[[Conn, bool], Any],
    ambiguous: bool,
    committing: Callable[[], None],
) -> Any:
    """``body`` in one transaction in pipeline mode: ``BEGIN``, ``setup`` and ``COMMIT`` go
    with its statements (psycopg's ``transaction()`` syncs at its start and at its end: two
    round trips more). ``committing()`` is called once ``COMMIT`` is sent."""
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            if setup is not None:
                conn.execute(setup)
            result = body(conn, ambiguous)
            conn.execute("COMMIT")
            committing()
    except BaseException:
        if conn.pgconn.transaction_status in (_INTRANS, _INERROR):
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        raise
    return _settled(result)


def _nothing() -> None:
    pass


_INTRANS = pq.TransactionStatus.INTRANS
_INERROR = pq.TransactionStatus.INERROR


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away if the same work is tried again shortly."""
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, pgerr.SerializationFailure | pgerr.DeadlockDetected):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    if state is not None:
        return state in _TRANSIENT_STATES or state.startswith("08")
    msg = str(exc)
    # A failed connection attempt carries no SQLSTATE: the server's FATAL (unknown role or
    # database, bad password) is final; refused or reset connections are not.
    return "FATAL" not in msg or any(word in msg for word in _TRANSIENT_WORDS)


UNPARSABLE = "postgresql://(unparsable URL)"
"""What :func:`redact` gives for a URL libpq cannot parse."""


def redact(url: str) -> str:
    """``postgresql://user@host:port/db`` for messages: never the password, nor a piece of
    one that libpq would read as the host, port or database (see :mod:`.pg_url`)."""
    if ambiguous(url):
        return redact_text(url)
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return UNPARSABLE
    user = f"{info['user']}@" if info.get("user") else ""
    host = str(info.get("host") or "")
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}"


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (psycopg adds DETAIL and HINT lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Runner:
    """A connection pool plus the transaction-and-retry loop every store call goes through."""

    def __init__(
        self,
        url: str,
        where: str,
        *,
        pool_size: int,
        retry_budget: float,
        connect_timeout: float,
        kwargs: dict[str, Any],
    ) -> None:
        self.where = where
        self.retry_budget = retry_budget
        self.attempt_bound = ATTEMPT_BOUND
        self.patience = max(retry_budget, PATIENCE)
        self._at_work = at_work(url, kwargs, PROBE_BOUND)
        self._lent: set[Conn] = set()
        """The pooled connections this store's calls hold, or the pool has handed from one
        to the next (:meth:`_lend`): all of them, when a call finds none free, is a pool busy
        with other calls, not a server that cannot be reached."""

        def new_pool() -> ConnectionPool[Conn]:
            return ConnectionPool(
                url,
                connection_class=BoundedConnection,
                kwargs=kwargs,
                min_size=1,
                max_size=pool_size,
                timeout=retry_budget,
                # A server that went away for a while: try again within our own budget's
                # scale, not psycopg_pool's 5 minutes.
                reconnect_timeout=max(retry_budget, connect_timeout) * 2,
                open=True,
                name=f"rxcontext {where}",
            )

        self._new_pool = new_pool
        self._pool: ConnectionPool[Conn] | None = new_pool()
        self._inherited = False
        """A forked child's pool is the parent's until its first use (:meth:`_forked`)."""
        self._fork_lock = threading.Lock()
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child: the pool's connections share their sockets with the parent's
        # sessions and its worker threads run in the parent only. It is never used nor
        # closed here (a close sends each session a Terminate: the parent's would end);
        # the child's first use opens a pool of its own. (libpq's finalizer does nothing
        # in another process than the connection's: dropped, they would be safe too.)
        if self._pool is not None:
            self._inherited = True
            # Its finalizer (at the child's exit) would stop the parent's workers, taking
            # locks a parent's thread may have held at the fork: marked closed, it returns.
            self._pool._closed = True
        self._fork_lock = threading.Lock()
        self._lent = set()  # (held by the parent's threads, none of which runs here)

    @property
    def closed(self) -> bool:
        return self._pool is None

    def close(self) -> None:
        with self._fork_lock:
            pool, self._pool = self._pool, None
            inherited, self._inherited = self._inherited, False
        if inherited:
            _forks.keep(pool)
        elif pool is not None:
            # The pool's threads get as long to stop as a call gets for an answer (1 s at
            # least: a budget of 0 had psycopg_pool warn "couldn't stop thread ... within 0
            # seconds" on every close); 5 s at most, for workers connecting in a partition.
            pool.close(timeout=min(5.0, self.patience))

    def pool(self) -> ConnectionPool[Conn]:
        pool = self._pool
        if pool is None:
            raise StoreClosedError(
                f"store {self.where} is closed; open it again with rxcontext.open()"
            )
        if self._inherited:
            return self._own_pool()
        return pool

    def _own_pool(self) -> ConnectionPool[Conn]:
        """A forked child's first use: a pool of its own in place of the parent's."""
        with self._fork_lock:
            if self._inherited:
                _forks.keep(self._pool)
                self._pool = self._new_pool()
                self._inherited = False
            pool = self._pool
        if pool is None:
            raise StoreClosedError(
                f"store {self.where} is closed; open it again with rxcontext.open()"
            )
        return pool

    @overload
    def run(
        self,
        body: Callable[[Conn, bool], Later[T]],
        *,
        tx: bool = True,
        setup: str | None = None,
        pipeline: bool = False,
    ) -> T: ...

    @overload
    def run(
        self,
        body: Callable[[Conn, bool], T],
        *,
        tx: bool = True,
        setup: str | None = None,
        pipeline: bool = False,
    ) -> T: ...

    def run(
        self,
        body: Callable[[Conn, bool], Any],
        *,
        tx: bool = True,
        setup: str | None = None,
        pipeline: bool = False,
    ) -> Any:
        """Run ``body(conn, ambiguous)``, retrying transient failures within the budget.

        ``tx`` runs it in one transaction (``setup``, e.g. ``SET LOCAL …``, first); without
        it the body runs in autocommit (single-statement reads). ``ambiguous`` is True on a
        retry after a connection was lost during COMMIT. ``pipeline``: in pipeline mode (see
        the module docstring); the body may return :class:`Later`.
        """
        pool = self.pool()
        started = time.monotonic()
        deadline = started + self.retry_budget
        answer_by = started + self.patience  # the deadline, or later for a short budget
        delay = 0.02
        ambiguous = False
        attempts = 0
        committing = False

        def mark() -> None:
            nonlocal committing
            committing = True

        while True:
            attempts += 1
            committing = False
            try:
                # A busy pool (the store's other calls hold every connection) is waited for
                # as the server is: 1 s at least, whatever a shorter budget.
                timeout = max(answer_by - time.monotonic(), 0.05)
                with self._lend(pool, timeout) as conn:
                    # The server may take longer while our session is there (pg_deadline).
                    conn.bound(answer_by, self._at_work, self.patience)
                    try:
                        if not tx:
                            return body(conn, ambiguous)
                        if pipeline:
                            return _pipelined(conn, setup, body, ambiguous, mark)
                        with conn.transaction():
                            if setup is not None:
                                conn.execute(setup)
                            result = body(conn, ambiguous)
                            committing = True
                        return result
                    finally:
                        conn.bound(None)
            except Stored as done:
                return done.value
            except psycopg.Error as exc:
                if not transient(exc) and not isinstance(exc, pgerr.LockNotAvailable):
                    raise StoreError(f"database error on {self.where}: {first_line(exc)}") from exc
                ambiguous = ambiguous or committing
                now = time.monotonic()
                if now + delay >= deadline:
                    raise self._exhausted(exc, attempts, ambiguous, now - started) from exc
                time.sleep(delay * (0.5 + _jitter.random() / 2))
                delay = min(delay * 2, 1.0)
                if self._pool is None:
                    raise StoreClosedError(
                        f"store {self.where} was closed while retrying; nothing more was tried"
                    ) from exc

    def attempt(
        self,
        body: Callable[[Conn, bool], T | Later[T]],
        *,
        setup: str | None = None,
        wait: float = 0.05,
    ) -> T | None:
        """Run ``body`` once, in one pipelined transaction (see the module docstring), for
        background writes that must never wait: None when no connection is free within
        ``wait`` seconds, a lock is busy (the ``setup`` sets a ``lock_timeout``) or the
        server is unreachable, or silent for :attr:`attempt_bound` seconds (a partition:
        the connection is closed, :mod:`.pg_deadline`).

        None does not prove that nothing was written (the connection may have been lost
        during COMMIT): the bodies make their next write settle that.
        """
        pool = self.pool()
        try:
            with self._lend(pool, wait) as conn:
                conn.bound(time.monotonic() + self.attempt_bound)
                try:
                    return _pipelined(conn, setup, body, False, _nothing)  # type: ignore[no-any-return]
                finally:
                    conn.bound(None)
        except Stored as done:
            return done.value  # type: ignore[no-any-return]
        except (pgerr.LockNotAvailable, pgerr.QueryCanceled):
            return None
        except psycopg.Error as exc:
            if transient(exc):
                return None
            raise StoreError(f"database error on {self.where}: {first_line(exc)}") from exc

    @contextlib.contextmanager
    def _lend(self, pool: ConnectionPool[Conn], timeout: float) -> Iterator[BoundedConnection]:
        """A pooled connection (``pool.connection()``), counted in :attr:`_lent` while a call
        of this store holds it, or the pool has handed it to the next.

        It stays counted after it is given back unless it went back idle into the pool (or
        was closed): a call waiting for one is handed it inside ``putconn``, and holds it
        from then on, though its own thread only runs, and counts it, later. Counted from
        then only, a connection passing from call to call looked free in between, so a call
        timing out then on a pool busy all along was told the server was down (a plain
        ``StoreError``), and a reply's final write refused so was dropped.
        """
        lent = self._lent
        given: Conn | None = None
        try:
            with pool.connection(timeout=timeout) as conn:
                assert isinstance(conn, BoundedConnection)
                given = conn
                lent.add(conn)
                yield conn
        finally:
            # Given back: idle, closed, or held by another call (maybe not running yet).
            # Under the pool's own lock: no call takes it from idle between look and discard
            # (psycopg_pool's private ``_lock`` and idle deque ``_pool``, as of 3.3).
            if given is not None:
                with pool._lock:
                    if given.closed or given in pool._pool:
                        lent.discard(given)

    def _exhausted(
        self, exc: BaseException, attempts: int, ambiguous: bool, waited: float
    ) -> StoreError:
        """The error for a call that gave up after ``waited`` seconds: what it waited for,
        that long (more than a budget under :data:`PATIENCE`), and what to do next."""
        budget = self.retry_budget
        floor = f", at least {PATIENCE:g} s is waited" if budget < PATIENCE else ""
        tried = f"retry budget {budget:g} s{floor}; {attempts} attempt{'s' * (attempts != 1)}"
        if isinstance(exc, pgerr.LockNotAvailable) and not ambiguous:
            return StoreBusy(
                f"PostgreSQL at {self.where} refused a lock this write needs: another session"
                f" held it past the lock_timeout, for {waited:.1f} s ({tried};"
                f" {first_line(exc)}); nothing was written. Try again once that session is done"
            )
        outcome = (
            "the connection was lost while committing, so the last write may or may not be"
            " stored: retry it with the same commit_id to settle it"
            if ambiguous
            else "nothing was written"
        )
        if isinstance(exc, PoolTimeout):
            pool = self._pool
            size = pool.max_size if pool is not None else 0
            if size and len(self._lent) >= size:
                # Busy, not failing, as a refused lock is: a reply's final write is kept
                # and written once a connection is free (unless this retry was settling
                # a lost COMMIT: then what is stored is unknown, as for the lock).
                busy = StoreError if ambiguous else PoolBusy
                return busy(
                    f"PostgreSQL at {self.where}: no pooled connection came free in"
                    f" {waited:.1f} s ({tried}): all {size} (pool_size) were busy with this"
                    f" store's other calls; {outcome}. Make fewer calls at once, or open the"
                    " store with a larger pool_size, then try again"
                )
            reason = "no connection could be opened"
        elif isinstance(exc, Unanswered):
            reason = "no answer (a network partition?), the connection was closed"
        else:
            reason = first_line(exc)
        return StoreError(
            f"PostgreSQL at {self.where} did not answer in {waited:.1f} s ({tried}; last"
            f" error: {reason}); {outcome}. Check that the server is up, then try again"
        )


def prepare_with_retry(
    url: str,
    where: str,
    prepare: Callable[[Conn], T],
    *,
    retry_budget: float,
    kwargs: dict[str, Any],
) -> T:
    """``prepare(conn)`` on a direct connection of its own (the store's migrations and
    settings read), all of it retried as :meth:`Runner.run` retries a call: a refused
    connection, or one lost while preparing (a restart, a failover), is tried again from a
    new connection with backoff until ``retry_budget`` seconds have passed.

    ``prepare`` must be safe to run again from its start after a loss at any point
    (:func:`~.pg_migrations.migrate` is: each step is one transaction that reads the steps
    recorded under the schema lock). Unlike a pool, a direct connection shows the server's
    own refusal (unknown database or role, bad password) at once; that and any other error
    no retry can mend raise at once.
    """
    started = time.monotonic()
    deadline = started + retry_budget
    patience = max(retry_budget, PATIENCE)
    delay = 0.02
    while True:
        doing = "connect to"
        try:
            conn = BoundedConnection.connect(url, **kwargs)
            doing = "prepare"
            # A silent server (a partition) ends the attempt at the budget (PATIENCE at
            # least); a step waiting for a lock on a server that answers goes on (see
            # migrate's own lock waits).
            conn.bound(started + patience, at_work(url, kwargs, PROBE_BOUND), patience)
            try:
                return prepare(conn)
            finally:
                conn.close()
        except psycopg.Error as exc:
            if not transient(exc) or time.monotonic() + delay >= deadline:
                raise StoreError(f"cannot {doing} {where}: {first_line(exc)}") from exc
            time.sleep(delay * (0.5 + _jitter.random() / 2))
            delay = min(delay * 2, 1.0)
