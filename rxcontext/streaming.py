"""The stream drivers: one model call (or a tool loop of them) as an Observable or async iterator.

Data flows one way: model iterator → middleware hooks → persister → downstream. The sync
driver runs on the subscribing thread, scheduled on RxPY's trampoline so the subscription is
wired before the first chunk; it checks for disposal before it emits each chunk, so a
downstream ``take(n)`` leaves exactly n chunks' text in the checkpoint. The async driver is
the same loop over the model's async iterator.

A round that fails before any of its chunks was delivered is sent again as the
:class:`~rxcontext.retry.RetryPolicy` says; the wait is scheduled on the subscription's
scheduler (virtual under a ``TestScheduler``). ``Timeouts`` are measured around each read: on
asyncio a deadline cancels the read and closes the stream; on the sync path a blocking socket
read cannot be interrupted from another thread (closing the fd does not wake ``recv`` and a
running generator cannot be closed), so a late chunk is refused when the read returns and the
SDK's own read timeout is what unblocks a dead connection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import CurrentThreadScheduler, TrampolineScheduler, VirtualTimeScheduler

from .chunks import Chunk, ChunkKind, Reply, ToolCall
from .errors import (
    FirstChunkTimeout,
    IdleTimeout,
    ProviderError,
    StoreError,
    StreamTimeout,
    ToolLoopLimit,
)
from .operators import Middleware
from .persist import ReplyPersister, describe_error
from .providers.base import Model, Request
from .records import RecordType
from .retry import RetryPolicy, Timeouts
from .store.base import RecordDraft
from .tools import ToolRegistry, ToolResult

__all__ = ["Run", "reply_chunks", "run_async", "run_observable"]


def reply_chunks(reply: Reply) -> list[Chunk]:
    """Express a non-streamed :class:`Reply` as the chunks that reduce back to it."""
    out: list[Chunk] = []
    blocks = reply.metadata.get("thinking_blocks") or []
    if blocks:
        for i, block in enumerate(blocks):
            if block.get("type") == "redacted_thinking":
                out.append(Chunk(ChunkKind.THINKING, index=i, metadata={"redacted": block["data"]}))
            else:
                out.append(Chunk(ChunkKind.THINKING, block.get("thinking", ""), index=i))
                out.append(
                    Chunk(ChunkKind.THINKING, index=i, metadata={"signature": block["signature"]})
                )
    elif reply.thinking:
        out.append(Chunk(ChunkKind.THINKING, reply.thinking))
    if reply.text:
        out.append(Chunk(ChunkKind.TEXT, reply.text))
    for call in reply.tool_calls:
        out.append(
            Chunk(
                ChunkKind.TOOL_CALL,
                call.raw,
                index=call.index,
                id=call.id,
                name=call.name,
                metadata=dict(call.metadata),
            )
        )
    extra = {k: v for k, v in reply.metadata.items() if k != "thinking_blocks"}
    out.append(
        Chunk(
            ChunkKind.DONE,
            usage=reply.usage,
            finish_reason=reply.finish_reason,
            response_id=reply.response_id,
            metadata=extra,
        )
    )
    return out


class _Cancelled(Exception):
    """Internal: the subscriber went away; stop without an on_error."""


_log = logging.getLogger("rxcontext.streaming")


@dataclass
class Run:
    """Everything one subscription of ``ContextWindow.stream()`` needs.

    ``request`` builds the request of round ``n`` (0 first) from the records at that time.
    ``retry`` and ``timeouts`` apply to every round; ``scheduler`` gives the time for them
    where the subscription brings no scheduler of its own (``call()``, ``astream()``):
    None is the real clock (the event loop's on asyncio), a ``TestScheduler`` a virtual one.
    """

    model: Model
    persister: ReplyPersister
    request: Callable[[int], Request]
    hooks: Sequence[Middleware] = ()
    tools: ToolRegistry | None = None
    max_tool_rounds: int = 8
    streaming: bool = True
    parallel_tools: bool = True
    requests: list[Request] = field(default_factory=list)
    retry: RetryPolicy | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    scheduler: abc.SchedulerBase | None = None
    retries: list[tuple[float, BaseException]] = field(default_factory=list)
    """``(wait, error)`` of every retry this run made, in order."""

    def calls_to_run(self, reply: Reply) -> tuple[ToolCall, ...]:
        """Tool calls the window answers itself (none when it has no tools)."""
        return reply.tool_calls if self.tools else ()

    def result_chunks(self, results: Sequence[ToolResult]) -> list[Chunk]:
        return [
            Chunk(
                ChunkKind.TOOL_RESULT,
                r.output,
                index=i,
                id=r.call_id,
                name=r.name,
                metadata={"error": True} if r.error else {},
            )
            for i, r in enumerate(results)
        ]

    def store_results(self, results: Sequence[ToolResult]) -> None:
        self.persister.store_tool_outputs(
            [
                RecordDraft(
                    RecordType.TOOL_OUTPUT, r.output, tool_call_id=r.call_id, tool_name=r.name
                )
                for r in results
            ]
        )

    def check_rounds(self, rounds: int) -> None:
        if rounds > self.max_tool_rounds:
            raise ToolLoopLimit(
                f"the model asked for tools {rounds} times in a row (max_tool_rounds="
                f"{self.max_tool_rounds}); raise the limit or check the tools' outputs"
            )

    def retry_delay(self, error: BaseException, attempt: int) -> float | None:
        """The wait before sending a round again after its try ``attempt`` failed; None: fail.

        Only asked while nothing of the round has been delivered.
        """
        if self.retry is None:
            return None
        delay = self.retry.delay(error, attempt)
        if delay is not None:
            self.retries.append((delay, error))
            _log.info(
                "%s failed before its first chunk (try %d of %d); sending again in %.2f s: %s",
                self.model.name,
                attempt,
                self.retry.max_attempts,
                delay,
                describe_error(error),
            )
        return delay

    @staticmethod
    def timeout(delivered: bool, limit: float) -> StreamTimeout:
        """The error for a chunk that did not come within ``limit`` seconds."""
        if delivered:
            return IdleTimeout(
                f"the stream sent nothing for {limit:g} s (Timeouts.idle); the partial reply "
                "is saved as a checkpoint: resume it, or allow a longer idle time",
                seconds=limit,
            )
        return FirstChunkTimeout(
            f"no chunk within {limit:g} s of sending the request (Timeouts.first_chunk); "
            "allow longer if the model is slow to start",
            seconds=limit,
        )

    def fail(self, error: BaseException) -> BaseException:
        """Checkpoint after ``error`` and return what the subscriber should get."""
        for hook in self.hooks:
            if hook.on_error is not None:
                try:
                    hook.on_error(error)
                except Exception as hook_error:
                    hook_error.__context__ = error
                    error = hook_error
        try:
            interrupted = self.persister.interrupted(error)
        except StoreError as store_error:
            store_error.__context__ = error
            return store_error
        interrupted.__cause__ = error
        return interrupted

    def chunks(self, request: Request) -> Iterator[Chunk]:
        if request.fallback is not None:
            return _with_fallback(self, request, request.fallback)
        if self.streaming:
            return self.model.iter_chunks(request)
        return _completed_sync(self.model, request)

    def achunks(self, request: Request) -> AsyncIterator[Chunk]:
        if request.fallback is not None:
            return _awith_fallback(self, request, request.fallback)
        if self.streaming:
            return self.model.aiter_chunks(request)
        return _completed(self.model, request)


def _completed_sync(model: Model, request: Request) -> Iterator[Chunk]:
    # A generator, so the call is made (and timed) at the first next(), like a stream's.
    yield from reply_chunks(model.complete(request))


async def _completed(model: Model, request: Request) -> AsyncIterator[Chunk]:
    for chunk in reply_chunks(await model.acomplete(request)):
        yield chunk


def _close(it: Iterator[Chunk] | None) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


async def _aclose(it: AsyncIterator[Chunk] | None) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


def before_first_chunk(
    primary: Callable[[], Iterator[Chunk]],
    fallback: Callable[[], Iterator[Chunk]],
    gives_up: Callable[[ProviderError], bool],
) -> Iterator[Chunk]:
    """``primary``'s chunks; if it fails before its first chunk with an error ``gives_up``
    accepts, ``fallback``'s instead (once). Both streams are closed however this ends.
    """
    it: Iterator[Chunk] | None = None
    try:
        try:
            it = primary()
            first = next(it)
        except StopIteration:
            return
        except ProviderError as error:
            if not gives_up(error):
                raise
            _close(it)
            it = fallback()
            first_or_none = next(it, None)
            if first_or_none is None:
                return
            first = first_or_none
        yield first
        yield from it
    finally:
        _close(it)


async def abefore_first_chunk(
    primary: Callable[[], AsyncIterator[Chunk]],
    fallback: Callable[[], AsyncIterator[Chunk]],
    gives_up: Callable[[ProviderError], bool],
) -> AsyncIterator[Chunk]:
    """The asyncio twin of :func:`before_first_chunk`."""
    it: AsyncIterator[Chunk] | None = None
    try:
        try:
            it = primary()
            first = await anext(it)
        except StopAsyncIteration:
            return
        except ProviderError as error:
            if not gives_up(error):
                raise
            await _aclose(it)
            it = fallback()
            first_or_none = await anext(it, None)
            if first_or_none is None:
                return
            first = first_or_none
        yield first
        async for chunk in it:
            yield chunk
    finally:
        await _aclose(it)


def _any_error(_: ProviderError) -> bool:
    return True


def _with_fallback(run: Run, request: Request, full: Request) -> Iterator[Chunk]:
    """A threaded request; if the provider rejects it before any chunk, the full one, once."""

    def full_history() -> Iterator[Chunk]:
        run.requests.append(full)
        return run.chunks(full)

    return before_first_chunk(
        lambda: run.chunks(replace(request, fallback=None)), full_history, _any_error
    )


def _awith_fallback(run: Run, request: Request, full: Request) -> AsyncIterator[Chunk]:
    """The asyncio twin of :func:`_with_fallback`."""

    def full_history() -> AsyncIterator[Chunk]:
        run.requests.append(full)
        return run.achunks(full)

    return abefore_first_chunk(
        lambda: run.achunks(replace(request, fallback=None)), full_history, _any_error
    )


class _Flag:
    """Disposal of one subscription: polled before each emission, awaited by blocking waits."""

    __slots__ = ("_event", "disposed", "on_dispose")

    def __init__(self) -> None:
        self.disposed = False
        self._event = threading.Event()
        self.on_dispose: Callable[[], None] | None = None

    def dispose(self) -> None:
        self.disposed = True
        self._event.set()
        if self.on_dispose is not None:
            self.on_dispose()

    def wait(self, seconds: float) -> bool:
        """Block up to ``seconds``; True if the subscription was disposed meanwhile."""
        return self._event.wait(seconds)


def _run_tools_sync(run: Run, calls: Sequence[ToolCall]) -> list[ToolResult]:
    tools = run.tools
    assert tools is not None
    if len(calls) > 1 and run.parallel_tools:
        with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
            return list(pool.map(lambda c: tools.run(c.id, c.name, c.arguments, c.error), calls))
    return [tools.run(c.id, c.name, c.arguments, c.error) for c in calls]


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
        self.observer = observer
        self.flag = flag
        self.scheduler = scheduler
        self.time = scheduler if scheduler is not None else run.scheduler
        self.rounds = 0
        self.attempt = 0
        self.request: Request | None = None
        self.started = False
        self.lock = threading.Lock()
        self.waiting = False
        self.timer: abc.DisposableBase | None = None
        flag.on_dispose = self._on_dispose

    def clock(self) -> float:
        if isinstance(self.time, VirtualTimeScheduler):
            return self.time.now.timestamp()
        return time.monotonic()

    def start(self, _: Any = None, __: Any = None) -> None:
        """Drive until the run ends or waits for a retry (then schedule the rest)."""
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
                self.run.persister.interrupt(None)
                return
            if not self._block(delay):
                self.run.persister.interrupt(None)
                return

    def _block(self, delay: float) -> bool:
        """Wait on this thread; False if disposed meanwhile."""
        virtual = self.time
        if isinstance(virtual, VirtualTimeScheduler) and virtual is not self.scheduler:
            virtual.sleep(delay)
            return not self.flag.disposed
        return not self.flag.wait(delay)

    def _wake(self, _: Any = None, __: Any = None) -> None:
        with self.lock:
            if not self.waiting:
                return
            self.waiting = False
            self.timer = None
        self.start()

    def _on_dispose(self) -> None:
        # Disposed during a scheduled retry wait: nobody else will save the checkpoint
        # (or release a resumed one's claim).
        with self.lock:
            if not self.waiting:
                return
            self.waiting = False
            timer, self.timer = self.timer, None
        if timer is not None:
            timer.dispose()
        self.run.persister.interrupt(None)

    def _advance(self) -> float | None:
        """Run rounds until the run ends (None) or the current round should be sent again."""
        run = self.run
        persister = run.persister
        hooks = run.hooks
        flag = self.flag
        timeouts = run.timeouts
        timed = timeouts.first_chunk is not None or timeouts.idle is not None
        emit = self.observer.on_next
        it: Iterator[Chunk] | None = None
        delivered = False
        try:
            if not self.started:
                self.started = True
                for hook in hooks:
                    if hook.on_start is not None:
                        hook.on_start()
            while True:
                if self.request is None:
                    self.request = run.request(self.rounds)
                    self.attempt = 0
                request = self.request
                self.attempt += 1
                run.requests.append(request)
                delivered = False
                it = run.chunks(request)
                if not timed:
                    for chunk in it:
                        if flag.disposed:
                            raise _Cancelled
                        for hook in hooks:
                            hook.chunk(chunk)
                        persister.add(chunk)
                        delivered = True
                        emit(chunk)
                else:
                    while True:
                        limit = timeouts.limit(delivered)
                        asked = self.clock() if limit is not None else 0.0
                        try:
                            chunk = next(it)
                        except StopIteration:
                            break
                        if flag.disposed:
                            raise _Cancelled
                        if limit is not None and self.clock() - asked > limit:
                            raise run.timeout(delivered, limit)
                        for hook in hooks:
                            hook.chunk(chunk)
                        persister.add(chunk)
                        delivered = True
                        emit(chunk)
                it = None
                self.request = None
                reply = persister.complete()
                calls = run.calls_to_run(reply)
                if not calls:
                    break
                self.rounds += 1
                run.check_rounds(self.rounds)
                results = _run_tools_sync(run, calls)
                run.store_results(results)
                for chunk in run.result_chunks(results):
                    if flag.disposed:
                        raise _Cancelled
                    for hook in hooks:
                        hook.chunk(chunk)
                    emit(chunk)
            for hook in hooks:
                if hook.on_complete is not None:
                    hook.on_complete()
        except _Cancelled:
            persister.interrupt(None)
            return None
        except Exception as error:
            if flag.disposed:
                persister.interrupt(error)
                return None
            if self.request is not None and not delivered:
                if it is not None:
                    _close(it)
                    it = None
                delay = run.retry_delay(error, self.attempt)
                if delay is not None:
                    return delay
            self.observer.on_error(run.fail(error))  # type: ignore[arg-type]
            return None
        except BaseException as error:  # KeyboardInterrupt, SystemExit: save, then let it go
            persister.interrupt(error)
            raise
        finally:
            if it is not None:
                _close(it)
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

    def subscribe(
        observer: abc.ObserverBase[Chunk], subscribe_scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        flag = _Flag()
        sched = subscribe_scheduler or scheduler or CurrentThreadScheduler.singleton()

        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            if flag.disposed:
                return
            try:
                run = make_run()
            except Exception as error:
                observer.on_error(error)
                return
            _SyncDriver(run, observer, flag, sched).start()

        return CompositeDisposable(Disposable(flag.dispose), sched.schedule(action))

    return Observable(subscribe)


async def _run_tools_async(run: Run, calls: Sequence[ToolCall]) -> list[ToolResult]:
    tools = run.tools
    assert tools is not None
    jobs = [tools.arun(c.id, c.name, c.arguments, c.error) for c in calls]
    if run.parallel_tools:
        return list(await asyncio.gather(*jobs))
    return [await job for job in jobs]


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
    """The next chunk, or TimeoutError (only for this deadline) after ``seconds``."""
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


class _Expired(Exception):
    """Internal: a timeout of the driver's own (not one the model raised)."""


async def run_async(run: Run) -> AsyncIterator[Chunk]:
    """The asyncio driver: the same loop as the Observable's, over the model's async iterator.

    Closing the iterator early (``aclose()``, a ``break`` under ``contextlib.aclosing``, a
    cancelled task) saves the checkpoint and closes the provider stream. Retry waits and
    timeouts use ``run.scheduler``'s clock, or the event loop's.
    """
    persister = run.persister
    hooks = run.hooks
    timeouts = run.timeouts
    timed = timeouts.first_chunk is not None or timeouts.idle is not None
    it: AsyncIterator[Chunk] | None = None
    finished = False
    try:
        for hook in hooks:
            if hook.on_start is not None:
                hook.on_start()
        rounds = 0
        while True:
            request = run.request(rounds)
            attempt = 0
            while True:
                attempt += 1
                run.requests.append(request)
                it = run.achunks(request)
                delivered = False
                try:
                    while True:
                        limit = timeouts.limit(delivered) if timed else None
                        try:
                            if limit is None:
                                chunk = await anext(it)
                            else:
                                chunk = await _next_within(it, limit, run.scheduler)
                        except StopAsyncIteration:
                            break
                        except _Expired:
                            assert limit is not None
                            raise run.timeout(delivered, limit) from None
                        for hook in hooks:
                            hook.chunk(chunk)
                        persister.add(chunk)
                        delivered = True
                        yield chunk
                except Exception as error:
                    if delivered:
                        raise
                    await _aclose(it)
                    it = None
                    delay = run.retry_delay(error, attempt)
                    if delay is None:
                        raise
                    await _sleep(delay, run.scheduler)
                    continue
                break
            it = None
            reply = persister.complete()
            calls = run.calls_to_run(reply)
            if not calls:
                break
            rounds += 1
            run.check_rounds(rounds)
            results = await _run_tools_async(run, calls)
            run.store_results(results)
            for chunk in run.result_chunks(results):
                for hook in hooks:
                    hook.chunk(chunk)
                yield chunk
        for hook in hooks:
            if hook.on_complete is not None:
                hook.on_complete()
        finished = True
    except Exception as error:
        failure = run.fail(error)
        raise failure from failure.__cause__  # what fail() chained (a raising on_error hook)
    except BaseException as error:  # GeneratorExit (closed early), CancelledError
        if not finished:
            persister.interrupt(None if isinstance(error, GeneratorExit) else error)
        raise
    finally:
        if it is not None:
            await _aclose(it)
