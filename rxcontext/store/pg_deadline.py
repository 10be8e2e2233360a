"""Deadlines for PostgreSQL operations: a silent server never holds a store call for good.

A network partition drops packets without a reset: libpq's read then waits for as long as
the partition lasts (TCP keepalives and ``tcp_user_timeout`` end it only when the kernel
gets no ACK, never behind a proxy or a pooler that keeps the link up). So every store
operation runs with a deadline on its connection (:class:`BoundedConnection`, the pool's
connection class): psycopg's own wait for the socket is given the time left (psycopg ≥ 3.3
waits with a timeout), which costs nothing on the normal path — no thread, no round trip.

When the time is up before the server answered:

* a call (:meth:`Runner.run <.pg_run.Runner.run>`, whose deadline is the end of its
  ``retry_budget``) first asks the server, over a new connection, whether our session is
  still at work there (``pg_stat_activity``): a write waiting for a lock another session
  holds is, and goes on waiting (final writes wait for locks however long, see
  docs/guarantees.md); a session that is idle, gone, or a server that does not answer
  the question at once is a partition;
* a background attempt (:meth:`Runner.attempt <.pg_run.Runner.attempt>`) never asks: its
  writes wait for no lock (``lock_timeout``), so no answer in time is a partition.

Then the connection is closed at once (its state on the server is unknown; the pool
discards a closed connection and makes a new one) and :class:`Unanswered` is raised: an
``OperationalError`` with no SQLSTATE, which the runner treats as a lost connection
(retried within the budget, then ``StoreError``).
"""

from __future__ import annotations

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
"""Seconds an answer the server has sent gets to arrive, once the server says it is done."""
_STILL_AT_WORK = "SELECT state = 'active' FROM pg_stat_activity WHERE pid = %s"


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
                # The server answered the question, so it had sent its answer to ours
                # before: that is on its way (or lost, the connection broken). Once.
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
    whether the server still runs the statement of the connection asked about (waiting for
    a lock included); None when it cannot tell within ``within`` seconds (a partition).

    The question is asked on a thread of its own, so the caller waits ``within`` at most:
    connecting has no shorter bound than psycopg's ``connect_timeout`` (2 s at least), and
    a partition holds a connect that long. The thread ends by then."""

    def ask(pid: int, answer: list[bool]) -> None:
        try:
            with BoundedConnection.connect(url, **kwargs) as probe:
                probe.bound(time.monotonic() + within)
                row = probe.execute(_STILL_AT_WORK, (pid,)).fetchone()
        except psycopg.Error:
            return
        answer.append(bool(row and row[0]))

    def check(conn: BoundedConnection) -> bool | None:
        answer: list[bool] = []
        thread = threading.Thread(
            target=ask, args=(conn.pgconn.backend_pid, answer), name="rxcontext-pg-probe"
        )
        thread.daemon = True
        thread.start()
        thread.join(within)
        return answer[0] if answer else None

    return check
