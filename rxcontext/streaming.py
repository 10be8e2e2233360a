"""The sync stream driver: one reply (or a tool loop of rounds) as a cold Observable.

Data flows one way: model iterator → middleware hooks → subscriber → persister. The
producer runs on the subscription's scheduler (RxPY's trampoline by default, so the
subscription is wired before the first chunk). Before it hands a chunk on it checks that the
subscription still wants it — our disposable *and* the stopped flags of the observers
between us and the user, which RxPY sets first (:mod:`._observers`), so disposal is
honoured on every scheduler, ``subscribe_on`` threads included, with operators before it
or not — and it folds the chunk into the reply only once the subscriber's ``on_next``
returned: the checkpoint is exactly what was delivered, however the stream ends
(see :mod:`.persist` for how a dispose from another thread agrees with the producer).

An exception from the subscriber's own code (``on_next``, a piped operator's function
called from it) is the user's: it propagates out of the producer as it would from RxPY's
own sources (raised from ``subscribe`` when subscribing on this thread), after the
checkpoint of what was delivered is saved (or, raised on the reply's final ``DONE``, after
the reply is committed: it had every chunk, as below); it never becomes the stream's error.
Nor does the store's failure replace it: a final write a lock refused is kept and noted on
the user's exception (``__notes__``); a Ctrl-C gets the refusal as its ``__cause__``.

A round that fails before any of its chunks was delivered is sent again as the
:class:`~rxcontext.retry.RetryPolicy` says; the wait is scheduled on the subscription's
scheduler (virtual under a ``TestScheduler``). ``Timeouts`` are measured around each read,
and a late chunk is refused when its read returns. On real time a read that outlasts its
limit is also broken while it waits: the driver stores when it must end and the watchdog
thread (:mod:`._watchdog`) shuts the socket of the response the provider noted
(:mod:`.providers._abort`) when that passes; where no socket was noted, the SDK's own read
timeout is what unblocks a dead connection. A dispose shuts it too, whatever the Timeouts:
each attempt's read has a :class:`~.providers._abort.Breaker` current (made once per
attempt, nothing per chunk), and every observer between us and the user tells the driver
when it is disposed (:func:`._observers.tell_disposed`), on the disposing thread.

A subscriber that lets go holding the final round's ``DONE`` (``first(DONE)``, a dispose
after it, its ``on_next`` raising on it, Ctrl-C landing there) had the whole reply: it is
committed as the end of the stream commits it, not interrupted
(:meth:`.persist.ReplyPersister.whole`); a round whose tool calls are still to run is not
the end.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait as futures_wait
from math import inf
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.observer import AutoDetachObserver
from reactivex.scheduler import (
    CurrentThreadScheduler,
    ImmediateScheduler,
    TrampolineScheduler,
    VirtualTimeScheduler,
)
from reactivex.scheduler.scheduleditem import ScheduledItem

from ._observers import subscriber, tell_disposed
from ._signals import HandOver
from ._toolthreads import ROUND_WORKERS, UNWIND_SECONDS, RoundTasks, in_threads
from ._watchdog import watching
from .chunks import _COALESCE, Chunk, ChunkKind, ToolCall
from .errors import ReplyStopped, StreamInterrupted, StreamTimeout
from .operators import PLAIN_CHUNK, Middleware, async_refused
from .providers._abort import Breaker, breaking
from .providers.base import Request
from .run import Run, abefore_first_chunk, before_first_chunk, close_chunks, reply_chunks
from .tools import ToolResult, review

__all__ = [
    "Run",
    "abefore_first_chunk",
    "before_first_chunk",
    "reply_chunks",
    "run_observable",
]


_BLOCKING = "the blocking stream(), call() and resume() run hooks"
_TEXT = ChunkKind.TEXT  # a module global: an attribute of the enum class is slower
_REWIND = ChunkKind.REWIND
_LAST_FRESH = _COALESCE - 1
"""The sync driver folds a text delta itself while the builder's next append would not
join a block (``ReplyBuilder.add`` does that)."""


class _Cancelled(Exception):
    """Internal: the subscriber went away; stop without an on_error."""


class _Flag:
    """Disposal of one subscription: polled before each emission, awaited by blocking waits.

    Its ``threading.Event`` is made by the first wait (a retry's), not with every
    subscription: most never wait. A wait stores it before it looks at ``disposed``, and a
    dispose sets ``disposed`` before it looks for it, so one of the two always sees the
    other."""

    __slots__ = ("_event", "_told", "disposed", "on_dispose")

    def __init__(self) -> None:
        self.disposed = False
        self._told = False
        self._event: threading.Event | None = None
        self.on_dispose: Callable[[], None] | None = None

    def dispose(self) -> None:
        self.disposed = True
        event = self._event
        if event is not None:
            event.set()
        if self.on_dispose is not None and not self._told:
            self._told = True  # a chain's observers and the source's own may all tell it
            self.on_dispose()

    def wake(self) -> None:
        """Wake a blocking wait (after ``disposed`` was set without a dispose)."""
        event = self._event
        if event is not None:
            event.set()

    def wait(self, seconds: float) -> bool:
        """Block up to ``seconds``; True if the subscription was disposed meanwhile."""
        event = self._event
        if event is None:
            event = self._event = threading.Event()
        if self.disposed:
            return True
        return event.wait(seconds)


def _run_tools_sync(
    run: Run,
    calls: Sequence[ToolCall],
    gone: Callable[[], bool],
    left: Callable[[], float] | None = None,
) -> list[ToolResult]:
    # The approval hook sees every call first, one after the other (it may ask a person);
    # then the approved tools run (several in parallel, on up to ROUND_WORKERS threads of
    # their own). A subscriber gone meanwhile (``gone()``) is asked nothing more and no tool
    # runs for it. With a deadline (``left()``: the seconds to it, on the real clock) the
    # tools always run on such threads and are waited for until it passes; then the reply
    # ends, its async tools cancelled (and waited for a moment to unwind), its sync ones
    # left running.
    approval = run.tool_approval
    decided: list[ToolResult | None] = []
    for call in calls:
        if approval is not None and gone():
            raise _Cancelled
        decided.append(review(approval, call) if approval is not None else None)
    if gone():
        raise _Cancelled
    todo = [c for c, d in zip(calls, decided, strict=True) if d is None]
    if not todo or (left is None and (len(todo) == 1 or not run.parallel_tools)):
        ran = [run.run_tool(c) for c in todo]
    else:  # each in a copy of the caller's context variables, as on asyncio
        seconds = None if left is None else left()
        if seconds is not None and seconds <= 0:
            raise run.deadline_passed()
        workers = min(ROUND_WORKERS, len(todo)) if run.parallel_tools else 1
        tasks = RoundTasks()
        jobs = in_threads([tasks.bind(functools.partial(run.run_tool, c)) for c in todo], workers)
        finished = False
        try:
            finished = not futures_wait(jobs, seconds).not_done
        finally:
            for job in jobs:
                job.cancel()  # a tool not started yet never starts
            if not finished:  # an async tool is cancelled, as on asyncio, and let unwind
                tasks.cancel(UNWIND_SECONDS)
        if not finished:  # what they return, if they ever do, is dropped with these futures
            raise run.deadline_passed()
        ran = [job.result() for job in jobs]
    results = iter(ran)
    return [d if d is not None else next(results) for d in decided]


class _SyncDriver:
    """The producer of one subscription: rounds of model chunks, tools, retries.

    It runs on the subscription's scheduler. A retry wait is scheduled there with
    ``schedule_relative`` (so a ``TestScheduler`` makes it virtual) and the loop picks up
    where it stopped; on a trampoline (``CurrentThreadScheduler``, the default) or with no
    scheduler (``call()``) the wait blocks this thread but ends early on dispose.
    Timeouts are measured on the same clock around each blocking read.
    """

    def __init__(
        self,
        run: Run,
        observer: abc.ObserverBase[Chunk],
        flag: _Flag,
        scheduler: abc.SchedulerBase | None,
    ) -> None:
        self.run = run
        self.persister = run.persister
        self.observer = observer
        self.watch, self.emit = subscriber(observer)
        self.out = self.emit
        """What delivers a chunk this attempt: ``emit``, or :meth:`_showing` it."""
        self.flag = flag
        self.scheduler = scheduler
        self.time = scheduler if scheduler is not None else run.scheduler
        self.lock = threading.Lock()
        self.ending = threading.Lock()
        """Held while a stopped reply is ended (see :meth:`_end_stopped`)."""
        self.guard = HandOver()
        flag.on_dispose = self._on_dispose
        tell_disposed(self.watch, flag.dispose)
        run.on_stop = self._on_stop

    # Starting values, as class defaults: each assignment in __init__ was a few bytecodes
    # on every reply's way to its first chunk. None is read per chunk (the loop reads
    # locals), where a class default's read costs more than an instance's.
    rounds = 0
    attempt = 0
    request: Request | None = None
    started = False
    tools_running = False
    waiting = False
    timer: abc.DisposableBase | None = None
    breaker: Breaker | None = None
    """The current attempt's: a dispose shuts the connection its read waits on."""
    reader = 0
    """The thread reading it (a dispose on it, ``take(n)``, is not waiting for a read:
    the stream is closed as it ends, its connection kept if it was read to its end)."""

    def _gone(self) -> bool:
        """Whether the subscriber went away (a dispose, or a stopped observer chain)."""
        return self.flag.disposed or self.watch.is_stopped

    def clock(self) -> float:
        if isinstance(self.time, VirtualTimeScheduler):
            return self.time.now.timestamp()
        return time.monotonic()

    def start(self, _: Any = None, __: Any = None) -> None:
        """Drive until the run ends or waits for a retry (then schedule the rest)."""
        if not self.started and (refused := async_refused(self.run.hooks, _BLOCKING)):
            self.observer.on_error(refused)  # before the reply begins: nothing to save
            return
        try:
            with self.guard:
                self._start()
        finally:
            if self.run.persister.finished:
                self.run.close()
                # Nothing is left for a dispose to end; the flag (held by the observer
                # chain) holding this driver made a cycle only the cyclic collector frees.
                self.flag.on_dispose = None
            self.guard.terminate()  # SIGTERM came at its default: the reply is saved, die

    def _start(self) -> None:
        try:
            while True:
                delay = self._advance()
                if delay is None:
                    return
                sched = self.scheduler
                if sched is not None and not isinstance(sched, TrampolineScheduler):
                    with self.lock:
                        if not self.flag.disposed:
                            self.waiting = True
                            self.timer = sched.schedule_relative(delay, self._wake)
                            return
                    self._cancelled()
                    return
                if not self._block(delay):
                    self._cancelled()
                    return
        except BaseException as error:
            # Ctrl-C while waiting to send again, or in _advance's own handling of the
            # failure (deciding to wait, say), which its except clauses do not cover.
            self._let_go(error)
            raise

    def _block(self, delay: float) -> bool:
        """Wait on this thread; False if disposed meanwhile."""
        virtual = self.time
        if isinstance(virtual, VirtualTimeScheduler) and virtual is not self.scheduler:
            virtual.sleep(delay)
            return not self.flag.disposed
        return not self.flag.wait(delay)

    def _let_go(self, error: BaseException) -> None:
        """An exception :meth:`_advance` let out with the reply unended (a
        ``KeyboardInterrupt`` between two attempts, or in its own handling of a failure):
        save what was delivered, as it does, before it is let go (:meth:`start` closes the
        run)."""
        persister = self.run.persister
        if not persister.finished:
            persister.interrupt(error)

    def _wake(self, _: Any = None, __: Any = None) -> None:
        try:
            with self.lock:
                if not self.waiting:
                    return
                self.waiting = False
                self.timer = None
            if self.run.persister.stop is not None:
                self._cancelled()  # stopped while waiting to send again
                return
        except BaseException as error:  # a scheduler on the main thread: Ctrl-C lands here
            try:
                self._let_go(error)
            finally:
                if self.run.persister.finished:
                    self.run.close()
            raise
        self.start()

    def _on_dispose(self) -> None:
        with self.lock:
            self.waiting = False
            timer, self.timer = self.timer, None
        if timer is not None:
            timer.dispose()
        run = self.run
        persister = run.persister
        try:
            persister.cancel_from_elsewhere(bool(run.tools))
        finally:  # (a busy database keeps the checkpoint pending: the read ends all the same)
            breaker = self.breaker
            if breaker is not None and threading.get_ident() != self.reader:
                breaker.abort()  # a read waiting for the server returns now
        if persister.finished:
            run.close()

    def _on_stop(self, error: ReplyStopped) -> None:
        """``cw.stop``, on the heartbeat's thread: no chunk is delivered from now on; the
        checkpoint is written and the subscriber told at once unless the driver is
        delivering a chunk (then it does both right after that chunk) or running tools
        (then once they return and their outputs are stored, as on asyncio)."""
        persister = self.run.persister
        persister.stop = error
        self.flag.disposed = True  # before looking at busy, as a dispose does
        with persister._claim:
            persister._claimed = True
            busy = persister.busy or self.tools_running
            persister._claimed = False
        if not busy:
            self._end_stopped()
        self.flag.wake()

    def _end_stopped(self) -> None:
        """End a stopped reply: whoever writes its checkpoint first tells the subscriber.

        The heartbeat's thread and the driver's may both get here; the second waits until
        the first has told the subscriber, so the driver never returns before it is told
        (``call()`` would find no error and return the round before the stop as the reply).
        """
        run = self.run
        persister = run.persister
        assert persister.stop is not None
        with self.ending:
            checkpoint = persister.stop_now(persister.stop)
            if checkpoint is None:
                return  # ended already (completed, or the other party got there first)
            failure = StreamInterrupted(checkpoint)
            failure.__cause__ = run.hooks_failed(persister.stop)
            run.close()
            self.observer.on_error(failure)

    def _cancelled(self, error: BaseException | None = None) -> None:
        """The subscription ended from outside: a dispose (checkpoint, no message) or a stop."""
        if self.run.persister.stop is not None:
            self._end_stopped()
        else:
            self.run.persister.interrupt(error)

    def _hand(self, chunk: Chunk, fold: bool = True) -> None:
        """Hand ``chunk`` to the subscriber if it still wants it; then fold it in. Once this
        returns, ``chunk`` was delivered: a round failing afterwards (in :meth:`_attended`,
        say) is not sent again.

        :meth:`_advance`'s untimed loop holds a copy of this and of :meth:`_attended` (one
        call less a chunk): change both."""
        p = self.persister
        guard = self.guard
        flag = self.flag
        watch = self.watch
        guard.critical = True  # a Ctrl-C in our code from here waits for the fold
        p.busy = True
        if p._claimed:
            p.wait_claim()
        if flag.disposed or watch.is_stopped:
            p.busy = False
            guard.release()
            raise _Cancelled
        if chunk.kind is _REWIND and fold:
            self._admit(chunk)
        try:
            self.out(chunk)
        except BaseException as error:
            # Delivered: the subscriber had it when it (or a signal in its code) raised.
            self.user_raised = isinstance(error, Exception)
            if fold:
                p.add(chunk)
            else:
                p.passed(chunk)
            p.busy = False
            self._release_raising()
            raise
        if fold:
            p.add(chunk)
        else:
            p.passed(chunk)
        p.busy = False
        guard.critical = False
        if guard.held:
            guard.release()  # delivers the signal held meanwhile

    def _admit(self, chunk: Chunk) -> None:
        """A ``REWIND``, before it is delivered (the persister busy): one the persister
        cannot honour is refused (:meth:`~rxcontext.persist.ReplyPersister.admit_rewind`),
        neither delivered nor folded; its error ends the reply, as a hook's would."""
        try:
            self.persister.admit_rewind(chunk)
        except BaseException:
            self.persister.busy = False
            self._release_raising()
            raise

    def _attended(self) -> None:
        """After a chunk's fold: the checkpoint write the timer handed the driver, and the
        subscriber's own dispose (``take(n)``, say)."""
        if self.persister.attention:
            self.persister.attend()
        if self.flag.disposed or self.watch.is_stopped:
            raise _Cancelled  # disposed by the subscriber's own on_next (take(n), say)

    def _showing(self) -> Callable[[Chunk], None]:
        """``emit`` for an attempt whose usage chunks say less than the reply was billed
        (sent again, or resuming): each is delivered as the persister shows it
        (:meth:`~rxcontext.persist.ReplyPersister.shown`) and folded as it came."""
        emit, shown = self.emit, self.persister.shown

        def showing(chunk: Chunk) -> None:
            emit(shown(chunk))

        return showing

    def _hook_failed(self, chunk: Chunk, error: BaseException) -> None:
        """A per-chunk hook raised on ``chunk``. Its own error refuses the chunk (never
        folded, never sent again for); a signal landing in it (``KeyboardInterrupt``, a
        ``SystemExit`` from a SIGTERM handler) finds the chunk delivered to the program's
        code (``cw.call(middleware(on_chunk=show))`` shows it there): folded, as a signal
        in ``on_next`` leaves it (:meth:`_hand`), before the driver saves the checkpoint.
        A ``REWIND`` the persister refuses is not folded (the signal goes on, not the
        refusal: the checkpoint holds what came before it)."""
        if isinstance(error, Exception):
            self.hook_raised = True
            return
        p = self.persister
        guard = self.guard
        guard.critical = True  # another signal waits for the fold
        p.busy = True
        if p._claimed:
            p.wait_claim()
        if not p.finished and (chunk.kind is not _REWIND or p.admits_rewind(chunk)):
            p.add(chunk)  # (finished: ended from another thread meanwhile)
        p.busy = False
        self._release_raising()

    def _release_raising(self) -> None:
        """End the fold of a chunk whose delivery raised (the caller re-raises that): a
        signal held during the fold is delivered now, not dropped; its exception, if it
        raises one, is what goes on (the first as its ``__context__``)."""
        guard = self.guard
        if not guard.held:
            guard.critical = False
            return
        try:
            guard.release()
        except BaseException:
            self.user_raised = False  # what goes on is the signal's, not on_next's error
            raise

    user_raised = False
    hook_raised = False
    """Whether a middleware hook raised: its error is the user's, never sent again for."""
    due: float | None = None
    """When the reply's deadline passes (on :meth:`clock`), if it has one."""

    def _left(self) -> Callable[[], float] | None:
        """The seconds left until the deadline, if there is one on the real clock (a tool
        on this thread cannot be waited for on a virtual one: it is checked after it)."""
        due = self.due
        if due is None or isinstance(self.time, VirtualTimeScheduler):
            return None
        return lambda: due - time.monotonic()

    def _broken(self, delivered: bool, limit: float | None) -> StreamTimeout:
        """The error for a read the watchdog broke: the limit it outlasted."""
        run = self.run
        if self.due is not None and (limit is None or self.clock() >= self.due):
            return run.deadline_passed()
        if limit is None:  # broken as the read before (the first chunk's) returned
            delivered, limit = False, run.timeouts.first_chunk
            assert limit is not None
        return run.timeout(delivered, limit)

    def _advance(self) -> float | None:
        """Run rounds until the run ends (None) or the current round should be sent again."""
        run = self.run
        persister = run.persister
        hooks = run.hooks
        timeouts = run.timeouts
        timed = timeouts.timed
        hand, attended = self._hand, self._attended
        it: Iterator[Chunk] | None = None
        delivered = False
        try:
            if not self.started:
                self.started = True
                if timeouts.deadline is not None:
                    self.due = self.clock() + timeouts.deadline
                run.open()
                for hook in hooks:
                    if hook.on_start is not None:
                        hook.on_start()
            while True:
                if self.request is None:
                    self.request = run.request(self.rounds)
                    self.attempt = 0
                request = self.request
                if self.due is not None and self.clock() >= self.due:
                    raise run.deadline_passed()
                # Current while the attempt reads (once per attempt, not per chunk): the
                # provider notes its response there, and a dispose shuts it (_on_dispose).
                self.reader = threading.get_ident()
                breaker = self.breaker = Breaker()
                if self.flag.disposed or self.watch.is_stopped:
                    raise _Cancelled  # (looked at after the breaker is set: see _on_dispose)
                self.attempt += 1
                delivered = False
                persister.sent()
                # The hooks see the USAGE chunks as the subscriber does (the reply's billing
                # before this attempt counted in), decided once an attempt: None, as sent.
                show = persister.shown if persister.carries() else None
                self.out = self._showing() if show is not None else self.emit
                try:
                    with breaking(breaker):
                        it = run.chunks(request)
                        if not timed:
                            # _hand(chunk) and _attended(), written out: the per-chunk path
                            # of most streams.
                            p, guard, flag, watch = (
                                self.persister,
                                self.guard,
                                self.flag,
                                self.watch,
                            )
                            emit = self.out
                            # One plain Middleware (the usual case) is called as its
                            # chunk() would call it, with no loop over the hooks; whether
                            # it is plain (no subclass, chunk() not wrapped by a spy) is
                            # looked at once an attempt, not per chunk.
                            lone = (
                                hooks[0]
                                if len(hooks) == 1
                                and type(hooks[0]) is Middleware
                                and Middleware.chunk is PLAIN_CHUNK
                                else None
                            )
                            # builder.add once the attempt's first chunk went through
                            # p.add, if that is all p.add does (folds_plainly).
                            fold: Callable[[Chunk], None] | None = None
                            for chunk in it:
                                if lone is not None:
                                    only = lone.only_on_chunk
                                    seen = chunk if show is None else show(chunk)
                                    try:
                                        if only is None:
                                            lone.chunk(seen)
                                        else:
                                            only(seen)  # what lone.chunk would do, unless
                                            if lone.only_on_chunk is not only:  # it set one
                                                lone.tool_hooks(seen)
                                    except BaseException as error:
                                        self._hook_failed(chunk, error)
                                        raise
                                elif hooks:
                                    seen = chunk if show is None else show(chunk)
                                    try:
                                        for hook in hooks:
                                            only = hook.only_on_chunk
                                            if (
                                                only is None
                                                or type(hook) is not Middleware
                                                or Middleware.chunk is not PLAIN_CHUNK
                                            ):  # a subclass, or chunk wrapped (a spy, say)
                                                hook.chunk(seen)
                                                continue
                                            only(seen)  # what hook.chunk would do, unless
                                            if hook.only_on_chunk is not only:  # it set one
                                                hook.tool_hooks(seen)
                                    except BaseException as error:
                                        self._hook_failed(chunk, error)
                                        raise
                                guard.critical = True  # a Ctrl-C in our code from here waits
                                p.busy = True
                                if p._claimed:
                                    p.wait_claim()
                                if flag.disposed or watch.is_stopped:
                                    p.busy = False
                                    guard.release()
                                    raise _Cancelled
                                if chunk.kind is _REWIND:  # (rare: a replayed watch)
                                    self._admit(chunk)
                                try:
                                    emit(chunk)
                                except BaseException as error:
                                    self.user_raised = isinstance(error, Exception)
                                    p.add(chunk)  # delivered: the subscriber had it
                                    p.busy = False
                                    self._release_raising()
                                    raise
                                if fold is None:
                                    p.add(chunk)
                                    delivered = True  # (looked at only if this attempt fails)
                                    if p.folds_plainly:
                                        b = p.builder
                                        fold, texts = b.add, b._text
                                elif (
                                    chunk.kind is _TEXT
                                    and b._text_fresh < _LAST_FRESH
                                    and not chunk.metadata
                                ):
                                    # b.add(chunk) of a text delta, written out (one call
                                    # less a chunk): ReplyBuilder.add's TEXT branch short of
                                    # a block's join. Change both.
                                    b.chunks += 1
                                    text = chunk.text
                                    if text:
                                        texts.append(text)
                                        b._text_fresh += 1
                                else:
                                    fold(chunk)  # p.add past the attempt's first chunk
                                p.busy = False
                                guard.critical = False
                                if guard.held:
                                    guard.release()  # delivers the signal held meanwhile
                                if p.attention:
                                    p.attend()
                                if flag.disposed or watch.is_stopped:
                                    raise _Cancelled  # disposed by the subscriber's own on_next
                        else:
                            with watching(self.time, breaker) as watched:
                                while True:
                                    limit = timeouts.limit(delivered)
                                    if watched is None:
                                        asked = self.clock() if limit is not None else 0.0
                                    else:  # the watchdog breaks the read when it must end
                                        asked = self.clock()
                                        watched.arm(asked, limit, self.due)
                                    try:
                                        chunk = next(it)
                                    except StopIteration:
                                        if watched is None or not watched.fired:
                                            break
                                        if not delivered or chunk.kind is not ChunkKind.DONE:
                                            raise self._broken(delivered, limit) from None
                                        break  # only the end came late: the reply is whole
                                    except Exception:
                                        if watched is None or not watched.fired:
                                            raise
                                        if not delivered or chunk.kind is not ChunkKind.DONE:
                                            raise self._broken(delivered, limit) from None
                                        break  # (as on asyncio, which cuts such a read too)
                                    if watched is not None:
                                        watched.due = inf
                                        if watched.fired:
                                            raise self._broken(delivered, limit)
                                    if self.flag.disposed or self.watch.is_stopped:
                                        raise _Cancelled
                                    if self.due is not None and self.clock() > self.due:
                                        raise run.deadline_passed()
                                    if limit is not None and self.clock() - asked > limit:
                                        raise run.timeout(delivered, limit)
                                    seen = chunk if show is None else show(chunk)
                                    try:
                                        for hook in hooks:
                                            hook.chunk(seen)
                                    except BaseException as error:
                                        self._hook_failed(chunk, error)
                                        raise
                                    hand(chunk)
                                    delivered = True  # before the write the timer handed
                                    attended()  # the driver: a failed one is not sent again
                    if self.flag.disposed or self.watch.is_stopped:
                        raise _Cancelled  # its read ended by the dispose, or as it came
                except _Cancelled:
                    if not persister.whole(bool(run.tools)):
                        raise
                    close_chunks(it)  # let go holding the reply's DONE: it is whole
                except Exception:
                    if self.user_raised or self.hook_raised or not self._gone():
                        raise
                    if not persister.whole(bool(run.tools)):
                        raise _Cancelled from None  # a read the dispose broke
                    close_chunks(it)
                it = None
                self.request = None
                reply = persister.reply()
                calls = run.calls_to_run(reply)
                if not persister.complete(reply, last=not calls):
                    self._cancelled()  # disposed or stopped from another thread meanwhile
                    return None
                if not calls:
                    break
                self.rounds += 1
                run.check_rounds(self.rounds)
                self.tools_running = True  # a stop waits for the tools and their outputs
                try:
                    results = _run_tools_sync(run, calls, self._gone, self._left())
                    if self._gone() and persister.stop is None:
                        raise _Cancelled  # disposed while they ran: outputs not stored
                    run.store_results(results)
                finally:
                    self.tools_running = False
                if self._gone():
                    raise _Cancelled  # stopped while they ran: outputs stored, now end
                for chunk in run.result_chunks(results):
                    for hook in hooks:
                        hook.chunk(chunk)
                    hand(chunk, fold=False)
                    attended()
            if persister.stop is None and self._gone():
                return None  # the subscriber let go holding the DONE: stored, nobody to tell
            for hook in hooks:
                if hook.on_complete is not None:
                    hook.on_complete()
        except _Cancelled:
            self._cancelled()
            return None
        except Exception as error:
            if self.user_raised:
                persister.stopped_by_user_code(bool(run.tools))
                raise
            if self._gone():
                self._cancelled(error)
                return None
            if (
                self.request is not None
                and not self.hook_raised
                and (not delivered or persister.may_send_again())
            ):
                if it is not None:
                    close_chunks(it)
                    it = None
                delay = run.retry_delay(error, self.attempt)
                if delay is not None and self.due is not None and self.clock() + delay >= self.due:
                    delay = None  # the deadline would pass during the wait
                if delay is not None:
                    persister.sending_again()  # the failed attempt's usage was billed
                    try:
                        run.check_retry()  # the whole request again: within the budget?
                    except Exception as refused:  # BudgetExceeded: the reply ends unsent
                        self.observer.on_error(run.fail(refused))  # type: ignore[arg-type]
                        return None
                    return delay
            self.observer.on_error(run.fail(error))  # type: ignore[arg-type]
            return None
        except BaseException as error:  # KeyboardInterrupt, SystemExit: save, then let it go
            if self.user_raised:
                persister.stopped_by_user_code(bool(run.tools))
            elif persister.whole(bool(run.tools)):
                persister.commit_whole(error)  # it landed holding the final DONE: as on asyncio
            else:
                persister.interrupt(error)
            raise
        finally:
            if it is not None:
                close_chunks(it)
        self.observer.on_completed()
        return None


def _drive(
    run: Run,
    observer: abc.ObserverBase[Chunk],
    flag: _Flag,
    scheduler: abc.SchedulerBase | None = None,
) -> None:
    """Drive ``run`` into ``observer``; with no ``scheduler``, to the end on this thread."""
    _SyncDriver(run, observer, flag, scheduler).start()


def run_observable(
    make_run: Callable[[], Run], scheduler: abc.SchedulerBase | None = None
) -> Observable[Chunk]:
    """A cold Observable: each subscription makes a fresh :class:`Run` and drives it.

    The producer runs on the scheduler given to ``subscribe``, else on ``scheduler``, else on
    the current thread's trampoline; retry waits and timeouts use that scheduler's time.
    """

    def producer(
        observer: abc.ObserverBase[Chunk], flag: _Flag, sched: abc.SchedulerBase
    ) -> Callable[[abc.SchedulerBase, Any], None]:
        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            if flag.disposed or getattr(observer, "is_stopped", False):
                return
            try:
                run = make_run()
            except Exception as error:
                observer.on_error(error)
                return
            _SyncDriver(run, observer, flag, sched).start()

        return action

    def subscribe(
        observer: abc.ObserverBase[Chunk], subscribe_scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        flag = _Flag()
        trampoline = CurrentThreadScheduler.singleton()
        sched = subscribe_scheduler or scheduler or trampoline
        if isinstance(sched, ImmediateScheduler) or (
            isinstance(sched, TrampolineScheduler) and sched is not trampoline
        ):
            # These run an action inside schedule(), so the producer would run to its end
            # before this subscription is wired (a take(n) downstream could never stop it).
            # The thread's own trampoline runs it right after, on the same thread.
            sched = trampoline
        return CompositeDisposable(
            Disposable(flag.dispose), sched.schedule(producer(observer, flag, sched))
        )

    return _ReplyObservable(subscribe, producer if scheduler is None else None)


class _ReplyObservable(Observable[Chunk]):
    """The Observable of :func:`run_observable`.

    Subscribed with no scheduler on a thread whose trampoline is idle (``cw.stream(...)
    .subscribe(...)`` with no operator after it, the common case), it wires the
    subscription itself and schedules the producer as the trampoline's only item. RxPY's
    own ``subscribe`` schedules the wiring as the trampoline's first item, and the wiring
    schedules the producer as a second (each with its clock read, priority queue and
    disposables): the same order, one item less. Anything else (a scheduler, a
    subscription from inside a running trampoline: an operator's, a nested one) goes
    through RxPY's ``subscribe`` as before."""

    def __init__(
        self,
        subscribe: Callable[
            [abc.ObserverBase[Chunk], abc.SchedulerBase | None], abc.DisposableBase
        ],
        producer: Callable[
            [abc.ObserverBase[Chunk], _Flag, abc.SchedulerBase],
            Callable[[abc.SchedulerBase, Any], None],
        ]
        | None,
    ) -> None:
        super().__init__(subscribe)
        self._producer = producer

    def subscribe(
        self,
        on_next: Any = None,
        on_error: abc.OnError | None = None,
        on_completed: abc.OnCompleted | None = None,
        *,
        scheduler: abc.SchedulerBase | None = None,
    ) -> abc.DisposableBase:
        """As ``Observable.subscribe`` (an observer, or callbacks)."""
        producer = self._producer
        trampoline = CurrentThreadScheduler.singleton()
        # The thread's trampoline, looked up once (schedule_required and schedule would
        # each look it up again: the current thread, a weak dictionary).
        tramp = trampoline.get_trampoline()
        if producer is None or scheduler is not None or not tramp.idle():
            return super().subscribe(on_next, on_error, on_completed, scheduler=scheduler)
        if isinstance(on_next, abc.ObserverBase) or callable(getattr(on_next, "on_next", None)):
            on_next, on_error, on_completed = (
                on_next.on_next,
                on_next.on_error,
                on_next.on_completed,
            )
        observer: AutoDetachObserver[Chunk] = AutoDetachObserver(on_next, on_error, on_completed)
        flag = _Flag()
        # Wired before the producer runs, as RxPY's first item would have wired it.
        observer.subscription = Disposable(flag.dispose)
        # What trampoline.schedule(action) does, due now: its item run by the thread's
        # trampoline (idle: it runs it here, then anything scheduled meanwhile).
        action = producer(observer, flag, trampoline)
        tramp.run(ScheduledItem(trampoline, None, action, trampoline.now))
        return Disposable(observer.dispose)
