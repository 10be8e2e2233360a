"""The reply lifecycle on PostgreSQL: begin, checkpoint, commit, claim, keep, discard.

The twin of :mod:`.sqlite_replies`, for a database shared by many hosts:

* Every write takes the reply's context row lock first (as every write to a context does),
  so writes to one context are serialised and never deadlock on each other — except the
  periodic checkpoint batch, which locks only the reply rows it writes (with a
  ``lock_timeout``: it gives up rather than wait), so it neither waits for nor holds up the
  commits of its replies' contexts; a claim, keep or discard locks the reply's row before
  it reads its text.
* Writes are fenced: ``WHERE id = … AND epoch = … AND state IN ('streaming', 'resuming')``.
  Once another worker has claimed the reply (next epoch) or it was settled, the old
  writer's writes change nothing; its commit raises :class:`~rxcontext.OwnershipLost`.
* Owners are worker ids (:mod:`.owner`); a live reply whose owner is gone reads as
  ``INTERRUPTED``: on the owner's host at once (the process table), elsewhere once its lease
  (renewed by the owner's heartbeat, timed by the database's clock) has run out. Claims,
  keeps and discards take such a reply over with the next epoch, as one compare-and-set on
  the epoch and state that were read, so of several racing callers exactly one wins.
* Checkpoint text is appended in parts (:mod:`.pg_writes`). Periodic writes
  (:meth:`PostgresReplies.save_checkpoints`) are one statement over arrays, in one
  pipelined transaction with ``synchronous_commit = off`` that never waits: busy locks, no
  free connection or an unreachable server give None. What a crash or a cut-off COMMIT
  makes of them is repaired by the next write (:class:`~.pg_writes.Ledger`).
* A write retried after its COMMIT was cut off recognises its own earlier attempt (the
  row's ``last_write``, a commit's ``commit_id``) and is not applied twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..chunks import Usage
from ..errors import (
    CheckpointNotFound,
    ContextNotFound,
    OwnershipLost,
    ReplyExists,
    StoreBusy,
)
from ..records import Checkpoint, Record, RecordType, ReplyState
from . import _pg_rows as rows
from ._pg_rows import (
    Draft,
    impossible_id,
    live_tokens_of,
    lock_context,
    locked,
    send_lock,
    send_records,
)
from .base import (
    IN_PROGRESS,
    ORPHANED,
    UNSETTLED_USAGE,
    CheckpointDraft,
    RecordDraft,
    ReplyEnd,
    ReplyTicket,
    check_name,
    checkpoint_key,
    discarded_draft,
    kept_metadata,
    settle_refusal,
    unsettled_spending,
    usage_counts,
)
from .owner import owner_alive
from .pg_codec import dec, enc, enc_opt
from .pg_run import Conn, Later, Stored
from .pg_writes import WRITE, CheckpointWrite, Ledger, batch_statement

if TYPE_CHECKING:
    from .pg_run import Runner

__all__ = ["PostgresReplies"]

_Then = Callable[[Conn, Checkpoint, str, bool], Any]

_LIVE = ("streaming", "resuming")
_ACTIVE = "c.context_id = %s AND c.state IN ('streaming', 'resuming')"
"""The rows of a context's replies being generated (their owners' leases still checked)."""
_PARTS = (
    "COALESCE((SELECT string_agg(p.{0}, '' ORDER BY p.seq) FROM checkpoint_parts p"
    " WHERE p.checkpoint_id = checkpoints.id), '')"
)
"""The ``text`` (or ``thinking``) of a row's appended parts, joined, inside an ``UPDATE
checkpoints`` (as :data:`~._pg_rows.CHECKPOINT_SELECT` joins them)."""
_BACKGROUND = (
    "SELECT set_config('synchronous_commit', 'off', true), set_config('lock_timeout', '50ms', true)"
)
"""Periodic writes (``SET LOCAL``): not waiting for the WAL flush, nor more than 50 ms for a
lock (then they give up until the next interval; the stream never waits for them)."""
_ONCE = "SELECT set_config('lock_timeout', '50ms', true)"
"""A final write tried once by the heartbeat (``SET LOCAL``): durable, but not waiting more
than 50 ms for a lock (it is tried again at the next poll; renewals never wait for it)."""


def busy_in(conn: Conn, context_id: str) -> set[str]:
    """The ids of the replies being generated in a context, read on ``conn`` (inside a
    transaction that has locked the context, the answer holds until it ends)."""
    if impossible_id(context_id):
        return set()
    found = conn.execute(
        "SELECT c.reply_id, c.owner, c.lease_until, clock_timestamp()"
        f" FROM checkpoints c WHERE {_ACTIVE}",
        (context_id,),
    ).fetchall()
    return {
        dec(r)
        for r, owner, lease, now in found
        if owner_alive(owner, rows.utc_opt(lease), rows.utc(now))
    }


class PostgresReplies:
    """Reply lifecycle methods of :class:`~rxcontext.store.postgres.PostgresStore`."""

    if TYPE_CHECKING:
        _runner: Runner
        _durable: str | None
        lease_ttl: float

    def __init__(self) -> None:
        self._ledger = Ledger()

    # -- reading --------------------------------------------------------------------------

    @staticmethod
    def _load(row: Sequence[Any]) -> Checkpoint:
        cp = rows.checkpoint(row)
        if cp.state.live and not owner_alive(cp.owner, rows.utc_opt(row[18]), rows.utc(row[19])):
            # Its process is gone (or stopped renewing its lease): say what the next claim,
            # keep or discard will make of it.
            return _as_orphan(cp)
        return cp

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Checkpoint]:
        found = self._runner.run(
            lambda conn, _: conn.execute(
                f"{rows.CHECKPOINT_SELECT} WHERE {where}", args
            ).fetchall(),
            tx=False,
        )
        return [self._load(r) for r in found]

    def get_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """One reply's checkpoint by id, or :class:`CheckpointNotFound`."""
        found = self._select("c.id = %s", (checkpoint_key(checkpoint_id),))
        if not found:
            raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
        return found[0]

    def find_reply(self, reply_id: str) -> Checkpoint | None:
        """The row of reply ``reply_id``, or None (never begun, or completed without a cut)."""
        found = self._select("c.reply_id = %s", (enc(reply_id),))
        return found[0] if found else None

    def reply_records(self, reply_id: str) -> list[Record]:
        """The records reply ``reply_id`` stored, in order (empty if none yet)."""
        return self._runner.run(
            lambda conn, _: rows.records_of(
                conn,
                conn.execute(
                    f"SELECT {rows.RECORD_COLUMNS} FROM records WHERE reply_id = %s"
                    " ORDER BY pos, id",
                    (enc(reply_id),),
                ).fetchall(),
            ),
            tx=False,
        )

    def reply_state(self, reply_id: str) -> tuple[Checkpoint | None, list[Record]]:
        """What :meth:`find_reply` and :meth:`reply_records` answer, consistent with each
        other (no commit of the reply between the two), on one connection in one round trip
        (a pipeline): a watcher's look at the store is one pool checkout, not three (many
        watchers share a pool)."""
        key = (enc(reply_id),)
        of_records = (
            f"SELECT {rows.RECORD_COLUMNS} FROM records WHERE reply_id = %s ORDER BY pos, id"
        )
        of_row = f"{rows.CHECKPOINT_SELECT} WHERE c.reply_id = %s"

        def read(conn: Conn, _: bool) -> tuple[list[Any], list[Record]]:
            while True:  # records, row, records: the same records twice: no commit between
                with conn.pipeline():
                    first = conn.execute(of_records, key)
                    row = conn.execute(of_row, key)
                    last = conn.execute(of_records, key)
                before, found, after = first.fetchall(), row.fetchall(), last.fetchall()
                if [r[0] for r in before] == [r[0] for r in after]:
                    return found, rows.records_of(conn, after)

        found, stored = self._runner.run(read, tx=False)
        return (self._load(found[0]) if found else None), stored

    def checkpoints(self, context_id: str, *, include_resolved: bool = False) -> list[Checkpoint]:
        """Interrupted replies of a context in conversation order (settled ones too if asked).

        A reply whose process died (or, on another host, whose lease ran out) is listed as
        interrupted (its row changes at the next claim, keep or discard).
        """
        if impossible_id(context_id):
            return []
        found = self._select(
            "c.context_id = %s ORDER BY c.pos, c.id"
            if include_resolved
            else "c.context_id = %s AND c.state IN ('interrupted', 'streaming', 'resuming')"
            " ORDER BY c.pos, c.id",
            (context_id,),
        )
        return [cp for cp in found if include_resolved or cp.state is ReplyState.INTERRUPTED]

    def active_replies(self, context_id: str) -> list[Checkpoint]:
        """Replies being generated now in a context (``STREAMING`` or ``RESUMING``)."""
        if impossible_id(context_id):
            return []
        found = self._select(f"{_ACTIVE} ORDER BY c.pos, c.id", (context_id,))
        return [cp for cp in found if cp.state.live]

    @staticmethod
    def _unsettled(conn: Conn, context_id: str, own: str | None) -> list[Any]:
        """The usage and metadata of the context's unsettled replies (those with usage),
        ``own``'s left out: never their text (a long reply's, or one streaming now)."""
        found = conn.execute(UNSETTLED_USAGE.format(param="%s"), (context_id,)).fetchall()
        return unsettled_spending(found, own, rows.unjson, dec)

    def busy_reply_ids(self, context_id: str) -> set[str]:
        """The ids of :meth:`active_replies`, without reading their rows' text (a request
        asks for them: a long reply streaming in the context cost every request its text)."""
        return self._runner.run(lambda conn, _: busy_in(conn, context_id), tx=False)

    # -- writing --------------------------------------------------------------------------

    def begin_reply(self, context_id: str, reply_id: str, *, owner: str) -> Checkpoint:
        """Reserve the next position for a reply and create its ``STREAMING`` row (epoch 1)."""
        if not isinstance(reply_id, str) or not reply_id:
            raise TypeError("reply_id must be a non-empty str")
        check_name(reply_id, "reply id")  # a lone surrogate too, before the transaction
        rid = enc(reply_id)
        token = uuid.uuid4().hex

        def body(conn: Conn, ambiguous: bool) -> Checkpoint:
            if ambiguous:  # our first try may have landed: find it under the context lock
                lock_context(conn, context_id)
                mine = conn.execute(
                    f"{rows.CHECKPOINT_SELECT} WHERE c.reply_id = %s AND c.last_write = %s",
                    (rid, token),
                ).fetchone()
                if mine is not None:
                    raise Stored(rows.checkpoint(mine))
            # One round trip (with BEGIN): the lock takes the position, the insert reads it
            # from the locked row; an id already used inserts nothing (and rolls back).
            locking = send_lock(conn, context_id, 1)
            inserting = conn.execute(
                "INSERT INTO checkpoints (context_id, reply_id, state, pos, owner, epoch,"
                " lease_until, created_at, updated_at, last_write)"
                " SELECT c.id, %s, 'streaming', c.next_pos - 1, %s, 1,"
                " n.now + make_interval(secs => %s), n.now, n.now, %s"
                " FROM contexts c, (SELECT clock_timestamp() AS now) n WHERE c.id = %s"
                " AND NOT EXISTS (SELECT 1 FROM records WHERE reply_id = %s)"
                f" ON CONFLICT (reply_id) DO NOTHING RETURNING {rows.CHECKPOINT_COLUMNS}",
                (rid, owner, self.lease_ttl, token, context_id, rid),
            )
            locked(locking, context_id)
            row = inserting.fetchone()
            if row is None:  # the transaction rolls back: no position was taken
                raise ReplyExists(f"reply id {reply_id!r} was already used (reply ids are unique)")
            return rows.checkpoint(row)

        begun: Checkpoint = self._runner.run(body, pipeline=True)
        self._ledger.start(begun.id)
        return begun

    def _lock_for(self, conn: Conn, checkpoint_id: int) -> str | None:
        """Take the context lock of a reply's context; its id, or None if the reply is gone."""
        found = conn.execute(
            "SELECT context_id FROM checkpoints WHERE id = %s", (checkpoint_id,)
        ).fetchone()
        if found is None:
            return None
        try:
            lock_context(conn, found[0])
        except ContextNotFound:
            return None
        return str(found[0])

    def save_checkpoint(
        self,
        ticket: ReplyTicket,
        draft: CheckpointDraft,
        *,
        state: ReplyState | None = None,
        wait: bool = True,
    ) -> bool:
        """Write ``draft`` into the reply's checkpoint (appending its text); False if fenced.

        Commits with the server's ``synchronous_commit`` (on by default): this is the write
        that interrupts a reply, before ``on_error`` reaches the subscriber. ``wait=False``:
        one attempt, waiting at most 50 ms for a lock or a connection (StoreBusy if not).
        """
        write = CheckpointWrite(ticket, draft, state)

        def body(conn: Conn, ambiguous: bool) -> bool:
            if self._lock_for(conn, ticket.checkpoint_id) is None:
                return False
            if (
                ambiguous
                and conn.execute(
                    "SELECT 1 FROM checkpoints WHERE id = %s AND last_write = %s",
                    (ticket.checkpoint_id, write.token),
                ).fetchone()
            ):
                raise Stored(True)
            result = conn.execute(WRITE, write.params()).fetchone()
            return self._ledger.check(conn, write, result)

        if wait:
            ok: bool = self._runner.run(body)
        else:
            once = self._runner.attempt(body, setup=_ONCE)
            if once is None:
                raise StoreBusy(
                    f"PostgreSQL at {self._runner.where} could not take this write at once"
                    " (a lock or a connection was busy, or the server did not answer);"
                    " it may not have been written, and is tried again at the next poll"
                )
            ok = once
        self._ledger.committed(write, ok)
        return ok

    def save_checkpoints(
        self, writes: Sequence[tuple[ReplyTicket, CheckpointDraft]]
    ) -> list[bool] | None:
        """Periodic writes of many replies in one transaction with ``synchronous_commit =
        off``; None (try again later) if a lock or a connection was not free at once or the
        server did not answer."""
        if not writes:
            self._runner.pool()  # a closed store says so
            return []
        prepared = [CheckpointWrite(t, d, None) for t, d in writes]

        def body(conn: Conn, _: bool) -> list[bool]:
            # No context lock: the fence is the reply's row (its epoch and state), which the
            # write locks, and whoever reads a row's text to change its epoch locks the row
            # first (:meth:`_take`). So a batch never waits for, nor holds up, the commits,
            # begins and prompts of its replies' contexts; it waits for a row only while a
            # claim or a final write of that reply commits (then ``lock_timeout``).
            ids = [w.ticket.checkpoint_id for w in prepared]
            order = sorted(range(len(prepared)), key=lambda i: ids[i])  # one lock order
            results: list[Sequence[Any] | None]
            if len(set(ids)) == len(ids):
                found = {
                    r[0]: r[1:]
                    for r in conn.execute(*batch_statement([prepared[i] for i in order])).fetchall()
                }
                results = [found.get(ids[i]) for i in order]
            else:  # the same reply twice (never from one checkpointer): write after write
                cur = conn.cursor()
                cur.executemany(WRITE, [prepared[i].params() for i in order], returning=True)
                results = []
                while True:
                    results.append(cur.fetchone())
                    if not cur.nextset():
                        break
            ok = [False] * len(prepared)
            landed: dict[int, list[CheckpointWrite]] = {}
            for i, result in zip(order, results, strict=True):
                before = landed.setdefault(ids[i], [])
                ok[i] = self._ledger.check(conn, prepared[i], result, before)
                if ok[i]:
                    before.append(prepared[i])
            return ok

        done = self._runner.attempt(body, setup=_BACKGROUND)
        if done is not None:
            for write, ok in zip(prepared, done, strict=True):
                self._ledger.committed(write, ok)
        return done

    def renew_leases(self, owner: str) -> None:
        """Extend the leases of the live replies ``owner`` holds (by the database's clock)."""
        self._runner.attempt(
            lambda conn, _: conn.execute(
                "UPDATE checkpoints SET lease_until = clock_timestamp()"
                " + make_interval(secs => %s) WHERE owner = %s"
                " AND state IN ('streaming', 'resuming')",
                (self.lease_ttl, owner),
            ),
            setup=_BACKGROUND,
        )

    def commit_reply(
        self,
        context_id: str,
        drafts: Sequence[RecordDraft],
        *,
        usage: Usage | None = None,
        last_response_id: str | None = None,
        reply: ReplyTicket | None = None,
        end: ReplyEnd | None = None,
        at: int | None = None,
        commit_id: str | None = None,
        thread_version: int | None = None,
    ) -> list[Record]:
        """Store ``drafts`` durably in one transaction, exactly once (see
        :meth:`Store.commit_reply`).

        ``commit_id`` (made up if not given) is an idempotency key: a second commit with the
        same key stores nothing and returns the records of the first, which is how a commit
        whose COMMIT was cut off is retried safely.
        """
        prepared = [Draft(d) for d in drafts]
        tokens = live_tokens_of(prepared)
        key = commit_id if commit_id is not None else uuid.uuid4().hex
        rid = enc_opt(last_response_id)

        def body(conn: Conn, _: bool) -> Later[list[Record]]:
            # Two round trips in pipeline mode: BEGIN, the lock, the commit id and the
            # reply's row; then the records, the usage, the row's end and COMMIT.
            locking = send_lock(
                conn,
                context_id,
                0 if reply is not None or at is not None else 1,
                change=True,
                tokens=tokens,
            )
            keyed = conn.execute(  # no row when the context is gone (the lock says so)
                "INSERT INTO commits (commit_id, context_id) SELECT %s, id FROM contexts"
                " WHERE id = %s ON CONFLICT (commit_id) DO NOTHING RETURNING 1",
                (key, context_id),
            )
            fenced = (
                conn.execute(
                    "SELECT pos, reply_id, epoch, state FROM checkpoints WHERE id = %s FOR UPDATE",
                    (reply.checkpoint_id,),
                )
                if reply is not None
                else None
            )
            lock = locked(locking, context_id)
            if keyed.fetchone() is None:
                raise Stored(rows.written(conn, key))
            reply_id: str | None = None
            resumed = False
            if reply is not None:
                assert fenced is not None
                row = fenced.fetchone()
                # Tool outputs (no ``end``) may still land after a cancel: the tools ran.
                if (
                    row is None
                    or row[3] in ("completed", "discarded")
                    or row[2] != reply.epoch
                    or (end is not None and row[3] not in _LIVE)
                ):
                    raise OwnershipLost(
                        f"reply {dec(row[1]) if row else reply.checkpoint_id!r} was taken"
                        " over or settled elsewhere; this writer's result was not stored"
                    )
                pos, reply_id, resumed = row[0], dec(row[1]), row[3] == "resuming"
            else:
                pos = at if at is not None else lock.pos
            if usage is not None or rid is not None:
                add = usage_counts(usage or Usage(), rows.USAGE_FIELDS)
                thread_args: tuple[Any, ...]
                if rid is None or thread_version is None:
                    thread, thread_args = "COALESCE(%s, last_response_id)", (rid,)
                else:  # cleared if a record before the reply changed since its request read
                    thread = (
                        "CASE WHEN EXISTS (SELECT 1 FROM records r WHERE r.context_id = %s"
                        " AND r.rev > %s AND r.pos < %s) THEN NULL ELSE %s END"
                    )
                    thread_args = (context_id, thread_version, pos, rid)
                conn.execute(
                    "UPDATE contexts SET "
                    + rows.ADD_USAGE
                    + f", last_response_id = {thread} WHERE id = %s",
                    (*add, *thread_args, context_id),
                )
            if reply is not None and end is not None:
                _settle(conn, reply, end, resumed=resumed)
            return Later(send_records(conn, context_id, prepared, pos, lock, key, reply_id))

        out: list[Record] = self._runner.run(body, setup=self._durable, pipeline=True)
        if reply is not None and end == "reply":
            self._ledger.forget(reply.checkpoint_id)
        elif reply is not None and end == "round":
            self._ledger.restart(reply.checkpoint_id)
        return out

    # -- claims, keep, discard ------------------------------------------------------------

    def _take(
        self,
        checkpoint_id: int,
        verb: str,
        change: str,
        args: tuple[Any, ...] = (),
        then: _Then | None = None,
        *,
        durable: bool = False,
    ) -> tuple[Checkpoint, bool, Any]:
        """Settle or claim an interrupted (or orphaned) reply with one compare-and-set.

        ``change`` is the ``SET`` list (with ``args``); the reply always moves to the next
        epoch. ``then(conn, checkpoint, token, again)`` runs after it in the same
        transaction. Returns the checkpoint as it was read, whether that was a retry finding
        its own earlier attempt landed (then the checkpoint is read after the change), and
        what ``then`` returned.
        """
        if checkpoint_key(checkpoint_id) is None:
            raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
        token = uuid.uuid4().hex

        def read(conn: Conn) -> tuple[Checkpoint, str, str | None]:
            found = conn.execute(
                f"{rows.CHECKPOINT_SELECT} WHERE c.id = %s", (checkpoint_id,)
            ).fetchone()
            if found is None:
                raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
            return self._load(found), found[14], found[20]

        def body(conn: Conn, ambiguous: bool) -> tuple[Checkpoint, bool, Any]:
            if self._lock_for(conn, checkpoint_id) is None:
                raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id!r}")
            # The row itself too, before its text is read (a statement of its own: the read
            # then sees every periodic write that committed meanwhile, its parts included).
            # Periodic writes take no context lock (:meth:`save_checkpoints`): one from an
            # owner that lost the reply must land before this read or be fenced after it.
            conn.execute("SELECT 1 FROM checkpoints WHERE id = %s FOR UPDATE", (checkpoint_id,))
            cp, state, last_write = read(conn)
            if ambiguous and last_write == token:  # our first try landed
                raise Stored((cp, True, then(conn, cp, token, True) if then else None))
            refusal = settle_refusal(cp, verb)
            if refusal is not None:
                raise refusal
            changed = conn.execute(
                f"UPDATE checkpoints SET {change}, epoch = epoch + 1, last_write = %s,"
                " updated_at = clock_timestamp() WHERE id = %s AND epoch = %s AND state = %s"
                " RETURNING epoch",
                (*args, token, checkpoint_id, cp.epoch, state),
            ).fetchone()
            if changed is None:  # cannot happen under the context lock; never overwrite
                now, _, _ = read(conn)
                raise settle_refusal(now, verb) or OwnershipLost(
                    f"checkpoint {checkpoint_id} changed while it was being {verb}d; try again"
                )
            return cp, False, (then(conn, cp, token, False) if then else None)

        result: tuple[Checkpoint, bool, Any] = self._runner.run(
            body, setup=self._durable if durable else None
        )
        return result

    def claim_checkpoint(self, checkpoint_id: int, *, owner: str) -> Checkpoint:
        """Take an interrupted reply for a resume: ``RESUMING`` under a new epoch.

        The text it holds now is kept aside (``cut_text``, copied on the server): the resume
        appends to the row, and its commit puts that text back as the settled row's (for
        audit)."""
        cp, again, _ = self._take(
            checkpoint_id,
            "resume",
            "state = 'resuming', owner = %s, claimed_at = clock_timestamp(), claimed_by = %s,"
            " lease_until = clock_timestamp() + make_interval(secs => %s),"
            f" cut_text = text || {_PARTS.format('text')},"
            f" cut_thinking = thinking || {_PARTS.format('thinking')}",
            (owner, owner, self.lease_ttl),
        )
        if not again:
            cp = replace(cp, state=ReplyState.RESUMING, epoch=cp.epoch + 1, owner=owner)
        self._ledger.start(checkpoint_id, cp.text, cp.thinking)
        return cp

    def discard_checkpoint(self, checkpoint_id: int) -> Checkpoint:
        """Settle an interrupted reply as ``DISCARDED``; the row stays for audit, and what
        it was billed is spent (its usage, and :func:`.base.discarded_draft` for the cost)."""

        def spend(conn: Conn, cp: Checkpoint, token: str, again: bool) -> None:
            if again:  # the first try's commit landed: its record too
                return
            _spent(conn, cp)
            dead = discarded_draft(cp)
            if dead is not None:  # its own new position; dead: no live tokens to add
                lock = lock_context(conn, cp.context_id, 1)
                send_records(conn, cp.context_id, [Draft(dead)], lock.pos, lock, token)()

        cp, again, _ = self._take(
            checkpoint_id,
            "discard",
            "state = 'discarded', owner = NULL, lease_until = NULL,"
            " resolved_at = clock_timestamp()",
            then=spend,
        )
        self._ledger.forget(checkpoint_id)
        if again:
            return cp
        return replace(cp, state=ReplyState.DISCARDED, epoch=cp.epoch + 1, owner=None)

    def keep_checkpoint(self, checkpoint_id: int) -> list[Record]:
        """Store an interrupted reply's partial text as its reply, in its own place."""

        def store(conn: Conn, cp: Checkpoint, token: str, again: bool) -> list[Record]:
            if again:
                return rows.written(conn, token)
            if not cp.text:
                raise ValueError(
                    f"checkpoint {checkpoint_id} holds no text to keep; discard it instead"
                )
            assert cp.pos is not None
            kept = Draft(
                RecordDraft(
                    RecordType.MODEL_RESP, cp.text, streamed=True, metadata=kept_metadata(cp)
                )
            )
            lock = lock_context(conn, cp.context_id, change=True, tokens=live_tokens_of([kept]))
            _spent(conn, cp)
            return send_records(conn, cp.context_id, [kept], cp.pos, lock, token, cp.reply_id)()

        _, _, kept = self._take(
            checkpoint_id,
            "keep",
            "state = 'completed', owner = NULL, lease_until = NULL,"
            " resolved_at = clock_timestamp()",
            then=store,
            durable=True,
        )
        self._ledger.forget(checkpoint_id)
        return list(kept)


def _spent(conn: Conn, cp: Checkpoint) -> None:
    """A settled reply's billed usage (its cut attempts') joins its context's totals (the
    context is locked: :meth:`PostgresReplies._take` took it first)."""
    if cp.usage is not None:
        conn.execute(
            "UPDATE contexts SET " + rows.ADD_USAGE + " WHERE id = %s",
            (*usage_counts(cp.usage, rows.USAGE_FIELDS), cp.context_id),
        )


def _settle(conn: Conn, reply: ReplyTicket, end: ReplyEnd, *, resumed: bool) -> None:
    cid = reply.checkpoint_id
    if end == "reply" and not resumed:
        # Never interrupted (never claimed: its state says so, as in SQLite, where a row from
        # before the lifecycle has epoch 0): nothing worth keeping beside its records (which
        # name it). Its parts go with it (ON DELETE CASCADE): no statement of their own.
        conn.execute("DELETE FROM checkpoints WHERE id = %s", (cid,))
        return
    conn.execute("DELETE FROM checkpoint_parts WHERE checkpoint_id = %s", (cid,))
    if end == "round":
        conn.execute(
            "UPDATE checkpoints SET text = '', thinking = '', text_len = 0, thinking_len = 0,"
            " parts = 0, tool_calls = '[]', usage = NULL, chunks = 0, response_id = NULL,"
            " metadata = NULL, updated_at = clock_timestamp() WHERE id = %s",
            (cid,),
        )
    else:
        # A resume completed: the row holds again what the reply had delivered when it was
        # cut (its claim kept a copy), for audit, as a kept or discarded row does. No writer
        # writes a settled row, so its lengths (a writer's check) are left as they are.
        conn.execute(
            "UPDATE checkpoints SET state = 'completed', resolved_at = clock_timestamp(),"
            " updated_at = clock_timestamp(), owner = NULL, lease_until = NULL,"
            " text = COALESCE(cut_text, ''), thinking = COALESCE(cut_thinking, ''),"
            " parts = 0, cut_text = NULL, cut_thinking = NULL WHERE id = %s",
            (cid,),
        )


def _as_orphan(cp: Checkpoint) -> Checkpoint:
    """A live reply whose owner is gone, as every reader should see it: interrupted."""
    return replace(
        cp,
        state=ReplyState.INTERRUPTED,
        error=cp.error if cp.error and cp.error != IN_PROGRESS else ORPHANED,
    )
