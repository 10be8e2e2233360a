"""``cw.watch`` and ``cw.awatch``: the watcher core (:mod:`.watcher`) as a cold Observable
and as an async iterator (the core runs on a thread of its own, so the event loop never
waits on the store or the fan-out)."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import CurrentThreadScheduler, ImmediateScheduler, TrampolineScheduler

from .._observers import Stoppable, subscriber
from ..chunks import Chunk
from .base import Fanout
from .watcher import Look, Read, ReplyReader, read_store, watch_chunks, watch_core

__all__ = ["awatch_chunks", "watch_observable"]

_END = object()


class _Cancelled(threading.Event):
    """A watch's cancellation: set on dispose, and seen as set once an observer between
    the watch and the user stopped (:mod:`.._observers`). ``subscribe_on`` on a thread
    hands the watch's own disposable over only once its loop returns, on the worker the
    loop holds, so a dispose there never sets it; the waits look at the chain too."""

    _SLICE = 0.1  # how long a wait goes without looking at the chain (a stop sets nothing)

    def __init__(self, watch: Stoppable) -> None:
        super().__init__()
        self.watch = watch

    def is_set(self) -> bool:
        return super().is_set() or self.watch.is_stopped

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = self._SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            super().wait(min(left, self._SLICE))
        return True


def watch_observable(
    store: ReplyReader, fanout: Fanout | None, reply_id: str, *, poll: float, wait: float
) -> Observable[Chunk]:
    """A cold Observable of the reply's chunks; each subscription watches afresh.

    It runs on the subscription's scheduler (the current thread's trampoline by default,
    so ``subscribe`` returns when the reply ends); a dispose stops it within ``wait``,
    ``subscribe_on`` a thread included (it watches the observers after it, as the stream
    driver does).
    """

    def subscribe(
        observer: abc.ObserverBase[Chunk], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        cancelled = _Cancelled(subscriber(observer)[0])
        trampoline = CurrentThreadScheduler.singleton()
        sched = scheduler or trampoline
        if isinstance(sched, ImmediateScheduler) or (
            isinstance(sched, TrampolineScheduler) and sched is not trampoline
        ):
            sched = trampoline  # see streaming.run_observable: wire the subscription first

        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            chunks = watch_chunks(store, fanout, reply_id, cancelled, poll=poll, wait=wait)
            try:
                while True:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    except Exception as error:
                        if not cancelled.is_set():
                            observer.on_error(error)
                        return
                    if cancelled.is_set():
                        return
                    observer.on_next(chunk)  # the user's code: its errors are theirs
            finally:
                chunks.close()
            if not cancelled.is_set():
                observer.on_completed()

        return CompositeDisposable(Disposable(cancelled.set), sched.schedule(action))

    return Observable(subscribe)


async def awatch_chunks(
    store: ReplyReader, fanout: Fanout | None, reply_id: str, *, poll: float, wait: float
) -> AsyncIterator[Chunk]:
    """The asyncio twin of :func:`watch_observable`; leaving the loop stops the watch.

    The watcher core runs on the event loop; its store reads go to the default executor.
    With a fan-out that can wait on the loop (``aread``: Redis) a watch takes no thread of
    its own; with one that blocks (``MemoryFanout``) the core runs on a thread of its own."""
    aread = getattr(fanout, "aread", None)
    if fanout is not None and aread is None:
        async for chunk in _awatch_on_a_thread(store, fanout, reply_id, poll=poll, wait=wait):
            yield chunk
        return
    core = watch_core(reply_id, fanout is not None, poll=poll, wait=wait)
    answer: Any = None
    try:
        while True:
            try:
                step = core.send(answer)
            except StopIteration:
                return
            answer = None
            if isinstance(step, Chunk):
                yield step
            elif isinstance(step, Look):
                answer = await asyncio.to_thread(read_store, store, reply_id)
            elif isinstance(step, Read):
                assert aread is not None
                answer = await aread(reply_id, step.after, epoch=step.epoch, wait=step.wait)
            else:
                await asyncio.sleep(step.seconds)
                answer = False
    finally:
        core.close()


async def _awatch_on_a_thread(
    store: ReplyReader, fanout: Fanout, reply_id: str, *, poll: float, wait: float
) -> AsyncIterator[Chunk]:
    """The watch on a thread of its own (its fan-out's reads block), handed to the loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    cancelled = threading.Event()
    # Handed over in batches: one loop wake-up for whatever the thread put meanwhile, not
    # one per chunk (each call_soon_threadsafe writes to the loop's wake-up pipe).
    handed: collections.deque[tuple[int, Any]] = collections.deque()
    lock = threading.Lock()
    waking = False

    def hand_over() -> None:
        nonlocal waking
        with lock:
            items = list(handed)
            handed.clear()
            waking = False
        for item in items:
            queue.put_nowait(item)

    def put(item: tuple[int, Any]) -> None:
        nonlocal waking
        with lock:
            handed.append(item)
            if waking:
                return
            waking = True
        try:
            loop.call_soon_threadsafe(hand_over)
        except RuntimeError:
            cancelled.set()  # the loop is closed: nobody is listening

    def pump() -> None:
        try:
            for chunk in watch_chunks(store, fanout, reply_id, cancelled, poll=poll, wait=wait):
                put((0, chunk))
                if cancelled.is_set():
                    return
            put((1, _END))
        except BaseException as error:  # handed to the awaiting side
            put((2, error))

    threading.Thread(target=pump, name=f"rxcontext-watch-{reply_id}", daemon=True).start()
    try:
        while True:
            tag, value = await queue.get()
            if tag == 0:
                yield value
            elif tag == 1:
                return
            else:
                raise value
    finally:
        cancelled.set()
