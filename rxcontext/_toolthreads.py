"""Threads for sync tools that a reply may stop waiting for.

A reply past its deadline ends while a sync tool still runs; nothing can stop a thread, so
the tool is left to finish on its own, and what it returns is dropped (only the driver that
waited for it stores outputs). Its thread is a daemon, not one of a ``ThreadPoolExecutor``
(joined at the interpreter's exit) nor of the event loop's default executor (which
``asyncio.run`` waits for as it ends): a tool left running never holds up the program that
stopped waiting for it.

The threads are bounded: a round of the blocking path runs at most :data:`ROUND_WORKERS`
tools at once, and on asyncio at most :data:`SHARED_WORKERS` sync tools run at once in the
whole process (a round of 200 parallel calls, or 1,000 replies at once each calling a tool,
queue for them). A thread ends when it finds no tool waiting. A tool left running past a
deadline keeps its thread until it returns.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["ROUND_WORKERS", "SHARED_WORKERS", "in_threads", "in_tool_thread"]

_T = TypeVar("_T")

ROUND_WORKERS = 8
"""The most tools of one round the blocking path runs at once."""

SHARED_WORKERS = max(ROUND_WORKERS, min(32, (os.cpu_count() or 1) + 4))
"""The most sync tools that run at once on asyncio, in the whole process: as many threads
as the loop's default executor has (what they ran on before), and no fewer than a blocking
round has."""


class _Workers:
    """Up to ``limit`` daemon threads that run the jobs given, in order, each in a copy of
    the context variables it was given from (as ``asyncio.to_thread`` runs a function)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._work: deque[tuple[contextvars.Context, Callable[[], Any], Future[Any]]] = deque()
        self._threads = 0

    def submit(self, job: Callable[[], _T]) -> Future[_T]:
        """Queue ``job``; its future (cancelled before it starts, it never starts)."""
        future: Future[_T] = Future()
        entry = (contextvars.copy_context(), job, future)
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
                context, job, future = self._work.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = context.run(job)
            except BaseException as error:  # the waiter's to raise, as an executor does
                future.set_exception(error)
            else:
                future.set_result(result)


_shared = _Workers(SHARED_WORKERS)
if hasattr(os, "register_at_fork"):  # a child has none of its parent's threads
    os.register_at_fork(after_in_child=_shared._reset)


def in_threads(jobs: Sequence[Callable[[], _T]], workers: int = 1) -> list[Future[_T]]:
    """Start ``jobs`` on up to ``workers`` daemon threads of their own (one: in order);
    their futures. A job's exception (a ``BaseException`` too) is its future's."""
    pool = _Workers(max(1, workers))
    return [pool.submit(job) for job in jobs]


def in_tool_thread(job: Callable[[], _T]) -> Future[_T]:
    """Start ``job`` on one of the process's :data:`SHARED_WORKERS` tool threads, or queue
    it until one is free; its future, as :func:`in_threads` gives."""
    return _shared.submit(job)
