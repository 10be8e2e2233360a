"""Leases and stop requests on PostgreSQL: the owner's heartbeat, and ``cw.stop`` from anywhere.

The twin of :mod:`.sqlite_leases`. Leases are timed by the database's clock (one clock for
every host). Renewals are background writes that never wait (``lock_timeout``, no free
connection: None, and the heartbeat tries again shortly); a stop request is an ordinary
write, retried within the store's budget.

A renewal whose connection is lost during ``COMMIT`` may or may not be written. It is
settled by reading the lease rows back: each one that still has the ticket's epoch and a
lease at least as long as the one the renewal set (its ``RETURNING`` came before the
``COMMIT``) is renewed. Taking it for unwritten made the heartbeat give up a reply whose
lease was fresh (``tests/test_pg_lease_ambiguous.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ReplyNotFound
from .base import ReplyTicket
from .pg_codec import enc
from .pg_writes import one_owner

if TYPE_CHECKING:
    from ..records import Checkpoint
    from .pg_run import Conn, Runner

__all__ = ["PostgresLeases", "renew_statement"]

_BACKGROUND = (
    "SELECT set_config('synchronous_commit', 'off', true), set_config('lock_timeout', '50ms', true)"
)


_RENEW = (
    "UPDATE checkpoints c SET lease_until = clock_timestamp() + make_interval(secs => %s)"
    " FROM unnest(%s::bigint[], %s::integer[]) AS t(id, epoch)"
    " WHERE c.id = t.id AND c.epoch = t.epoch AND c.state IN ('streaming', 'resuming')"
    " AND c.lease_until > clock_timestamp() RETURNING c.id, c.epoch, c.lease_until"
)
_SETTLE = (
    "SELECT c.id, c.epoch FROM checkpoints c"
    " JOIN unnest(%s::bigint[], %s::integer[], %s::timestamptz[]) AS t(id, epoch, lease_until)"
    " ON c.id = t.id AND c.epoch = t.epoch AND c.lease_until >= t.lease_until"
    " WHERE c.state IN ('streaming', 'resuming')"
)
_RENEW_OWNED = _RENEW.replace(" WHERE c.id = t.id", " WHERE c.owner = %s AND c.id = t.id")


def renew_statement(
    tickets: Sequence[ReplyTicket], lease_ttl: float
) -> tuple[str, tuple[Any, ...]]:
    """The lease renewal of ``tickets`` and its parameters, narrowed to their owner when
    they name one (as :func:`~.pg_writes.batch_statement`: not every live reply read)."""
    params: tuple[Any, ...] = (
        lease_ttl,
        [t.checkpoint_id for t in tickets],
        [t.epoch for t in tickets],
    )
    owner = one_owner(tickets)
    if owner is None:
        return _RENEW, params
    return _RENEW_OWNED, (*params, owner)


class PostgresLeases:
    """Lease and stop methods of :class:`~rxcontext.store.postgres.PostgresStore`."""

    if TYPE_CHECKING:
        _runner: Runner
        lease_ttl: float
        _close_hooks: list[Callable[[], None]]

        def find_reply(self, reply_id: str) -> Checkpoint | None: ...

    def hold_reply(self, ticket: ReplyTicket) -> Callable[[], None]:
        """Nothing to hold here (see :meth:`Store.hold_reply`): a final write on PostgreSQL
        waits for the locks it needs however long, unless the user set a ``lock_timeout``
        (database, role or connection): then a lock held past it refuses the write
        (``StoreBusy``, after retries within ``retry_budget``) and the write is kept
        pending, as on SQLite; so is a write that found every pooled connection busy with
        the store's other calls. The reply's lease stays renewed meanwhile: renewals lock
        only the reply's own row, which no final write of another holds for long (a
        session that locks that row itself past the lease is not covered; nor is a pool
        kept busy past the lease, which starves every renewal of the store). A failure to
        reach the server is not a wait: the write is given up (``StoreError``)."""
        self._runner.pool()  # a closed store refuses, as it refuses every call
        return _nothing

    def renew_replies(self, tickets: Sequence[ReplyTicket]) -> list[bool] | None:
        """Extend the lease of each reply its ticket still owns; False for the lost ones
        (a lease that ran out is not renewed: others may have seen the reply interrupted);
        None when the database could not be reached without waiting (try again soon)."""
        if not tickets:
            return []
        sent: list[list[Any]] = []  # what the renewal set, read before its COMMIT

        def renew(conn: Conn, _: bool) -> list[Any]:
            rows = conn.execute(*renew_statement(tickets, self.lease_ttl)).fetchall()
            sent.append(rows)
            return rows

        found = self._runner.attempt(renew, setup=_BACKGROUND)
        if found is None:
            if not sent:
                return None  # refused or unreachable before its COMMIT: nothing written
            # Lost during COMMIT; a renewal that matched no row changed nothing anyway.
            found = self._settle(sent[0]) if sent[0] else []
            if found is None:
                return None
        # By epoch too: an old ticket beside its reply's new one in this call was not renewed.
        renewed = {(row[0], row[1]) for row in found}
        return [(t.checkpoint_id, t.epoch) in renewed for t in tickets]

    def _settle(self, sent: list[Any]) -> list[Any] | None:
        """The rows of ``sent`` (a renewal's ``RETURNING``, its ``COMMIT`` unanswered) whose
        lease is stored at least as long (the renewal committed, or a later write of this
        owner renewed it since); None if not all are, or the rows cannot be read now.

        Not all: had the renewal committed, only a claim since could undo it, and had it
        not, a lease that is still fresh would be read as lost. The heartbeat then tries
        again, as after any renewal that could not be written. The read may wait a little
        for a connection (the lost one is being replaced): up to a sixth of the lease,
        half the time between two renewals."""
        rows = self._runner.attempt(
            lambda conn, _: conn.execute(
                _SETTLE,
                ([r[0] for r in sent], [r[1] for r in sent], [r[2] for r in sent]),
            ).fetchall(),
            wait=self.lease_ttl / 6,
        )
        if rows is None or len(rows) < len(sent):
            return None
        return rows

    def request_stop(self, reply_id: str) -> bool:
        """Ask the owner of live reply ``reply_id`` to stop it (see :meth:`Store.request_stop`)."""
        cp = self.find_reply(reply_id)
        if cp is None:
            done = self._runner.run(
                lambda conn, _: conn.execute(
                    "SELECT 1 FROM records WHERE reply_id = %s LIMIT 1", (enc(reply_id),)
                ).fetchone(),
                tx=False,
            )
            if done:
                return False
            raise ReplyNotFound(f"no reply {reply_id!r} in this store (a typo, or another store)")
        if not cp.state.live:
            return False  # finished, interrupted, or its owner is gone: nothing runs
        stopped = self._runner.run(
            lambda conn, _: conn.execute(
                "UPDATE checkpoints SET stop_epoch = epoch WHERE id = %s AND epoch = %s"
                " AND state IN ('streaming', 'resuming') RETURNING id",
                (cp.id, cp.epoch),
            ).fetchone(),
        )
        return stopped is not None

    def stop_requests(self, tickets: Sequence[ReplyTicket]) -> list[int]:
        """The checkpoint ids, among ``tickets``, whose run was asked to stop (none while
        the server cannot be reached at once)."""
        if not tickets:
            return []
        ids = [t.checkpoint_id for t in tickets]
        epochs = [t.epoch for t in tickets]
        # A poll never waits for the server: unreachable now, it asks again at the next one.
        found = self._runner.attempt(
            lambda conn, _: conn.execute(
                "SELECT c.id FROM checkpoints c"
                " JOIN unnest(%s::bigint[], %s::integer[]) AS t(id, epoch)"
                " ON c.id = t.id AND c.stop_epoch = t.epoch",
                (ids, epochs),
            ).fetchall(),
        )
        return sorted(row[0] for row in found or ())

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when the store closes, before its connections go (once)."""
        self._runner.pool()  # a closed store refuses hooks, as it refuses calls
        self._close_hooks.append(hook)

    def _run_close_hooks(self) -> None:
        hooks, self._close_hooks[:] = list(self._close_hooks), []
        for hook in hooks:
            hook()


def _nothing() -> None:
    pass
