"""Threads for sync tools that a reply may stop waiting for.

A reply past its deadline ends while a sync tool still runs; nothing can stop a thread, so
the tool is left to finish on its own, and what it returns is dropped (only the driver that
waited for it stores outputs). Its thread is a daemon of its own, not one of a
``ThreadPoolExecutor`` (joined at the interpreter's exit) nor of the event loop's default
executor (which ``asyncio.run`` waits for as it ends): a tool left running never holds up
the program that stopped waiting for it.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar

__all__ = ["in_threads"]

_T = TypeVar("_T")


def in_threads(jobs: Sequence[Callable[[], _T]], workers: int = 1) -> list[Future[_T]]:
    """Start ``jobs`` on up to ``workers`` daemon threads (one: in order); their futures.

    Each job runs in a copy of the caller's context variables, as ``asyncio.to_thread``
    runs a function. A job's exception (a ``BaseException`` too) is its future's.
    """
    futures: list[Future[_T]] = [Future() for _ in jobs]
    work = list(zip([contextvars.copy_context() for _ in jobs], jobs, futures, strict=True))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                context, job, future = work.pop(0)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = context.run(job)
            except BaseException as error:  # the waiter's to raise, as an executor does
                future.set_exception(error)
            else:
                future.set_result(result)

    for _ in range(max(1, min(workers, len(jobs)))):
        threading.Thread(target=worker, name="rxcontext-tool", daemon=True).start()
    return futures
