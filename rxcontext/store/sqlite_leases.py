"""Leases and stop requests on SQLite: the owner's heartbeat, and ``cw.stop`` from anywhere.

The twin of :mod:`.pg_leases`. Every call names the replies by ticket (row and epoch), so a
writer that lost its reply (claimed by another worker, settled) renews nothing and is told
so; a stop request names the epoch it stops, so a later claim is never stopped by it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from ..errors import ReplyNotFound, StoreBusy
from . import sqlite_holds
from .base import ReplyTicket

__all__ = ["SQLiteLeases"]

_STOPPED = (
    "SELECT c.id, c.stop_epoch FROM json_each(?) AS j JOIN checkpoints AS c ON c.id = j.value"
    " WHERE c.stop_epoch IS NOT NULL"
)
"""The stop requests among the rows ``[id, ...]`` (JSON) name."""

_RENEW = (
    "UPDATE checkpoints SET lease_until = ? WHERE id = ? AND epoch = ?"
    " AND state IN ('streaming', 'resuming') AND lease_until > ?"
)
_RENEW_ALL = (
    "UPDATE checkpoints SET lease_until = ? FROM json_each(?) AS j"
    " WHERE checkpoints.id = json_extract(j.value, '$[0]')"
    " AND checkpoints.epoch = json_extract(j.value, '$[1]')"
    " AND checkpoints.state IN ('streaming', 'resuming') AND checkpoints.lease_until > ?"
)
""":data:`_RENEW` for many replies in one statement: ``[[id, epoch], ...]`` as JSON."""


class SQLiteLeases:
    """Lease and stop methods of :class:`~rxcontext.store.sqlite.SQLiteStore`."""

    if TYPE_CHECKING:
        from ..records import Checkpoint

        _close_hooks: list[Callable[[], None]]
        _holds: str | None

        def _lease(self) -> str: ...
        def now(self) -> str: ...
        def _tx(
            self, *, durable: bool = False, background: bool = False
        ) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def find_reply(self, reply_id: str) -> Checkpoint | None: ...
        def _db(self) -> sqlite3.Connection: ...

    def renew_replies(self, tickets: Sequence[ReplyTicket]) -> list[bool] | None:
        """Extend the lease of each reply its ticket still owns; False for the lost ones
        (a lease that ran out is not renewed: others may have seen the reply interrupted);
        None when another process holds the write lock (try again soon)."""
        if not tickets:
            return []
        # One statement for all (each statement gives up the GIL and takes it back from a
        # busy event loop), its rows built before the database is locked.
        rows = json.dumps([(t.checkpoint_id, t.epoch) for t in tickets])
        n = len(tickets)
        try:
            with self._tx(background=True) as db:
                now = self.now()
                lease = self._lease()
                # When every lease is renewed, as it nearly always is, that is all; else
                # find the lost ones, one by one (renewing the others again).
                if n > 1 and db.execute(_RENEW_ALL, (lease, rows, now)).rowcount == n:
                    return [True] * n
                return [
                    db.execute(_RENEW, (lease, t.checkpoint_id, t.epoch, now)).rowcount == 1
                    for t in tickets
                ]
        except StoreBusy:
            return None

    def hold_reply(self, ticket: ReplyTicket) -> Callable[[], None]:
        """Keep the reply this process's for every reader, whatever its lease, until the
        returned call: its final write is under way, or pending (see :mod:`.sqlite_holds`)."""
        self._db()  # a closed store refuses, as it refuses every call
        return sqlite_holds.hold(self._holds, ticket.checkpoint_id)

    def request_stop(self, reply_id: str) -> bool:
        """Ask the owner of live reply ``reply_id`` to stop it (see :meth:`Store.request_stop`)."""
        cp = self.find_reply(reply_id)
        if cp is None:
            with self._read() as db:
                done = db.execute(
                    "SELECT 1 FROM records WHERE reply_id = ? LIMIT 1", (reply_id,)
                ).fetchone()
            if done:
                return False
            raise ReplyNotFound(f"no reply {reply_id!r} in this store (a typo, or another store)")
        if not cp.state.live:
            return False  # finished, interrupted, or its owner is gone: nothing runs
        with self._tx() as db:
            return (
                db.execute(
                    "UPDATE checkpoints SET stop_epoch = epoch WHERE id = ? AND epoch = ?"
                    " AND state IN ('streaming', 'resuming')",
                    (cp.id, cp.epoch),
                ).rowcount
                == 1
            )

    def stop_requests(self, tickets: Sequence[ReplyTicket]) -> list[int]:
        """The checkpoint ids, among ``tickets``, whose run was asked to stop."""
        if not tickets:
            return []
        # One statement, whatever the number of replies (the heartbeat asks every 0.25 s for
        # all of them; nearly always none was asked to stop).
        ids = json.dumps([t.checkpoint_id for t in tickets])
        with self._read() as db:
            found = db.execute(_STOPPED, (ids,)).fetchall()
        if not found:
            return []
        wanted = {(t.checkpoint_id, t.epoch) for t in tickets}
        return sorted({cid for cid, epoch in found if (cid, epoch) in wanted})

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when the store closes, before its connections go (once)."""
        self._db()  # a closed store refuses hooks, as it refuses calls
        self._close_hooks.append(hook)

    def _run_close_hooks(self) -> None:
        hooks, self._close_hooks[:] = list(self._close_hooks), []
        for hook in hooks:
            hook()
