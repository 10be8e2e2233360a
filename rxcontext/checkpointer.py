"""Periodic checkpoints on a timer: what streaming replies delivered, written while they pause.

A reply that sends text and then pauses (reasoning, a slow tool, a stalled connection) must
not keep that text only in memory: "a killed process loses at most ``checkpoint_every``
seconds of what subscribers received" holds because a timer, not chunk arrival, drives the
writes. One :class:`Checkpointer` serves every streaming reply of a store with the same
interval: each tick copies the new part of every reply that has one (nothing is done for a
reply with nothing new) and writes them all in one background transaction that waits for
another process's lock only briefly — if it cannot write, the text stays pending for the
next tick and the streams never wait. Leases are renewed by :mod:`rxcontext.heartbeat`,
which runs whether or not periodic checkpoints do.

Ticks run on a thread of their own (which stays ``LINGER`` seconds after the last reply,
so replies one after another do not each start one, and keeps its cadence meanwhile, so a
reply that begins wakes no thread), or, when the window's scheduler is
virtual (a ``TestScheduler``), on that scheduler's clock so tests decide when time passes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, overload

from reactivex import abc
from reactivex.scheduler import VirtualTimeScheduler

from . import _forks
from .errors import CheckpointNotFound, ContextNotFound, OwnershipLost, StoreClosedError
from .persist import ReplyPersister
from .store.base import CheckpointDraft, ReplyTicket, Store

__all__ = ["LINGER", "Checkpointer", "checkpointer_for"]

LINGER = 5.0
"""Seconds a checkpointer's thread waits, with no reply left, for the next one."""

_log = logging.getLogger("rxcontext.checkpointer")

SLICE = 0.001
"""Seconds a tick on the checkpointer's thread runs Python (snapshots, the store's rows
before its transaction, the results after it) before it pauses for ``PAUSE``."""

PAUSE = 0.00005
"""Seconds the tick then sleeps: its GIL goes to a thread that waits for it (an event
loop whose timer is due) at once, not after the interpreter's switch interval (5 ms, a
thread holding the GIL gives it up only when another has waited that long)."""

_EVERY = 32
"""Replies between two looks at the clock (a reply is a few microseconds of a tick)."""

_sleep = time.sleep  # (the tests see the pauses through it)


class ServesStore:
    """A per-store background worker: it holds its store weakly, as the registries that
    find it do (a strong reference would keep a closed store alive for good)."""

    _store: weakref.ref[Store]

    @property
    def store(self) -> Store:
        """The store served; StoreClosedError once it is gone (collected after close)."""
        store = self._store()
        if store is None:
            raise StoreClosedError("the store is closed")
        return store


class Checkpointer(ServesStore):
    """Writes the checkpoints of ``store``'s streaming replies every ``every`` seconds."""

    def __init__(
        self, store: Store, every: float, scheduler: VirtualTimeScheduler | None = None
    ) -> None:
        self._store = weakref.ref(store)  # the registry is weak: so must this be
        self.every = every
        self.scheduler = scheduler
        self._replies: dict[int, ReplyPersister] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._timer: abc.DisposableBase | None = None
        self.ticks = 0
        """How many ticks ran (for tests and benchmarks)."""
        _forks.on_fork(self)

    def _forked(self) -> None:
        # A forked child: the thread runs in the parent only (its object here would keep
        # the child from starting one), a parent's thread may have held the lock, and the
        # replies are the parent's.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread = None
        self._timer = None
        self._replies.clear()

    def register(self, persister: ReplyPersister) -> None:
        """Start writing ``persister``'s checkpoints (until :meth:`unregister`)."""
        with self._lock:
            self._replies[id(persister)] = persister
            if self.scheduler is not None:
                if self._timer is None:
                    self._timer = self.scheduler.schedule_relative(self.every, self._virtual_tick)
            elif self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rxcontext-checkpoints", daemon=True
                )
                self._thread.start()

    def unregister(self, persister: ReplyPersister) -> None:
        """Stop writing ``persister``'s checkpoints; the timer stops with the last reply."""
        with self._lock:
            self._replies.pop(id(persister), None)
            if not self._replies and self._timer is not None:
                self._timer.dispose()
                self._timer = None

    def _virtual_tick(self, scheduler: abc.SchedulerBase, state: Any = None) -> None:
        with self._lock:
            if self._timer is None:
                return
        self.tick()
        with self._lock:
            if self._timer is not None and self._replies:
                assert self.scheduler is not None
                self._timer = self.scheduler.schedule_relative(self.every, self._virtual_tick)

    def _run(self) -> None:
        # The thread keeps its cadence whether or not it has replies, and nobody wakes it:
        # a reply that registers is written at the next tick (at most ``every`` later, the
        # promise), and registering costs no thread wake-up on the reply's way to its first
        # chunk. With no reply for ``LINGER`` seconds it ends.
        due = time.monotonic() + self.every
        idle_since: float | None = None
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    if self._replies:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = now
                    elif now - idle_since >= LINGER:
                        self._thread = None
                        return
                    left = due - now
                    if left <= 0:
                        break
                    if idle_since is not None:
                        left = min(left, idle_since + LINGER - now)
                    self._wake.wait(left)
                busy = bool(self._replies)
            if busy:
                self.tick()
            due += self.every
            now = time.monotonic()
            if due <= now:  # a write took longer than the interval: skip, never pile up
                due = now + self.every

    def tick(self) -> None:
        """Write every registered reply's new text now (one transaction), renew leases."""
        self.ticks += 1
        with self._lock:
            replies = list(self._replies.values())
        # Two lists side by side, not a pair a reply: everything the tick makes per reply
        # lives until its transaction ends, through every collector pass its own
        # allocations set off, and so is promoted to the oldest generation: thousands a
        # tick, toward a full pass over the whole heap (docs/benchmarks.md, "a tick's
        # objects"). The store gets its pairs one at a time (_Writes).
        written_by: list[ReplyPersister] = []
        drafts: list[CheckpointDraft] = []
        # Pauses (a thread's tick only: a virtual one runs on the test's clock) hold no lock
        # that a loop's thread waits for: ``_lock`` is not held, and a reply's ``_write``,
        # held from its snapshot to its periodic_done, is only tried by the driver (attend)
        # and waited for only by a commit from its checkpoint, in a worker thread, which
        # waits for this tick's transaction anyway.
        pause = _Pause() if self.scheduler is None else None
        for n, persister in enumerate(replies):
            if pause is not None:
                pause(n)
            if not persister.periodic_lock():
                continue  # its final write is happening right now
            try:
                draft = persister.snapshot()
            except BaseException:
                persister.periodic_done(None, None)
                raise
            if draft is None:
                persister.periodic_done(None, None)
            else:
                written_by.append(persister)
                drafts.append(draft)
        results: list[bool] | None = None
        try:
            if drafts:
                assert all(p.ticket is not None for p in written_by)
                results = self.store.save_checkpoints(_Writes(written_by, drafts, pause))
        except StoreClosedError:
            results = None
        except Exception:
            _log.exception("periodic checkpoint write failed; retrying at the next interval")
            results = None
        finally:
            for i, persister in enumerate(written_by):
                if pause is not None:
                    pause(i)
                written = results[i] if results is not None else None
                if written is False and not persister.finished:  # not a reply just committed
                    persister.lost = _why_lost(self.store, persister)
                persister.periodic_done(drafts[i], written)
        for persister in written_by:
            # A long backlog is written a bounded part at a time (ReplyPersister._draft).
            while persister.behind():
                if not self._write_one(persister):
                    break

    def _write_one(self, persister: ReplyPersister) -> bool:
        """One more periodic write of ``persister`` alone; True if it landed."""
        if not persister.periodic_lock():
            return False
        written: bool | None = None
        draft: CheckpointDraft | None = None
        try:
            draft = persister.snapshot()
            if draft is not None:
                assert persister.ticket is not None
                results = self.store.save_checkpoints([(persister.ticket, draft)])
                written = results[0] if results else None
        except StoreClosedError:
            written = None
        except Exception:
            _log.exception("periodic checkpoint write failed; retrying at the next interval")
            written = None
        finally:
            if written is False and not persister.finished:
                persister.lost = _why_lost(self.store, persister)
            persister.periodic_done(draft, written)
        return bool(written)


class _Pause:
    """Sleeps ``PAUSE`` once ``SLICE`` seconds went by since it last did (or was made),
    looking at the clock at every :data:`_EVERY`-th reply ``n`` of a loop."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until = time.perf_counter() + SLICE

    def __call__(self, n: int) -> None:
        if not n % _EVERY and time.perf_counter() >= self._until:
            _sleep(PAUSE)
            self._until = time.perf_counter() + SLICE


class _Writes(Sequence[tuple[ReplyTicket, CheckpointDraft]]):
    """A tick's ``(ticket, draft)`` pairs for :meth:`Store.save_checkpoints`, each made when
    read (and let go of at once) rather than all held until the transaction ends. Read in
    order the first time (the stores make a batch's rows from them before their
    transaction opens), it pauses as the tick does (``pause``), never at the first pair
    (SQLite reads a single write's pair inside its transaction) and never after (SQLite's
    row-by-row writes, inside the transaction, once one of the batch was fenced)."""

    __slots__ = ("_drafts", "_pause", "_persisters")

    def __init__(
        self,
        persisters: list[ReplyPersister],
        drafts: list[CheckpointDraft],
        pause: _Pause | None = None,
    ) -> None:
        self._persisters = persisters
        self._drafts = drafts
        self._pause = pause

    def __len__(self) -> int:
        return len(self._drafts)

    @overload
    def __getitem__(self, i: int) -> tuple[ReplyTicket, CheckpointDraft]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[ReplyTicket, CheckpointDraft]]: ...
    def __getitem__(
        self, i: int | slice
    ) -> tuple[ReplyTicket, CheckpointDraft] | list[tuple[ReplyTicket, CheckpointDraft]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        ticket = self._persisters[i].ticket
        assert ticket is not None
        return ticket, self._drafts[i]

    def __iter__(self) -> Iterator[tuple[ReplyTicket, CheckpointDraft]]:
        pause, self._pause = self._pause, None
        for n, (persister, draft) in enumerate(zip(self._persisters, self._drafts, strict=True)):
            # Never at the first pair: a store may read one alone inside its transaction
            # (SQLite's single write), and the tick paused just before the store's call.
            if pause is not None and n:
                pause(n)
            assert persister.ticket is not None
            yield persister.ticket, draft


def _why_lost(store: Store, persister: ReplyPersister) -> OwnershipLost | ContextNotFound:
    assert persister.ticket is not None
    try:
        store.get_checkpoint(persister.ticket.checkpoint_id)
    except CheckpointNotFound:
        return ContextNotFound(
            "the context was deleted while its reply streamed; nothing more can be stored"
        )
    except Exception:
        pass
    return OwnershipLost(
        f"reply {persister.reply_id!r} was taken over by another worker while this one was "
        "streaming it; nothing more was stored from here"
    )


_checkpointers: weakref.WeakKeyDictionary[Any, dict[tuple[int, float], Checkpointer]] = (
    weakref.WeakKeyDictionary()
)
_registry_lock = threading.Lock()


def _forked() -> None:
    """In a forked child: the registry's lock is new (a parent's thread may have held it
    at the fork); each checkpointer resets itself (:meth:`Checkpointer._forked`)."""
    global _registry_lock
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def checkpointer_for(
    store: Store, every: float, scheduler: abc.SchedulerBase | None = None
) -> Checkpointer:
    """The checkpointer of ``store`` for interval ``every`` (virtual time if ``scheduler`` is)."""
    virtual = scheduler if isinstance(scheduler, VirtualTimeScheduler) else None
    key = (id(virtual), every)
    with _registry_lock:
        per_store = _checkpointers.setdefault(store, {})
        found = per_store.get(key)
        if found is None:
            found = per_store[key] = Checkpointer(store, every, virtual)
        return found
