"""The stream drivers: one model call (or a tool loop of them) as an Observable or async iterator.

Data flows one way: model iterator → middleware hooks → persister → downstream. The sync
driver runs on the subscribing thread, scheduled on RxPY's trampoline so the subscription is
wired before the first chunk; it checks for disposal before it emits each chunk, so a
downstream ``take(n)`` leaves exactly n chunks' text in the checkpoint. The async driver is
the same loop over the model's async iterator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.scheduler import CurrentThreadScheduler

from .chunks import Chunk, ChunkKind, Reply, ToolCall
from .errors import ProviderError, StoreError, ToolLoopLimit
from .operators import Middleware
from .persist import ReplyPersister
from .providers.base import Model, Request
from .records import RecordType
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


@dataclass
class Run:
    """Everything one subscription of ``ContextWindow.stream()`` needs.

    ``request`` builds the request of round ``n`` (0 first) from the records at that time.
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
        return iter(reply_chunks(self.model.complete(request)))

    def achunks(self, request: Request) -> AsyncIterator[Chunk]:
        if request.fallback is not None:
            return _awith_fallback(self, request, request.fallback)
        if self.streaming:
            return self.model.aiter_chunks(request)
        return _completed(self.model, request)


async def _completed(model: Model, request: Request) -> AsyncIterator[Chunk]:
    for chunk in reply_chunks(await model.acomplete(request)):
        yield chunk


def _with_fallback(run: Run, request: Request, full: Request) -> Iterator[Chunk]:
    """A threaded request; if the provider rejects it before any chunk, the full one, once."""
    it: Iterator[Chunk] | None = None
    try:
        try:
            it = run.chunks(replace(request, fallback=None))
            first = next(it)
        except StopIteration:
            return
        except ProviderError:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            run.requests.append(full)
            it = run.chunks(full)
            first_or_none = next(it, None)
            if first_or_none is None:
                return
            first = first_or_none
        yield first
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


async def _awith_fallback(run: Run, request: Request, full: Request) -> AsyncIterator[Chunk]:
    """The asyncio twin of :func:`_with_fallback`."""
    it: AsyncIterator[Chunk] | None = None
    try:
        try:
            it = run.achunks(replace(request, fallback=None))
            first = await anext(it)
        except StopAsyncIteration:
            return
        except ProviderError:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
            run.requests.append(full)
            it = run.achunks(full)
            first_or_none = await anext(it, None)
            if first_or_none is None:
                return
            first = first_or_none
        yield first
        async for chunk in it:
            yield chunk
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


class _Flag:
    __slots__ = ("disposed",)

    def __init__(self) -> None:
        self.disposed = False

    def dispose(self) -> None:
        self.disposed = True


def _run_tools_sync(run: Run, calls: Sequence[ToolCall]) -> list[ToolResult]:
    tools = run.tools
    assert tools is not None
    if len(calls) > 1 and run.parallel_tools:
        with ThreadPoolExecutor(max_workers=min(8, len(calls))) as pool:
            return list(pool.map(lambda c: tools.run(c.id, c.name, c.arguments, c.error), calls))
    return [tools.run(c.id, c.name, c.arguments, c.error) for c in calls]


def _drive(run: Run, observer: abc.ObserverBase[Chunk], flag: _Flag) -> None:
    persister = run.persister
    hooks = run.hooks
    emit = observer.on_next
    it: Iterator[Chunk] | None = None
    try:
        for hook in hooks:
            if hook.on_start is not None:
                hook.on_start()
        rounds = 0
        while True:
            request = run.request(rounds)
            run.requests.append(request)
            it = run.chunks(request)
            for chunk in it:
                if flag.disposed:
                    raise _Cancelled
                for hook in hooks:
                    hook.chunk(chunk)
                persister.add(chunk)
                emit(chunk)
            it = None
            reply = persister.complete()
            calls = run.calls_to_run(reply)
            if not calls:
                break
            rounds += 1
            run.check_rounds(rounds)
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
        return
    except Exception as error:
        if flag.disposed:
            persister.interrupt(error)
            return
        observer.on_error(run.fail(error))  # type: ignore[arg-type]
        return
    except BaseException as error:  # KeyboardInterrupt, SystemExit: save, then let it go
        persister.interrupt(error)
        raise
    finally:
        if it is not None and hasattr(it, "close"):
            it.close()
    observer.on_completed()


def run_observable(make_run: Callable[[], Run]) -> Observable[Chunk]:
    """A cold Observable: each subscription makes a fresh :class:`Run` and drives it."""

    def subscribe(
        observer: abc.ObserverBase[Chunk], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        flag = _Flag()

        def action(_: abc.SchedulerBase, __: Any = None) -> None:
            if flag.disposed:
                return
            try:
                run = make_run()
            except Exception as error:
                observer.on_error(error)
                return
            _drive(run, observer, flag)

        sched = scheduler or CurrentThreadScheduler.singleton()
        return CompositeDisposable(Disposable(flag.dispose), sched.schedule(action))

    return Observable(subscribe)


async def _run_tools_async(run: Run, calls: Sequence[ToolCall]) -> list[ToolResult]:
    tools = run.tools
    assert tools is not None
    jobs = [tools.arun(c.id, c.name, c.arguments, c.error) for c in calls]
    if run.parallel_tools:
        return list(await asyncio.gather(*jobs))
    return [await job for job in jobs]


async def run_async(run: Run) -> AsyncIterator[Chunk]:
    """The asyncio driver: the same loop as the Observable's, over the model's async iterator.

    Closing the iterator early (``aclose()``, a ``break`` under ``contextlib.aclosing``, a
    cancelled task) saves the checkpoint and closes the provider stream.
    """
    persister = run.persister
    hooks = run.hooks
    it: AsyncIterator[Chunk] | None = None
    finished = False
    try:
        for hook in hooks:
            if hook.on_start is not None:
                hook.on_start()
        rounds = 0
        while True:
            request = run.request(rounds)
            run.requests.append(request)
            it = run.achunks(request)
            async for chunk in it:
                for hook in hooks:
                    hook.chunk(chunk)
                persister.add(chunk)
                yield chunk
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
        raise run.fail(error) from error
    except BaseException as error:  # GeneratorExit (closed early), CancelledError
        if not finished:
            persister.interrupt(None if isinstance(error, GeneratorExit) else error)
        raise
    finally:
        if it is not None:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
