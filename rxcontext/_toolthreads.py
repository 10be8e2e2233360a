"""Threads for sync tools that a reply may stop waiting for.

A reply past its deadline ends while a sync tool still runs; nothing can stop a thread, so
the tool is left to finish on its own, and what it returns is dropped (only the driver that
waited for it stores outputs). Its thread is a daemon, not one of a ``ThreadPoolExecutor``
(joined at the interpreter's exit) nor of the event loop's default executor (which
``asyncio.run`` waits for as it ends): a tool left running never holds up the program that
stopped waiting for it.

The threads are bounded: a round of the blocking path runs at most :data:`ROUND_WORKERS`
tools at once, and on asyncio at most :data:`SHARED_WORKERS` sync tools run at once on one
event loop (a round of 200 parallel calls, or 1,000 replies at once each calling a tool,
queue for them). A thread ends when it finds no tool waiting. A tool left running past a
deadline keeps its thread until it returns.

A bounded pool deadlocks once every thread of it waits for a job queued behind it: a sync
tool that runs a sub-agent to its end, whose own sync tools need a thread, with the cap
full of such tools. Two rules keep every such wait off the queue:

- The cap is per event loop (as the loop's default executor's was): a sub-agent run with
  ``asyncio.run`` on the tool's thread, or on any other thread, has a loop of its own and
  so a cap of its own.
- A job asked for by code that a tool of the same loop's pool runs (its context variables
  say so: they pass to ``asyncio.run``'s tasks, ``asyncio.to_thread`` and
  ``run_coroutine_threadsafe``) starts on a thread of its own at once, outside the cap: a
  sub-agent run on the caller's loop never queues behind the tool that waits for it.

So the bound holds for the tools of the replies a program runs; only tools run by tools
pass it, no more of them than the tools that wait for them ask for. (A tool that hands a
sub-agent to the caller's loop from a thread that carries no context variables, a bare
``threading.Thread``, is not seen as nested and can still fill the cap with waiters.)

An async tool on the blocking path runs to its end on an event loop of its own, on its
round's thread (:func:`run_to_end`); the driver reaches it through the round's
:class:`RoundTasks`: past the deadline it cancels the tool's task on that loop (thread-safe)
and waits up to :data:`UNWIND_SECONDS` for it to unwind, as asyncio cancels one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = [
    "ROUND_WORKERS",
    "SHARED_WORKERS",
    "UNWIND_SECONDS",
    "RoundTasks",
    "in_threads",
    "in_tool_thread",
    "run_to_end",
]

_T = TypeVar("_T")

ROUND_WORKERS = 8
"""The most tools of one round the blocking path runs at once."""

SHARED_WORKERS = max(ROUND_WORKERS, min(32, (os.cpu_count() or 1) + 4))
"""The most sync tools that run at once on one event loop: as many threads as the loop's
default executor has (what they ran on before), and no fewer than a blocking round has."""

UNWIND_SECONDS = 1.0
"""How long a blocking reply past its deadline waits at most for the async tools it
cancelled to unwind, before it ends."""

_Job = tuple[contextvars.Context, Callable[[], Any], Future[Any]]

_running_on: contextvars.ContextVar[_Workers | None] = contextvars.ContextVar(
    "rxcontext_tool_pool", default=None
)
"""The pool whose job the current code runs in (set in each job's own context)."""


class _Workers:
    """Up to ``limit`` daemon threads that run the jobs given, in order, each in a copy of
    the context variables it was given from (as ``asyncio.to_thread`` runs a function).
    A job given from code one of its jobs runs starts at once on a thread of its own."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._work: deque[_Job] = deque()
        self._threads = 0

    def submit(self, job: Callable[[], _T]) -> Future[_T]:
        """Queue ``job``; its future (cancelled before it starts, it never starts)."""
        future: Future[_T] = Future()
        entry: _Job = (contextvars.copy_context(), job, future)
        if _running_on.get() is self:  # nested: never behind the job that waits for it
            threading.Thread(
                target=self._one, args=entry, name="rxcontext-tool", daemon=True
            ).start()
            return future
        with self._lock:
            self._work.append(entry)
            start = self._threads < self._limit
            if start:
                self._threads += 1
        if start:
            try:
                threading.Thread(target=self._run, name="rxcontext-tool", daemon=True).start()
            except BaseException:  # no thread to be had: the job is not left queued for none
                with self._lock:
                    self._threads -= 1
                    queued = entry in self._work
                    if queued:
                        self._work.remove(entry)
                if queued:
                    raise
        return future

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._work:
                    self._threads -= 1
                    return
                entry = self._work.popleft()
            self._one(*entry)

    def _one(
        self, context: contextvars.Context, job: Callable[[], Any], future: Future[Any]
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = context.run(self._inside, job)
        except BaseException as error:  # the waiter's to raise, as an executor does
            future.set_exception(error)
        else:
            future.set_result(result)

    def _inside(self, job: Callable[[], _T]) -> _T:
        _running_on.set(self)  # in the job's own copy of the context
        return job()


class _PerLoop:
    """One :class:`_Workers` of :data:`SHARED_WORKERS` per event loop, dropped with it
    (with no loop running, or one that takes no weak reference: one for them all)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Workers]
        self._pools = weakref.WeakKeyDictionary()
        self._others = _Workers(SHARED_WORKERS)

    def get(self) -> _Workers:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._others
        with self._lock:
            try:
                pool = self._pools.get(loop)
                if pool is None:
                    pool = self._pools[loop] = _Workers(SHARED_WORKERS)
            except TypeError:  # no weak reference to the loop
                return self._others
            return pool


_shared = _PerLoop()


def _reset_in_child() -> None:  # a forked child has none of its parent's threads
    global _shared
    _shared = _PerLoop()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


def in_threads(jobs: Sequence[Callable[[], _T]], workers: int = 1) -> list[Future[_T]]:
    """Start ``jobs`` on up to ``workers`` daemon threads of their own (one: in order);
    their futures. A job's exception (a ``BaseException`` too) is its future's."""
    pool = _Workers(max(1, workers))
    return [pool.submit(job) for job in jobs]


def in_tool_thread(job: Callable[[], _T]) -> Future[_T]:
    """Start ``job`` on one of the running event loop's :data:`SHARED_WORKERS` tool
    threads, or queue it until one is free (asked for by a tool of that pool: on a thread
    of its own at once, see the module's docstring); its future, as :func:`in_threads`
    gives."""
    return _shared.get().submit(job)


_round: contextvars.ContextVar[RoundTasks | None] = contextvars.ContextVar(
    "rxcontext_round_tasks", default=None
)
"""The blocking round whose tool the current code runs (set in each tool's own context)."""


class RoundTasks:
    """The async tools one round of the blocking path runs, each on a loop of its own on
    the tool's thread: the driver cancels them from its own thread (:meth:`cancel`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any], threading.Event]]
        self._running = []
        self._cancelled = False

    def bind(self, job: Callable[[], _T]) -> Callable[[], _T]:
        """``job``, which runs an async tool as one of this round's (give it to
        :func:`in_threads`, which runs it in a copy of the context)."""
        return functools.partial(self._in_round, job)

    def _in_round(self, job: Callable[[], _T]) -> _T:
        _round.set(self)
        return job()

    async def _main(self, awaitable: Awaitable[_T]) -> _T:
        task = asyncio.current_task()
        assert task is not None
        done = threading.Event()
        with self._lock:
            cancelled = self._cancelled
            if not cancelled:
                self._running.append((asyncio.get_running_loop(), task, done))
        if cancelled:  # the driver stopped waiting before the tool began: it never does
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise asyncio.CancelledError
        try:
            return await awaitable
        finally:
            done.set()

    def cancel(self, grace: float) -> bool:
        """Cancel the round's async tools (from any thread; those yet to begin never do)
        and wait up to ``grace`` seconds for them to unwind; whether they all did."""
        with self._lock:
            self._cancelled = True
            running = list(self._running)
        for loop, task, _ in running:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the tool ended
                loop.call_soon_threadsafe(task.cancel)
        until = time.monotonic() + grace
        return all(done.wait(max(0.0, until - time.monotonic())) for _, _, done in running)


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def take_round() -> RoundTasks | None:
    """The blocking round whose tool is about to run here (:meth:`RoundTasks.bind`), taken
    out of the current context: what the tool itself runs (a sync tool's sub-agent and its
    async tools) is not the round's, and its deadline does not cancel it."""
    tasks = _round.get()
    if tasks is not None:
        _round.set(None)  # in the job's own copy of the context
    return tasks


def run_to_end(awaitable: Awaitable[_T], tasks: RoundTasks | None = None) -> _T:
    """Run ``awaitable`` to its end on a new event loop on this thread (``asyncio.run``);
    as a tool of the blocking round ``tasks`` (:func:`take_round`), one its driver can
    cancel."""
    return asyncio.run(_await(awaitable) if tasks is None else tasks._main(awaitable))
