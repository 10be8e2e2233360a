"""The heartbeat: one timer thread per store that keeps this process's replies its own.

Every reply this process generates holds a lease in the store (``lease_ttl`` seconds, see
``rxcontext.open(..., lease_ttl=5.0)``). A reply whose lease ran out reads as
``INTERRUPTED`` for every worker, and any worker can claim it (the claim moves the reply's
epoch on, which fences the old owner: its writes change nothing, its commit is refused).
So the owner must renew its leases whatever its streams do — a model that reasons in
silence for a minute sends no chunk — and that is this module's job:

* one daemon thread per store (per process), started when the first reply begins and
  ended when the last one ends or the store closes (``store.close()`` waits for it);
* every ``lease_ttl / 3`` it renews the leases of every reply it serves in one write; a
  reply the store says this process no longer owns (claimed elsewhere, its context
  deleted) is marked lost: its driver raises :class:`~rxcontext.OwnershipLost` to the
  subscriber at its next chunk or commit;
* self-fencing: a reply whose lease this process could not renew for ``lease_ttl`` by its
  own monotonic clock (it was stopped with SIGSTOP, starved, cut off from the database) is
  presumed taken over and marked lost too — also checked right before each commit, so a
  process that wakes up from a long pause never commits before noticing. That clock counts
  from before the lease was taken (a begin or claim may wait long for a hot context's
  lock, and the store takes the lease only once it has it), so it can run out while the
  store's lease has not: the reply is then given up only if one more renewal fails, and
  stores renew a lease only while it has not run out (by the database's clock), so a
  renewal that succeeds proves nobody could have seen the reply interrupted;
* a reply whose final write found the database locked by another process, or (PostgreSQL)
  every pooled connection busy with the store's other calls (its commit, or the checkpoint
  of its failure, raised ``StoreBusy`` to the subscriber) is served until
  its final checkpoint — what was delivered, ``INTERRUPTED`` — is written: tried at every
  poll (a renewal first: a cheap write that finds whether the lock is gone), then once
  more by ``store.close()`` and at the process's exit. Its lease may well run out
  meanwhile (nothing can be written under the lock, and the final write waited up to
  ``busy_timeout`` for it): the reply stays this process's all the same, because the
  persister holds it from before its final write until that is written or given up
  (:meth:`Store.hold_reply <rxcontext.store.base.Store.hold_reply>`; on SQLite a file
  lock every process of the host sees, :mod:`rxcontext.store.sqlite_holds`);
* every 0.25 s (at most; ``lease_ttl / 3`` if shorter) while it serves replies it asks
  the store which of them were asked to stop (``cw.stop(reply_id)`` from any process) and
  stops them through their drivers: the subscriber gets
  :class:`~rxcontext.StreamInterrupted` (``__cause__``: :class:`~rxcontext.ReplyStopped`)
  and the checkpoint holds exactly what it received.

A faster channel for stop requests plugs in with :func:`set_stop_hint`:
:meth:`ContextWindow.stop` calls the hint after the durable request, and whatever receives
the hint on the owner's side calls :meth:`Heartbeat.poke` to make the owner look at once
instead of at its next poll; :attr:`Heartbeat.serving` tells that receiver when the process
serves replies (it need not listen otherwise). The store stays the source of truth.
``rxcontext.open(..., fanout="redis://...")`` installs one over Redis pub/sub
(:mod:`rxcontext.fanout.stops`).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import _forks
from .checkpointer import ServesStore, _why_lost
from .errors import OwnershipLost, ReplyStopped, RxContextError, StoreClosedError
from .persist import ReplyPersister
from .store.base import ReplyTicket, Store

__all__ = [
    "LINGER",
    "Heartbeat",
    "StopHint",
    "heartbeat_for",
    "request_stop",
    "set_stop_hint",
    "stop_hint",
]

_log = logging.getLogger("rxcontext.heartbeat")

STOP_POLL = 0.25
RETRY_EVERY = 0.05
"""Seconds between the rounds in which a closing store tries again, without waiting, the
final checkpoints a busy database refused (see :meth:`Heartbeat._write_pending`)."""
LINGER = 5.0
"""Seconds the thread waits for the next reply after the last one ended: replies one after
another then share one thread (starting one costs ~120 µs of a reply's time to first
chunk, measured with a ScriptedModel)."""
"""The longest time between two looks for stop requests while replies are served."""

OnStop = Callable[[ReplyStopped], None]


class StopHint(Protocol):
    """A fast, best-effort channel for stop requests (the store's request is the durable one).

    :meth:`announce` is called by :meth:`ContextWindow.stop` right after the request was
    stored; the receiving side of the channel, in the owner's process, calls
    :meth:`Heartbeat.poke` on ``heartbeat_for(store)``.
    """

    def announce(self, reply_id: str, owner: str | None) -> None:
        """Tell the owner (worker id ``owner``) that reply ``reply_id`` was asked to stop."""
        ...


@dataclass(eq=False, slots=True)
class _Beat:
    persister: ReplyPersister
    ticket: ReplyTicket
    on_stop: OnStop
    renewed: float
    """Monotonic time from which the last successful renewal (or the begin) counts."""
    heartbeat: Heartbeat
    stopping: bool = False
    released: bool = False
    """The driver let the reply go while its final checkpoint was still pending."""

    def __call__(self) -> None:
        """The persister's fence: before a commit, raise if the lease may have run out.

        The beat itself (no object more a reply) rather than a bound method (one) or a
        closure over the beat (four: its function, cell tuple and cells), which the cyclic
        collector would track for as long as the reply streams."""
        self.heartbeat._check(self)


class Heartbeat(ServesStore):
    """Renews the leases of ``store``'s replies in this process and delivers stop requests."""

    def __init__(self, store: Store) -> None:
        self._store = weakref.ref(store)  # the registry is weak: so must this be
        self.ttl = store.lease_ttl
        self.renew_every = self.ttl / 3
        self.poll_every = min(STOP_POLL, self.renew_every)
        """Seconds between two looks for stop requests (settable before the first reply;
        the looks at each renewal come on top)."""
        self._beats: dict[int, _Beat] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._at_close: set[int] = set()  # the pending replies close() writes (or logs)
        self._poked = False
        self.renewals = 0
        """Renewal writes made (for tests)."""
        self.polls = 0
        """Looks for stop requests made (for tests)."""
        self.listeners: list[Callable[[], None]] = []
        """Called on the heartbeat's thread after each round (renewal and/or poll): lets
        tests wait for a round without sleeping."""
        self.serving: list[Callable[[bool], None]] = []
        """Called on the heartbeat's thread with True when it starts (this process begins
        serving the store's replies) and with False when it ends (``LINGER`` after the last
        reply, or the store closed): a fast stop channel's receiver listens meanwhile.
        Threads come and go, so a True may arrive before the previous thread's False."""
        store.on_close(self.close)
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child: the thread runs in the parent only (its object here would keep
        # the child from starting one: no lease renewed, every reply of the child lost),
        # a parent's thread may have held the lock, and the replies are the parent's.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread = None
        self._beats.clear()
        self._poked = False

    # -- the drivers' side ----------------------------------------------------------------

    def register(
        self, persister: ReplyPersister, on_stop: OnStop, *, since: float | None = None
    ) -> None:
        """Keep ``persister``'s reply leased (it has begun) until :meth:`unregister`;
        ``on_stop`` is called, on the heartbeat's thread, if the reply is asked to stop.
        ``since`` (monotonic) is a time before its lease was taken (begin or claim)."""
        ticket = persister.ticket
        if ticket is None:
            return
        beat = _Beat(persister, ticket, on_stop, time.monotonic() if since is None else since, self)
        with self._lock:
            if self._closed:
                return
            persister.fence = beat
            self._beats[id(persister)] = beat
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="rxcontext-heartbeat", daemon=True
                )
                self._thread.start()
            # A running thread is not woken: it looks at its replies at least every
            # ``poll_every`` (idle or not), and the new lease was just taken.

    def unregister(self, persister: ReplyPersister) -> None:
        """Stop serving ``persister``'s reply (idempotent); the thread ends ``LINGER``
        seconds after the last. A reply whose final checkpoint a busy database refused
        (:attr:`ReplyPersister.pending`) is served until that is written."""
        with self._lock:
            beat = self._beats.get(id(persister))
            if beat is not None and persister.pending:
                beat.released = True
                return
            self._beats.pop(id(persister), None)
            # A reply close() took is its to write (or to give up, and say so): a final
            # write refused while close() waited for it (see close()) is not late.
            closing = id(persister) in self._at_close
            late = self._closed and persister.pending and not closing
            if persister.finished:
                # The fence (the beat, which holds the persister) is a cycle
                # only the cyclic collector would free; an ended reply commits nothing more.
                persister.fence = None
        if not (closing and persister.pending):  # else close()'s write lets go of it
            persister.release_hold()  # no final write under way any more (if one held it)
        if late:  # refused after close() had looked at it: nothing will write it
            _log.warning(
                "the final checkpoint of reply %r could not be written (the database was "
                "busy and the store closed meanwhile): it holds its last periodic write",
                persister.reply_id,
            )

    def poke(self) -> None:
        """Look for stop requests now (a fast channel's hint arrived)."""
        with self._lock:
            self._poked = True
            self._wake.notify_all()

    def close(self) -> None:
        """Stop the thread and wait for it (the store is closing), then try once more the
        final checkpoints a busy database refused (waiting for the database once: the
        store's ``busy_timeout``, or for a pooled connection; see :meth:`_write_pending`).

        A final write under way as the store closes (a reply's commit on another thread,
        waiting for a lock or a pooled connection) is waited for first (:meth:`_settle`):
        refused, its checkpoint is written here too. Before, the pending replies were
        taken as close() began, and such a reply's checkpoint was given up (only logged):
        the text its user was shown was lost."""
        with self._lock:
            self._closed = True
            beats = list(self._beats.values())
            self._at_close = {id(b.persister) for b in beats}  # see unregister()
            self._beats.clear()
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        refused = self._settle(beats)
        with self._lock:
            # Whether a final write is pending and whether unregister() calls it late are
            # decided under one lock: a refusal from here on is late, and logged there. A
            # write still under way (the wait ran out) is its writer's: not taken here.
            pending = [b for b in beats if b.persister.pending and not b.persister.final_under_way]
            self._at_close = {id(b.persister) for b in pending}
        self._write_pending(pending, last=True, busy=refused)

    def _settle(self, beats: list[_Beat]) -> bool:
        """Wait for the final writes of ``beats`` under way to end (a commit, or the
        checkpoint of a failure): whether one was refused (the database is still busy).

        A last commit a busy database refused keeps its checkpoint at once
        (:meth:`ReplyPersister.keep_refused`): its failure path, which would write it, runs
        on the driver's thread after the on_error hooks, maybe the one closing the store
        (a hook) or one this blocks (an event loop); waited for, it never came.

        Such a write waits at most the store's own wait (``busy_timeout``, or for a pooled
        connection) once it has the store's connection or lock. The wait here ends after
        three times that (a write queued behind another call of the store): a bound, not
        a schedule. A write that ends later, refused, is logged as given up
        (:meth:`unregister`)."""
        deadline = time.monotonic() + 3 * _wait_of(self.store, self.ttl)
        seen: set[int] = set()
        while True:
            for b in beats:
                if b.persister.keep_refused():
                    seen.add(id(b))
            ended = threading.Semaphore(0)
            under_way = [
                b for b in beats if b.persister.when_final_written(ended.release, handed_on=False)
            ]
            if not under_way:
                break
            seen.update(id(b) for b in under_way)
            if not all(
                ended.acquire(timeout=max(0.0, deadline - time.monotonic())) for _ in under_way
            ):
                break
        return any(b.persister.pending for b in beats if id(b) in seen)

    def write_pending(self) -> None:
        """Try now, once more, the final checkpoints a busy database refused (waiting for
        the database once, as :meth:`close`): the process exits."""
        with self._lock:
            pending = [b for b in self._beats.values() if b.persister.pending]
        self._write_pending(pending, last=True)

    @property
    def running(self) -> bool:
        """Whether the heartbeat's thread is alive."""
        with self._lock:
            return self._thread is not None

    # -- the thread -----------------------------------------------------------------------

    def _main(self) -> None:
        self._tell(True)
        try:
            self._run()
        finally:
            self._tell(False)

    def _tell(self, on: bool) -> None:
        for hook in list(self.serving):
            try:
                hook(on)
            except Exception:
                _log.exception("a heartbeat serving hook failed")

    def _run(self) -> None:
        now = time.monotonic()
        next_renew = now + self.renew_every
        next_poll = now + self.poll_every
        idle_since: float | None = None
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        self._thread = None
                        return
                    if not self._beats:
                        # Idle: linger for the next reply, looking every poll_every (a
                        # reply that begins wakes nobody: that would be on its time to
                        # first chunk), then end.
                        now = time.monotonic()
                        if idle_since is None:
                            idle_since = now
                        left = idle_since + LINGER - now
                        if left <= 0:
                            self._thread = None
                            return
                        self._wake.wait(min(left, self.poll_every))
                        if self._beats:  # new replies: a round now, renewals from here
                            idle_since = None
                            now = time.monotonic()
                            next_renew = now + self.renew_every
                            next_poll = now
                        continue
                    if self._poked:
                        break
                    left = min(next_renew, next_poll) - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                self._poked = False
                beats = list(self._beats.values())
            now = time.monotonic()
            try:
                # A final checkpoint a busy database refused is tried at every poll, right
                # after a renewal (a cheap write that finds whether the lock is gone).
                pending = [b for b in beats if b.persister.pending]
                if now >= next_renew or pending:
                    # A renewal that could not be written is tried again at the next poll,
                    # not a whole interval later: the lease is running out meanwhile.
                    renewed = self._renew(beats, now)
                    next_renew = now + (self.renew_every if renewed else self.poll_every)
                    if renewed and pending:
                        self._write_pending(pending)
                self._fence(beats, time.monotonic())
                self._poll(beats)
            except StoreClosedError:
                pass
            except Exception:
                _log.exception("heartbeat failed; trying again at the next interval")
            next_poll = time.monotonic() + self.poll_every
            for listener in list(self.listeners):
                listener()

    def _renew(self, beats: list[_Beat], started: float) -> bool:
        """Renew the leases of ``beats``; False if the store could not be written.

        A lease that ran out meanwhile is not renewed (the store refuses to): others may
        have seen the reply interrupted (and claimed it), so it is given up (self-fencing)
        rather than revived.
        """
        live = [
            b
            for b in beats
            if (not b.persister.finished or b.persister.pending) and b.persister.lost is None
        ]
        if not live:
            return True
        try:
            results = self.store.renew_replies([b.ticket for b in live])
        except StoreClosedError:
            raise
        except Exception:
            _log.warning("lease renewal failed; retrying shortly", exc_info=True)
            results = None
        self.renewals += 1
        if results is None:
            return False
        for beat, ok in zip(live, results, strict=True):
            if ok:
                beat.renewed = max(beat.renewed, started)
            elif not beat.persister.finished:
                self._lose(beat, _why_lost(self.store, beat.persister))
        return True

    def _write_pending(self, beats: list[_Beat], *, last: bool = False, busy: bool = False) -> None:
        """Write the final checkpoints a busy database refused; a beat whose driver let it
        go ends once its checkpoint is written (or found taken over).

        Never waiting but as the store closes (``last``): a wait here would hold up the
        renewals of every other reply of this worker. As it closes, the first write waits
        for the database (``busy_timeout``, or for a pooled connection); once one is refused
        the database is still busy, so none waits again (each waiting in turn, ``close()``
        took the wait once a reply, 15 s for 5 replies on a pool a hung call held), but every
        write still pending, the refused one included, is tried again without waiting, in
        rounds :data:`RETRY_EVERY` apart, until as long again as that first wait took (a
        lock that goes meanwhile loses nothing); what is still refused then is given up and
        logged. A write failing otherwise (the server down) ends the rounds: the rest get
        their try without waiting. ``busy``: a final write under way as the store closed was
        just refused after its wait (:meth:`close`), which stands for the first wait: none
        waits, and the rounds last the store's own wait."""
        wait = last and not busy
        deadline: float | None = None  # the rounds' end, from the first refusal
        failed = False  # a write failed otherwise: the store, not a lock
        unreached: set[int] = set()  # refused once that happened: the store's failure too
        if last and busy and beats:
            more = _wait_of(self.store, self.ttl)
            deadline = time.monotonic() + more
            _log.info(
                "the database is busy (a final write under way as the store closed was "
                "refused): trying the %d final checkpoint(s) left without waiting, for %.2g s",
                len(beats),
                more,
            )
        left = beats
        closed = False  # another store.close() closed the store under this one
        while True:
            refused: list[_Beat] = []
            for beat in left:
                persister = beat.persister
                began = time.monotonic()
                try:
                    written = persister.write_pending(wait=wait)
                except StoreClosedError:
                    if not last:
                        raise
                    # A second store.close() (another thread's shutdown path, or an
                    # on_error hook on this heartbeat's thread) closed the connections
                    # under this one: what is left cannot be written; it is given up, and
                    # said so (close() is idempotent: it never raises for that).
                    closed = True
                    refused.extend(left[left.index(beat) :])
                    break
                except Exception:
                    _log.exception("writing the final checkpoint of %r failed", persister.reply_id)
                    written = False
                    if last:
                        wait = False  # the store fails as a whole: nobody waits for it
                        deadline = time.monotonic()
                        failed = True
                if written is None:
                    refused.append(beat)
                    if failed:
                        unreached.add(id(beat))
                    if wait:
                        wait = False  # still busy: no write waits again
                        now = time.monotonic()
                        # As long again as it waited, at most the store's own wait: the
                        # time also counts a queue behind other replies' own final writes.
                        more = min(now - began, _wait_of(self.store, now - began))
                        deadline = now + more
                        _log.info(
                            "the database is still busy: trying the %d final checkpoint(s) "
                            "left again without waiting, for %.2g s more",
                            len(left) - left.index(beat),
                            more,
                        )
                    continue
                with self._lock:
                    if beat.released:
                        self._beats.pop(id(persister), None)
            if not last or not refused:
                return
            left = refused
            if closed:
                break
            pause = (deadline if deadline is not None else 0.0) - time.monotonic()
            if pause <= 0:
                break
            time.sleep(min(RETRY_EVERY, pause))
        for beat in left:
            # A write refused by a lock before another failed otherwise was refused by a
            # lock: only those refused after it are the store's failure.
            if id(beat) in unreached:
                why = (
                    "the store failed as it closed (the server down or unreachable: see the "
                    "error above), and was not tried again"
                )
            elif closed:
                why = "another store.close() closed the store meanwhile"
            else:
                why = (
                    "the database is still busy: locked by another session, or every pooled "
                    "connection in use"
                )
            _log.warning(
                "the final checkpoint of reply %r could not be written (%s): it holds its "
                "last periodic write",
                beat.persister.reply_id,
                why,
            )
            beat.persister.release_hold()  # given up: the lease decides from here

    def _fence(self, beats: list[_Beat], now: float) -> None:
        """Give up the replies whose lease may have run out by this process's clock, unless
        the store renews it now (it had not run out: the clock counts from before the
        lease was taken, see the module docstring)."""
        aged = [
            b
            for b in beats
            if now - b.renewed > self.ttl and not b.persister.finished and b.persister.lost is None
        ]
        if aged:
            self._confirm(aged)

    def _confirm(self, aged: list[_Beat]) -> None:
        """Renew ``aged`` leases now; give up each one the store does not renew."""
        started = time.monotonic()
        try:
            results = self.store.renew_replies([b.ticket for b in aged])
        except StoreClosedError:
            raise
        except Exception:
            _log.warning("lease renewal failed", exc_info=True)
            results = None
        for i, beat in enumerate(aged):
            if results is not None and results[i]:
                beat.renewed = max(beat.renewed, started)
            elif not beat.persister.finished:
                self._lose(beat, self._expired(beat))

    def _check(self, beat: _Beat) -> None:
        """Before a commit: refuse to write if this process's lease may have run out."""
        if beat.persister.lost is None and time.monotonic() - beat.renewed > self.ttl:
            self._confirm([beat])
        if beat.persister.lost is not None:
            raise beat.persister.lost

    def _expired(self, beat: _Beat) -> OwnershipLost:
        return OwnershipLost(
            f"reply {beat.persister.reply_id!r}: this process could not renew its lease for "
            f"more than lease_ttl={self.ttl:g} s (it was paused, starved or cut off from the "
            "database), so another worker may have taken it over; nothing more is stored"
        )

    @staticmethod
    def _lose(beat: _Beat, why: RxContextError) -> None:
        persister = beat.persister
        if persister.lost is None:
            persister.lost = why
        persister.attention = True

    def _poll(self, beats: list[_Beat]) -> None:
        todo = [b for b in beats if not b.stopping and not b.persister.finished]
        if not todo:
            return
        self.polls += 1
        asked = set(self.store.stop_requests([b.ticket for b in todo]))
        for beat in todo:
            if beat.ticket.checkpoint_id not in asked:
                continue
            beat.stopping = True
            error = ReplyStopped(
                f"reply {beat.persister.reply_id!r} was stopped (cw.stop); its checkpoint "
                "holds what was delivered: resume, keep or discard it"
            )
            try:
                beat.on_stop(error)
            except Exception:
                _log.exception("stopping reply %r failed", beat.persister.reply_id)


_heartbeats: weakref.WeakKeyDictionary[Any, Heartbeat] = weakref.WeakKeyDictionary()
_hints: weakref.WeakKeyDictionary[Any, StopHint] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _forked() -> None:
    """In a forked child: the registry's lock is new (a parent's thread may have held it
    at the fork); each heartbeat resets itself (:meth:`Heartbeat._forked`)."""
    global _registry_lock
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def heartbeat_for(store: Store) -> Heartbeat:
    """The heartbeat of ``store`` in this process (made on first use; its thread starts
    with the first reply)."""
    with _registry_lock:
        found = _heartbeats.get(store)
        if found is None:
            found = _heartbeats[store] = Heartbeat(store)
        return found


@atexit.register
def _write_pending_at_exit() -> None:
    """The process exits (its daemon threads stop with it): the final checkpoints a busy
    database refused, not written yet, are tried once more."""
    with _registry_lock:
        heartbeats = list(_heartbeats.values())
    for heartbeat in heartbeats:
        try:
            heartbeat.write_pending()
        except StoreClosedError:
            pass
        except Exception:
            _log.exception("writing the pending final checkpoints at exit failed")


def set_stop_hint(store: Store, hint: StopHint | None) -> None:
    """Send ``store``'s stop requests through ``hint`` too (None: the store's poll only)."""
    with _registry_lock:
        if hint is None:
            _hints.pop(store, None)
        else:
            _hints[store] = hint


def stop_hint(store: Store) -> StopHint | None:
    """The fast stop channel of ``store``, if one was set."""
    with _registry_lock:
        return _hints.get(store)


def request_stop(store: Store, reply_id: str) -> bool:
    """Ask the owner of reply ``reply_id`` (any process) to stop it: see
    :meth:`ContextWindow.stop <rxcontext.ContextWindow.stop>`."""
    if not isinstance(reply_id, str) or not reply_id:
        raise TypeError("reply_id must be a non-empty str")
    if not store.request_stop(reply_id):
        return False
    hint = stop_hint(store)
    if hint is not None:
        found = store.find_reply(reply_id)
        try:
            hint.announce(reply_id, found.owner if found is not None else None)
        except Exception:
            _log.warning("the stop hint for %r failed; the owner's poll will see it", reply_id)
    with _registry_lock:
        here = _heartbeats.get(store)
    if here is not None:
        here.poke()  # the owner may be this process: no need to wait for its poll
    return True


def _wait_of(store: Any, otherwise: float) -> float:
    """How long ``store`` waits for a busy database: SQLite's ``busy_timeout``, or
    PostgreSQL's wait for a pooled connection or a lock (``otherwise`` if neither)."""
    wait = getattr(store, "busy_timeout", None)
    if wait is None:
        wait = getattr(getattr(store, "_runner", None), "patience", None)
    return float(wait) if isinstance(wait, int | float) else otherwise
