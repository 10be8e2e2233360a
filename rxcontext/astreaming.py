"""The asyncio stream driver: one reply (or a tool loop of rounds) as an async iterator.

The same loop as the Observable's (:mod:`.streaming`), over the model's async iterator.
Nothing blocks the event loop on the store: committing the reply and writing its
checkpoints run in a worker thread the driver awaits, and so do opening the reply and
reading its history unless a SQLite store can do them at once (nothing holds it, no lock to
wait for, nothing synced to disk, a short history: then they run on the loop's thread,
which saves a trip to the worker thread on the way to the first chunk); a write
that was under way when the task is cancelled is waited for, so what the store holds and
what the driver believes always agree, and then the cancellation goes on.

A chunk is delivered when it is yielded. If the consumer stops while holding one (its task
is cancelled, or it ends without closing the iterator), a done-callback on its task saves
the checkpoint as the task ends, in a worker thread; closing the iterator (``aclose()``,
the loop's shutdown) waits for that write. A consumer that closes it (``aclosing``) has
it saved before its task ends, so code that lists checkpoints right after catching
``CancelledError`` finds it. The task watched is the one that advanced
the iterator last (``anext`` from several tasks is one consumer: see :class:`_Watch`); if
the iterator is advanced again after that task ended, it raises
:class:`~rxcontext.StreamInterrupted`: a reply is never carried on past its checkpoint,
nor ends as if it had been stored. A consumer that stops holding the final round's
``DONE`` (a ``break`` on it, its task cancelled then) had the whole reply: it is committed
instead, as the end of the stream commits it (a round whose tool calls are still to run is
not the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from reactivex import abc

from . import _abandoned, _dropped, _forks, _loopterm
from ._replystream import ReplyStream
from .chunks import Chunk, ChunkKind, ToolCall
from .errors import ReplyStopped, RxContextError, StoreError, StreamInterrupted
from .operators import Middleware
from .persist import ReplyPersister
from .providers.base import Request
from .records import Checkpoint
from .run import Run, aclose_chunks
from .tools import ToolResult, areview

__all__ = ["off_loop", "run_async"]

_T = TypeVar("_T")


async def off_loop(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run ``fn`` in a worker thread, in the caller's context (its context variables: an
    OpenTelemetry span started there has the caller's parent), as ``asyncio.to_thread``
    does; a cancellation waits for it to end, then goes on."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    future = loop.run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                pass
            except Exception:
                break
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what goes on
        raise


class _Watch:
    """Ends the reply when the task holding its last delivered chunk ends with it.

    A consumer that stops while it holds a chunk without closing the iterator (its task
    cancelled while its loop body awaits, or ended) leaves the driver suspended at
    ``yield``; the loop would close the dropped iterator a few turns later, never if it
    stops first, nor while anything else references it (an app's registry of its streams).
    So a done-callback on that task saves the checkpoint as it ends, in a worker thread (the
    store may wait for a lock or the network: never on the loop), and closes the model's
    stream in a task: the reply is settled, and an open response goes on generating (and
    billing). The driver waits for both before it ends (``aclose()``, the loop's shutdown).

    The watched task is the one that advanced the driver last: a driver advanced from
    several tasks (each ``anext`` in a task of its own: ``asyncio.wait_for`` on Python
    3.11, a race against a disconnect) moves it along, and the stopper's cancel with it. A
    task that was only an ``anext`` handed its chunk to whoever awaits it: its end is no
    consumer leaving, and the watch waits for the next ``anext``.
    """

    __slots__ = (
        "answers_calls",
        "closing",
        "fired",
        "kept",
        "model",
        "pending",
        "persister",
        "stopper",
        "task",
    )

    def __init__(self, persister: ReplyPersister, stopper: _Stopper, answers_calls: bool) -> None:
        self.persister = persister
        self.stopper = stopper
        self.answers_calls = answers_calls
        self.task: asyncio.Task[Any] | None = None
        self.fired = False
        """Whether the watch ended the reply (the driver then goes no further)."""
        self.kept = False
        """Whether the task held the reply's final DONE: the watch committed it."""
        self.pending: asyncio.Future[Checkpoint | None] | None = None
        """The watch's checkpoint write, in a worker thread."""
        self.model: AsyncIterator[Chunk] | None = None
        """The model's stream the driver reads (set by the driver)."""
        self.closing: asyncio.Task[None] | None = None
        """The watch's close of :attr:`model`."""

    def follow(self, task: asyncio.Task[Any] | None) -> None:
        """Watch ``task`` (the one advancing the driver now) instead; None: no task."""
        if self.task is not None:
            self.task.remove_done_callback(self)
        self.task = task
        if task is not None:
            self.stopper._task = weakref.ref(task)
            # The watch itself is the callback: a bound method would be one more object
            # the cyclic collector tracks for as long as the reply streams.
            task.add_done_callback(self)

    def __call__(self, task: asyncio.Task[Any]) -> None:
        """The watched task ended (its done-callback)."""
        if task is not self.task:
            return  # called late: another task advanced the driver since
        self.task = None
        if self.persister.finished or isinstance(task.get_coro(), _ANEXT):
            return  # an ``anext`` handed its chunk on: the next one says who holds it
        self.fired = True
        # It held the final DONE: the reply is whole and committed, else interrupted.
        self.kept = self.persister.whole(self.answers_calls)
        end = functools.partial(self.persister.let_go, self.answers_calls)
        write = functools.partial(contextvars.copy_context().run, end)
        loop = task.get_loop()
        try:
            self.pending = loop.run_in_executor(None, write)
        except RuntimeError:  # its executor is shut down: the loop is ending anyway
            self.pending = loop.create_future()
            self.pending.set_result(end())
        agen = self.stopper.agen
        if self.model is not None and agen is not None and getattr(agen, "ag_await", 0) is None:
            # At ``yield``, so the model's stream is idle (a driver that another task is
            # advancing may be reading it: it ends the stream itself when next advanced).
            with contextlib.suppress(RuntimeError):  # a closed loop: the driver's end closes it
                self.closing = loop.create_task(aclose_chunks(self.model))

    async def landed(self) -> None:
        """Wait for the watch's checkpoint write and its close, if it started them."""
        if self.pending is not None:
            await _settled(self.pending)
        if self.closing is not None:
            await _settled(self.closing)

    async def close(self, model: AsyncIterator[Chunk]) -> None:
        """Close the model's stream, once the watch's close of it is over (a second
        ``aclose()`` while one runs raises)."""
        if self.closing is not None:
            await _settled(self.closing)
        await aclose_chunks(model)

    async def ended(self) -> RxContextError:
        """What the driver raises when it is advanced after the watch ended the reply."""
        await self.landed()
        checkpoint = self.pending.result() if self.pending is not None else None
        if checkpoint is None:  # it had ended meanwhile: taken over, or stopped
            return self.persister.lost or RxContextError(
                "the stream cannot go on: the reply ended as the task holding its last chunk ended"
            )
        return StreamInterrupted(
            checkpoint,
            "stream interrupted: the task that held its last chunk ended without closing "
            f"it, and its checkpoint {checkpoint.id} was saved then; the stream cannot go on",
        )


class _Unended(_Watch):
    """The watch of a driver whose end has not run; the end makes it a plain
    :class:`_Watch` (``__class__``: a finaliser that every reply ran cost a reply ~5,000
    instructions; the swap, with the subclass, ~1,200 with the stopper's weak task: see
    docs/benchmarks.md, fix/dropreg).

    Only the driver's frame holds its watch (the tasks it watches hold it while the driver
    runs, and nothing outside holds them: the stopper's reference to its task is weak). If
    that frame is let go with the driver's end never run (its loop closed first, a consumer
    still holding a chunk in a task the loop never runs again), the reply is ended elsewhere
    (:mod:`._abandoned`). One that never began has nothing to end."""

    __slots__ = ()

    def __del__(self) -> None:
        if self.stopper.run.opened:
            _abandoned.settle(self.stopper, self.answers_calls)


async def _run_tools_async(
    run: Run, calls: Sequence[ToolCall], check: Callable[[], None]
) -> list[ToolResult]:
    # As on the sync path: the approval hook sees every call first, one after the other (it
    # may ask a person); then the approved tools run. A stop meanwhile (``check()`` raises
    # it) asks about no further call and starts no tool; a tool already running finishes.
    approval = run.tool_approval
    decided: list[ToolResult | None] = []
    for call in calls:
        if approval is not None:
            check()
        decided.append(await areview(approval, call) if approval is not None else None)
    check()
    todo = [c for c, d in zip(calls, decided, strict=True) if d is None]
    if run.parallel_tools:
        ran = list(await asyncio.gather(*(run.arun_tool(c) for c in todo)))
    else:  # each started when the one before returned: a cancellation starts no more
        ran = [await run.arun_tool(c) for c in todo]
    results = iter(ran)
    return [d if d is not None else next(results) for d in decided]


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait until ``future`` is done (its outcome is left to whoever reads it); a
    cancellation meanwhile waits too, then goes on."""
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError as error:
            cancelled = error
    if cancelled is not None:
        raise cancelled


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _sleep(seconds: float, scheduler: abc.SchedulerBase | None) -> None:
    """``asyncio.sleep``, or a wait on ``scheduler``'s clock (virtual under a TestScheduler)."""
    if scheduler is None:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def fire(_: abc.SchedulerBase, __: Any = None) -> None:
        loop.call_soon_threadsafe(_resolve, done)

    timer = scheduler.schedule_relative(seconds, fire)
    try:
        await done
    finally:
        timer.dispose()


class _Deadline:
    """``asyncio.timeout`` on an Rx scheduler's clock: cancels the task when due.

    Like ``asyncio.timeout`` it turns that cancellation (and only that one) into an expiry.
    """

    def __init__(self, seconds: float, scheduler: abc.SchedulerBase) -> None:
        self._seconds = seconds
        self._scheduler = scheduler
        self._expired = False
        self._exited = False
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: abc.DisposableBase | None = None

    def expired(self) -> bool:
        return self._expired

    async def __aenter__(self) -> _Deadline:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer = self._scheduler.schedule_relative(self._seconds, self._fire)
        return self

    def _fire(self, _: abc.SchedulerBase, __: Any = None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._expire)

    def _expire(self) -> None:
        if not self._exited and self._task is not None:
            self._expired = True
            self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._exited = True
        if self._timer is not None:
            self._timer.dispose()
        if self._expired and kind is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:
                raise TimeoutError


async def _next_within(
    it: AsyncIterator[Chunk], seconds: float, scheduler: abc.SchedulerBase | None
) -> Chunk:
    """The next chunk, or :class:`_Expired` after ``seconds`` (at once, nothing read, when
    none are left: the caller decides whether that cuts the stream)."""
    if seconds <= 0:
        raise _Expired
    deadline: asyncio.Timeout | _Deadline = (
        asyncio.timeout(seconds) if scheduler is None else _Deadline(seconds, scheduler)
    )
    try:
        async with deadline:
            return await anext(it)
    except TimeoutError:
        if deadline.expired():
            raise _Expired from None
        raise


class _Stopper:
    """``cw.stop`` for the asyncio driver: the heartbeat's thread hands the stop to the loop.

    There it looks at what the driver's generator is suspended on, so the hot path keeps no
    state for it: waiting for the model's next chunk or to send a request again (a retry
    wait), the await is cancelled and the stop raised in its place; holding a delivered
    chunk (suspended at ``yield``), the checkpoint is written at once (in a worker thread)
    and the stop raised when the consumer asks for more; in one of the driver's own steps (a
    store write, tools, an async hook) the stop is raised when it ends — among a round's
    tools, before the approval hook is asked about the next call and before the tools
    start, so only a tool already running finishes (as on the sync path).
    """

    __slots__ = (
        "__weakref__",
        "_agen",
        "_task",
        "asked",
        "cancelled",
        "ended",
        "forks",
        "loop",
        "run",
        "settled",
    )

    def __init__(self, run: Run) -> None:
        self.run = run
        # Weak: the heartbeat holds the stopper (through ``run.on_stop``) for as long as the
        # reply is registered, and a strong reference would keep a generator its consumer
        # dropped without closing alive, its response open, until the loop shuts down.
        self._agen: weakref.ref[AsyncGenerator[Chunk, None]] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Weak too: a consumer's task still pending as its loop is closed (the loop never
        # runs it again) holds the driver's frame, whose end must then be told
        # (:mod:`._abandoned`): held from here (through the heartbeat, or the loop's SIGTERM
        # hand-over), that frame was never let go.
        self._task: weakref.ref[asyncio.Task[Any]] | None = None
        self.cancelled = False
        self.asked: ReplyStopped | None = None
        """The stop, as soon as the heartbeat hands it over: a blocking approval hook may
        hold the loop, and the stop must still be seen before the next call is asked about."""
        self.ended = False
        self.settled: asyncio.Future[None] | None = None
        """Made by :func:`._dropped.note` if the generator is dropped while the driver runs."""

    @property
    def task(self) -> asyncio.Task[Any] | None:
        """The task advancing the driver (the one its watch follows), while it exists."""
        return self._task() if self._task is not None else None

    @property
    def agen(self) -> AsyncGenerator[Chunk, None] | None:
        """The driver's generator, while its consumer holds it."""
        return self._agen() if self._agen is not None else None

    @agen.setter
    def agen(self, agen: AsyncGenerator[Chunk, None]) -> None:
        self._agen = weakref.ref(agen)

    def __call__(self, _: weakref.ref[AsyncGenerator[Chunk, None]]) -> None:
        """The generator was dropped (see :meth:`start`)."""
        _dropped.note(self)

    def start(self) -> None:
        """On the loop, as the driver starts: stops can be taken from here on (SIGTERM at
        its default too, on the main thread's loop: :mod:`rxcontext._loopterm`). If the
        loop closes the generator once dropped, the drop is told (:mod:`._dropped`): the
        weak reference to it gets this stopper as its callback (no object more a reply)."""
        self.loop = loop = asyncio.get_running_loop()
        # The process the reply begins in (it is opened after this): a forked child's copy
        # of the driver, let go there, must not end it (:func:`._abandoned.settle`).
        self.forks = _forks.generation
        agen = self.agen
        if agen is not None and _dropped.finalised_by(loop):
            self._agen = weakref.ref(agen, self)
        del agen
        self.run.on_stop = self.request
        _loopterm.enter(self)

    def terminate(self, error: ReplyStopped) -> asyncio.Future[Any] | None:
        """SIGTERM (:mod:`rxcontext._loopterm`): stop the reply as :meth:`_on_loop` does; a
        future done once it is saved when that is at once (its consumer holds a chunk, or
        it has ended) or once its final write under way ends, None when the driver ends it
        (and then leaves)."""
        loop = self.loop
        assert loop is not None
        persister = self.run.persister
        agen = self.agen
        done: asyncio.Future[Any] = loop.create_future()

        # Its final write (the commit, or the checkpoint; after a commit that failed, its
        # checkpoint still to come) may be under way in a worker thread, waiting for a
        # lock: done once it ends, not before.
        def told() -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nothing to wait for
                loop.call_soon_threadsafe(_settle, done)

        if persister.when_final_written(told):
            if persister.stop is None:  # a commit a lock refuses is not waited for twice
                persister.stop = error
            return done
        if persister.finished:  # stored, or kept pending
            done.set_result(None)
            return done
        if agen is None or getattr(agen, "ag_frame", None) is None:
            done.set_result(None)
            return done
        if persister.stop is not None:
            return None  # a stop is under way: the driver ends the reply
        persister.stop = error
        return self._end(agen, error)

    def request(self, error: ReplyStopped) -> None:
        self.asked = error
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the stream is gone too
                loop.call_soon_threadsafe(self._on_loop, error)

    def _on_loop(self, error: ReplyStopped) -> None:
        persister = self.run.persister
        agen = self.agen
        if persister.finished or persister.stop is not None or agen is None:
            return
        persister.stop = error
        if getattr(agen, "ag_frame", None) is None:
            return  # it ended meanwhile
        self._end(agen, error)

    def _end(
        self, agen: AsyncGenerator[Chunk, None], error: ReplyStopped
    ) -> asyncio.Future[Any] | None:
        """End the reply for ``persister.stop`` by where the driver is suspended: the
        checkpoint's write (in a worker thread) when the consumer holds a chunk, else None."""
        awaiting = getattr(agen, "ag_await", None)
        task = self.task
        if awaiting is None:  # at ``yield``: the consumer holds a delivered chunk
            assert self.loop is not None
            return self.loop.run_in_executor(None, self.run.persister.stop_now, error)
        if (
            getattr(awaiting, "cr_code", None) not in _OWN_STEPS
            and task is not None
            and not task.done()
        ):  # reading the model
            self.cancelled = True
            task.cancel()
        return None

    def check(self) -> None:
        """Raise the stop, if there is one (between two steps of the driver); one the loop
        has not taken yet too (it was busy: a blocking approval hook)."""
        persister = self.run.persister
        if persister.stop is None and self.asked is not None and not persister.finished:
            persister.stop = self.asked  # taken here: ``_on_loop`` leaves it alone
        stop = persister.stop
        if stop is not None:
            raise stop

    def reraise(self) -> None:
        """A cancellation arrived while reading: the stop's own becomes the stop. Only its
        own: if the task was cancelled from elsewhere too (a shutdown, a timeout, in the
        same loop turn), that cancellation goes on (the checkpoint is saved all the same)."""
        task = self.task
        if self.cancelled and task is not None:
            self.cancelled = False
            if task.uncancel() == 0:
                self.check()


def _settle(done: asyncio.Future[Any]) -> None:
    """On the loop: ``done`` is done (unless it was already)."""
    if not done.done():
        done.set_result(None)


async def _probe() -> AsyncGenerator[None, None]:
    yield None


def _anext_types() -> tuple[type, ...]:
    """The awaitables ``anext(agen)`` and ``anext(agen, default)`` return."""
    agen = _probe()
    steps = (agen.__anext__(), anext(agen, None))
    kinds = tuple({type(step) for step in steps})
    for step in steps:
        step.close()
    return kinds


_ANEXT = _anext_types()
"""A task running one of these only took a chunk for whoever awaits it (:class:`_Watch`)."""


def _clock(scheduler: abc.SchedulerBase | None) -> Callable[[], float]:
    """Seconds on the clock the driver's waits use: the scheduler's, or the event loop's."""
    if scheduler is not None:
        return lambda: scheduler.now.timestamp()
    return asyncio.get_running_loop().time


def _no_clock() -> float:
    """The clock of a driver with no deadline (never read)."""
    return 0.0


def _open_and_request(run: Run) -> Request:
    """Begin the reply (unless :func:`_at_once` did) and build its first request (in one
    worker-thread call)."""
    if not run.opened:
        run.open()
    return run.request(0)


def _at_once(run: Run) -> Request | None:
    """Begin the reply and build its first request here, on the loop's thread, when the
    store can do both at once: a SQLite store that nothing holds now, no lock to wait for
    and nothing synced to disk (see ``SQLiteStore.at_once``: a durable write, a long history
    or attachments are refused). None if not: what is left of it is done in the worker
    thread, with the store's waits, as always. This saves the trip to the worker thread
    and back (its two thread wake-ups) on the way to the first chunk."""
    persister = run.persister
    at_once = getattr(persister.store, "at_once", None)
    if at_once is None or persister.resumes:
        return None
    with at_once() as free:
        if not free:
            return None
        try:
            run.open()
            return run.request(0)
        except StoreError:  # busy or not at once: done again in the worker thread
            return None


class _Expired(Exception):
    """Internal: a timeout of the driver's own (not one the model raised)."""


def run_async(run: Run) -> AsyncGenerator[Chunk, None]:
    """The asyncio driver: the same loop as the Observable's, over the model's async iterator.

    Closing the iterator early (``aclose()``, a ``break`` under ``contextlib.aclosing``, a
    cancelled task) saves the checkpoint and closes the provider stream. Retry waits and
    timeouts use ``run.scheduler``'s clock, or the event loop's. ``cw.stop`` ends it with
    :class:`~rxcontext.StreamInterrupted` (see :class:`_Stopper`). Advanced again after the
    reply was cut, it raises that error again, never the end (:class:`ReplyStream`).
    """
    stopper = _Stopper(run)
    agen = _drive(run, stopper)
    stopper.agen = agen
    return ReplyStream(agen, run)


async def _drive(run: Run, stopper: _Stopper) -> AsyncGenerator[Chunk, None]:
    """The body of :func:`run_async`."""
    persister = run.persister
    hooks = run.hooks
    timeouts = run.timeouts
    timed = timeouts.timed
    # Read only when there is a deadline: a bound method held by every suspended driver
    # is one more object the cyclic collector tracks while thousands stream.
    clock = _clock(run.scheduler) if timeouts.deadline is not None else _no_clock
    due = clock() + timeouts.deadline if timeouts.deadline is not None else None
    it: AsyncIterator[Chunk] | None = None
    hook_raised = False
    answers_calls = bool(run.tools)
    watch: _Watch = _Unended(persister, stopper, answers_calls)
    # A reply of this context whose stream was dropped unclosed is settled first, as the
    # blocking twin's dispose settles it at once: its history is then the same.
    if dropped := _dropped.dropped(persister.store, persister.context_id):
        await asyncio.wait(dropped)
    if run.budget_check is not None:  # as stream() checks at subscription: nothing begun
        await off_loop(run.budget_check)
    stopper.start()
    watch.follow(asyncio.current_task())  # the stopper's task too
    try:
        # A tuple: an empty one (nearly always) is no object to keep while the reply streams.
        starts = tuple([hook for hook in hooks if hook.on_start is not None])
        first: Request | None = None
        if starts:  # they run on the loop between the reply's begin and its request
            await off_loop(run.open)
            for hook in starts:
                await hook.ahook("on_start")
        else:  # none, or one trip to the worker thread: both are on the first chunk's way
            first = _at_once(run)
            if first is None:
                first = await off_loop(_open_and_request, run)
        rounds = 0
        while True:
            if first is not None:
                request, first = first, None
            else:
                request = await off_loop(run.request, rounds)
            attempt = 0
            while True:
                if due is not None and clock() >= due:
                    raise run.deadline_passed()
                attempt += 1
                persister.sent()
                shows = persister.carries()  # its usage chunks shown with the reply's billing
                it = watch.model = run.achunks(request)
                delivered = False
                try:
                    while True:
                        if persister.stop is not None:
                            stopper.check()
                        limit = timeouts.limit(delivered) if timed else None
                        by_deadline = False
                        if due is not None:
                            left = due - clock()  # none left: _next_within expires at once
                            if limit is None or left <= limit:
                                limit, by_deadline = left, True
                        try:
                            if limit is None:
                                chunk = await anext(it)
                            else:
                                chunk = await _next_within(it, limit, run.scheduler)
                        except StopAsyncIteration:
                            break
                        except _Expired:
                            assert limit is not None
                            if delivered and chunk.kind is ChunkKind.DONE:
                                # Only the end is late (or the deadline passed while the
                                # consumer held DONE): the reply is whole, as the sync
                                # driver (which cannot cut a blocking read short) has it.
                                await aclose_chunks(it)
                                break
                            if by_deadline:
                                raise run.deadline_passed() from None
                            raise run.timeout(delivered, limit) from None
                        except asyncio.CancelledError:
                            stopper.reraise()
                            raise
                        # The hooks get the chunk the subscriber gets (a USAGE chunk with
                        # what the reply was billed before this attempt); the fold, as sent.
                        seen = persister.shown(chunk) if shows else chunk
                        try:
                            for hook in hooks:
                                if hook.awaits_chunks:
                                    await hook.achunk(seen)
                                else:
                                    hook.chunk(seen)
                        except Exception:
                            hook_raised = True  # it refused the chunk: not folded
                            raise
                        except BaseException:
                            # A cancel (Ctrl-C under asyncio.run) landing in the program's
                            # hook: it had the chunk, which counts as delivered (as the
                            # sync driver has it), saved with the checkpoint below.
                            persister.busy = True
                            if persister._claimed:
                                persister.wait_claim()
                            # A REWIND it refuses is not folded: the cancel goes on, not
                            # the refusal (the checkpoint holds what came before it).
                            if not persister.finished and (
                                chunk.kind is not ChunkKind.REWIND or persister.admits_rewind(chunk)
                            ):
                                persister.add(chunk)
                            persister.busy = False
                            raise
                        persister.busy = True
                        if persister._claimed:
                            persister.wait_claim()
                        if chunk.kind is ChunkKind.REWIND:  # (rare: a replayed watch)
                            try:
                                persister.admit_rewind(chunk)  # refused: never delivered
                            except BaseException:
                                persister.busy = False
                                raise
                        persister.add(chunk)  # delivered the moment it is yielded
                        persister.busy = False
                        delivered = True
                        yield seen
                        if watch.fired:  # the task holding it ended meanwhile
                            stopper.check()
                            if watch.kept:  # it held the final DONE: the reply is stored
                                await watch.landed()
                                return
                            raise await watch.ended()
                        if (task := asyncio.current_task()) is not watch.task:
                            watch.follow(task)
                        # What the timer or the heartbeat asked, once the chunk folded is
                        # delivered (a loss or a stop raised before the yield would leave
                        # an undelivered chunk in the checkpoint), as the sync driver does.
                        if persister.attention:
                            await off_loop(persister.attend)
                except Exception as error:
                    if hook_raised or (delivered and not persister.may_send_again()):
                        raise  # a hook's own error is never a reason to send again
                    await aclose_chunks(it)
                    it = None
                    delay = run.retry_delay(error, attempt)
                    if delay is None or (due is not None and clock() + delay >= due):
                        raise
                    persister.sending_again()  # the failed attempt's usage was billed
                    if run.budget_recheck is not None:  # the whole request again: within it?
                        await off_loop(run.check_retry)  # BudgetExceeded: ends it unsent
                    try:  # a stop cancels the wait (up to a Retry-After minute) at once
                        await _sleep(delay, run.scheduler)
                    except asyncio.CancelledError:
                        stopper.reraise()
                        raise
                    continue
                break
            it = None
            reply = persister.reply()
            calls = run.calls_to_run(reply)
            if not await off_loop(persister.complete, reply, last=not calls):
                stopper.check()  # ended meanwhile: it must not end as if it had been stored
                raise await watch.ended()
            if not calls:
                break
            rounds += 1
            run.check_rounds(rounds)
            if due is None:
                results = await _run_tools_async(run, calls, stopper.check)
            else:  # bounded: past the deadline async tools are cancelled, sync ones left
                left = due - clock()
                if left <= 0:
                    raise run.deadline_passed()
                bound: asyncio.Timeout | _Deadline = (
                    asyncio.timeout(left)
                    if run.scheduler is None
                    else _Deadline(left, run.scheduler)
                )
                try:
                    async with bound:
                        results = await _run_tools_async(run, calls, stopper.check)
                except TimeoutError:
                    if bound.expired():
                        raise run.deadline_passed() from None
                    raise
            await off_loop(run.store_results, results)
            stopper.check()
            for chunk in run.result_chunks(results):
                for hook in hooks:
                    if hook.awaits_chunks:
                        await hook.achunk(chunk)
                    else:
                        hook.chunk(chunk)
                persister.passed(chunk)  # watchers get it as the consumer does
                yield chunk
                if watch.fired:
                    stopper.check()
                    raise await watch.ended()
                if (task := asyncio.current_task()) is not watch.task:
                    watch.follow(task)
        for hook in hooks:
            if hook.on_complete is not None:
                await hook.ahook("on_complete")
    except Exception as error:
        try:
            failed = await run.ahooks_failed(error)
        except BaseException as hook_error:  # Ctrl-C in an on_error hook: save, then let it go
            await off_loop(persister.interrupt, hook_error)
            raise
        failure = await off_loop(run.checkpointed, failed)
        raise failure from failure.__cause__  # what fail() chained (a raising on_error hook)
    except BaseException as error:  # GeneratorExit (closed early), CancelledError
        await watch.landed()
        # A cancel that came while the final commit waited for a lock that refused it gets
        # the refusal as its cause, after that one wait (ReplyPersister._interrupt).
        stopping = None if isinstance(error, GeneratorExit) else error
        if persister.finished:
            pass
        elif persister.whole(answers_calls):  # let go holding the final DONE: it is whole
            await off_loop(persister.commit_whole, stopping)
        else:
            await off_loop(persister.interrupt, stopping)
        raise
    finally:
        _dropped.end(stopper)  # settled: a request waiting for it goes on
        watch.follow(None)
        if it is not None:
            await watch.close(it)
        run.close()
        watch.__class__ = _Watch  # ended: nothing left for a finaliser to do
        _loopterm.leave(stopper)


_OWN_STEPS = frozenset(
    f.__code__
    for f in (
        off_loop,
        _run_tools_async,
        aclose_chunks,
        Middleware.ahook,
        Middleware.achunk,
        Run.ahooks_failed,
    )
)
"""What the driver awaits that is not the model nor a retry wait: a stop there waits for the
step to end (a store write, tools, an async hook); reading the model or waiting to retry, it
is cancelled."""
