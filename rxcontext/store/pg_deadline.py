"""Deadlines for PostgreSQL operations: a silent server never holds a store call for good.

A network partition drops packets without a reset: libpq's read then waits for as long as
the partition lasts (TCP keepalives and ``tcp_user_timeout`` end it only when the kernel
gets no ACK, never behind a proxy or a pooler that keeps the link up). So every store
operation runs with a deadline on its connection (:class:`BoundedConnection`, the pool's
connection class): psycopg's own wait for the socket is given the time left (psycopg ≥ 3.3
waits with a timeout), which costs nothing on the normal path — no thread, no round trip.

When the time is up before the server answered:

* a call (:meth:`Runner.run <.pg_run.Runner.run>`, whose deadline is the end of its
  ``retry_budget``, 1 s at least: :data:`~.pg_run.PATIENCE`) first asks the server, over a
  new connection, whether our session is still there (``pg_stat_activity``). Found, in any
  state, the call goes on waiting: a write waiting for a lock another session holds (final
  writes wait for locks however long, see docs/guarantees.md), a statement at work, or a
  session that has sent its answer which is still on its way (a big result on a slow
  link). Not found on a direct connection (the probe's own pid is the server's
  ``pg_backend_pid()``), the session is gone: its answer, if any, gets a short grace, then
  the call is cut. Not found behind a pooler (PgBouncer gives clients pids of its own: the
  question cannot name our session), the server reachable is all that can be told, and the
  call goes on waiting. A server that refuses the probe's connection (too many
  connections, a role's ``CONNECTION LIMIT``: a lock pile-up uses up connections exactly
  when writes wait) answered, so it is reachable: the call goes on waiting too, as it does
  when the probe connects but its question is not answered within a short bound (queued
  behind a pooler whose server connections the lock waiters hold all, or a slow server: a
  partition stops the connect itself, whose handshake needs the server's replies). Only a
  server the probe cannot connect to within ``connect_timeout`` (or one the network
  refuses: down) is a partition, and behind a pooler that is the pooler: a link lost
  between the pooler and the server is waited on until the pooler ends the call's
  connection;
* a background attempt (:meth:`Runner.attempt <.pg_run.Runner.attempt>`) never asks: its
  writes wait for no lock (``lock_timeout``), so no answer within 1 s (whatever the
  ``retry_budget``: :data:`~.pg_run.ATTEMPT_BOUND`) is a partition.

Then the connection is closed at once (its state on the server is unknown; the pool
discards a closed connection and makes a new one) and :class:`Unanswered` is raised: an
``OperationalError`` with no SQLSTATE, which the runner treats as a lost connection
(retried within the budget, then ``StoreError``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerr
from psycopg.abc import PQGen

__all__ = ["BoundedConnection", "Unanswered", "at_work"]

RV = TypeVar("RV")

_GRACE = 0.5
"""Seconds an answer the server may have sent gets to arrive, once our session is gone there."""
_STILL_THERE = (
    "SELECT (SELECT state FROM pg_stat_activity WHERE pid = %s) IS NOT NULL, pg_backend_pid()"
)


class Unanswered(psycopg.OperationalError):
    """The server did not answer before the operation's deadline: the connection was closed."""


class BoundedConnection(psycopg.Connection[Any]):
    """A connection whose waits for the server end at :attr:`deadline` (monotonic seconds;
    None: no deadline, psycopg's own behaviour). :attr:`at_work`, when set, is asked at the
    deadline whether the server is still working on this connection's statement (then the
    deadline moves ``extend`` seconds on)."""

    deadline: float | None = None
    at_work: Callable[[BoundedConnection], bool | None] | None = None
    extend: float = 0.0

    def bound(
        self,
        deadline: float | None,
        at_work: Callable[[BoundedConnection], bool | None] | None = None,
        extend: float = 0.0,
    ) -> None:
        """Set (or, with None, clear) the deadline of what this connection does next."""
        self.deadline = deadline
        self.at_work = at_work
        self.extend = extend

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        # The hot path of every statement (about ten waits per commit): kept to one call.
        deadline = self.deadline
        if deadline is None or timeout is not None:  # psycopg's own bounded waits stay
            return _psycopg_wait(self, gen, interval, timeout)
        try:
            return _psycopg_wait(self, gen, interval, deadline - _monotonic())
        except pgerr._WaitTimeout:
            return self._late(gen, interval)

    def _late(self, gen: PQGen[RV], interval: float) -> RV:
        """The deadline passed while waiting for the server: wait on while it is at work,
        else close the connection and raise :class:`Unanswered`."""
        graced = False
        while True:
            at_work = None if graced else self.at_work
            working = None if at_work is None else at_work(self)
            if working:
                self.deadline = _monotonic() + self.extend
            elif working is False:
                # Our session is gone from the server: what it sent before is on its way
                # (or lost, the connection broken). Once.
                self.deadline = _monotonic() + _GRACE
                graced = True
            else:
                self.pgconn.finish()  # the pool discards a closed connection
                raise Unanswered(
                    "the server did not answer in time (a network partition?); the"
                    " connection was closed"
                ) from None
            try:
                # The generator waits where it was (psycopg resumes one so after a Ctrl-C).
                return _psycopg_wait(self, gen, interval, self.deadline - _monotonic())
            except pgerr._WaitTimeout:
                pass


_psycopg_wait = psycopg.Connection.wait
_monotonic = time.monotonic


def at_work(
    url: str, kwargs: dict[str, Any], within: float
) -> Callable[[BoundedConnection], bool | None]:
    """A check for :attr:`BoundedConnection.at_work`: on a new connection to ``url``,
    whether the call on the connection asked about may still get its answer.

    True: the server answered and our session is there, in any state (at work, waiting for
    a lock, or idle with its answer still on the way), or it cannot be named (a pooler's
    pid), or the server refused the probe's connection (it answered: it is reachable, our
    session cannot be looked up), or the probe connected and its question was not
    answered within ``within`` (queued behind a pooler, or a slow server): go on waiting.
    False: the server answered and, on a direct connection, our session is gone. None:
    the server could not be connected to within ``connect_timeout``, or only the network
    answered (connection refused or reset): a partition, or a server down.

    Connecting is bounded by ``connect_timeout`` (in ``kwargs``; a slow link's handshake
    and authentication take several round trips), the question after connecting by
    ``within`` seconds. It is asked on a thread of its own, so the caller waits for those
    bounds at most; the thread ends by then too."""
    connect_within = float(kwargs.get("connect_timeout") or 0) or _CONNECT_DEFAULT

    def ask(pid: int, connected: threading.Event, reached: list[bool], answer: list[bool]) -> None:
        try:
            with BoundedConnection.connect(url, **kwargs) as probe:
                reached.append(True)
                connected.set()
                probe.bound(time.monotonic() + within)
                row = probe.execute(_STILL_THERE, (pid,)).fetchone()
                # Behind a pooler the pids clients see are the pooler's own: a session
                # not found is then one the question could not name, not one that is gone.
                pooled = probe.pgconn.backend_pid != (row[1] if row else None)
                answer.append(bool(row and row[0]) or pooled)
        except psycopg.Error as exc:
            # The server refused the probe (too many connections, a role's limit): it
            # answered, so it is reachable; only a network's failure or silence is not.
            if _server_said(exc):
                answer.append(True)
        finally:
            connected.set()

    def check(conn: BoundedConnection) -> bool | None:
        answer: list[bool] = []
        reached: list[bool] = []
        connected = threading.Event()
        thread = threading.Thread(
            target=ask,
            args=(conn.pgconn.backend_pid, connected, reached, answer),
            name="rxcontext-pg-probe",
        )
        thread.daemon = True
        thread.start()
        connected.wait(connect_within + within)  # psycopg's connect_timeout, with a margin
        thread.join(within)
        if answer:
            return answer[0]
        # Connected, the question not answered in time: the server side is reachable (a
        # partition stops the connect: its handshake needs the server's replies), the
        # question is queued (behind a pooler whose server connections are all taken, by
        # the very lock waiters asked about) or the server is slow.
        return True if reached else None

    return check


def _server_said(exc: psycopg.Error) -> bool:
    """Whether ``exc`` carries the server's own word: a SQLSTATE, or a refused connection's
    message from the server (libpq quotes it as ``SEVERITY:  text``, two spaces: "FATAL:
    too many connections for role …"; a connect's failure has no SQLSTATE in psycopg), not
    a failure of the network alone (refused, reset, timed out)."""
    return exc.sqlstate is not None or _SEVERITY.search(str(exc)) is not None


_SEVERITY = re.compile(r"(?:^|: )\w+:  \S", re.MULTILINE)
"""A server's message in libpq's text: its severity (localized: any word), two spaces."""

_CONNECT_DEFAULT = 5.0
"""Seconds the probe's connect may take when ``kwargs`` sets no ``connect_timeout``."""
