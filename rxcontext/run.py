"""One reply's run: what a subscription of ``ContextWindow.stream()`` needs, shared by the
sync driver (:mod:`.streaming`) and the asyncio one (:mod:`.astreaming`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from reactivex import abc

from .checkpointer import Checkpointer
from .chunks import Chunk, ChunkKind, Reply, ToolCall
from .errors import (
    DeadlineExceeded,
    FirstChunkTimeout,
    IdleTimeout,
    ProviderError,
    ReplyStopped,
    StoreError,
    StreamTimeout,
    ToolLoopLimit,
)
from .heartbeat import Heartbeat
from .operators import Middleware
from .persist import ReplyPersister, describe_error
from .providers.base import Model, Request
from .records import TOOL_ERROR, RecordType
from .retry import RetryPolicy, Timeouts
from .store.base import RecordDraft
from .tools import ToolApproval, ToolRegistry, ToolResult
from .usage_by_model import Part

if TYPE_CHECKING:
    from .tracing import ReplyTrace

__all__ = [
    "Run",
    "abefore_first_chunk",
    "aclose_chunks",
    "before_first_chunk",
    "close_chunks",
    "reply_chunks",
]


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
    retry: RetryPolicy | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    scheduler: abc.SchedulerBase | None = None
    retries: Sequence[tuple[float, BaseException]] = ()
    """``(wait, error)`` of every retry this run made, in order (a list once there is one:
    an empty list made for every reply is one more object the cyclic collector tracks
    while it streams)."""
    checkpointer: Checkpointer | None = None
    tool_approval: ToolApproval | None = None
    """Sees each complete tool call before its tool runs (:data:`.tools.ToolApproval`)."""
    heartbeat: Heartbeat | None = None
    """Keeps the reply's lease and delivers stop requests (:mod:`.heartbeat`)."""
    on_stop: Callable[[ReplyStopped], None] | None = None
    """How the driver ends the reply when it is asked to stop (set by the driver)."""

    trace: ReplyTrace | None = None
    """The reply's tracing span (:mod:`rxcontext.tracing`): tool runs are its children."""
    budget_check: Callable[[], None] | None = None
    """The window's budget check, when it is made as the run starts (``astream``: in the
    executor, when the iteration begins) rather than when the run is built."""
    budget_recheck: Callable[[Sequence[Part] | None], None] | None = None
    """The window's budget check before a round is sent again, given what the reply was
    billed so far that the context's totals do not count yet, by the models that billed it
    (:meth:`check_retry`)."""

    def run_tool(self, call: ToolCall) -> ToolResult:
        """Run one tool call on this thread (in its tracing span, if any)."""
        tools = self.tools
        assert tools is not None
        if self.trace is None:
            return tools.run(call.id, call.name, call.arguments, call.error)
        with self.trace.tool(call.id, call.name, call.arguments) as got:
            got.append(tools.run(call.id, call.name, call.arguments, call.error))
        return got[0]

    async def arun_tool(self, call: ToolCall) -> ToolResult:
        """The asyncio twin of :meth:`run_tool`."""
        tools = self.tools
        assert tools is not None
        if self.trace is None:
            return await tools.arun(call.id, call.name, call.arguments, call.error)
        with self.trace.tool(call.id, call.name, call.arguments) as got:
            got.append(await tools.arun(call.id, call.name, call.arguments, call.error))
        return got[0]

    opened: bool = False
    """Whether :meth:`open` ran (the asyncio driver may have begun the reply on the loop's
    thread, and then only builds its request in a worker thread)."""

    def open(self) -> None:
        """Begin the reply (its row, its position), start its periodic checkpoints and
        its heartbeat."""
        began = time.monotonic()  # the lease runs from before the row was written
        self.persister.begin()
        self.opened = True
        if self.checkpointer is not None:
            self.checkpointer.register(self.persister)
        if self.heartbeat is not None:
            self.heartbeat.register(self.persister, self._stop, since=began)

    def _stop(self, error: ReplyStopped) -> None:
        if self.on_stop is not None:
            self.on_stop(error)
        else:  # no driver hook: it stops at its next chunk
            self.persister.stop = error
            self.persister.attention = True

    def close(self) -> None:
        """Stop the reply's periodic checkpoints and its heartbeat (idempotent)."""
        if self.checkpointer is not None:
            self.checkpointer.unregister(self.persister)
        if self.heartbeat is not None:
            self.heartbeat.unregister(self.persister)
        if self.persister.finished:
            # The asyncio driver's stop hook holds its stopper, which holds this run: a
            # cycle only the cyclic collector would free. An ended reply has nothing to stop
            # (a stop the heartbeat hands over now finds it finished, as before).
            self.on_stop = None

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
                metadata=_result_metadata(r),
            )
            for i, r in enumerate(results)
        ]

    def store_results(self, results: Sequence[ToolResult]) -> None:
        self.persister.store_tool_outputs(
            [
                RecordDraft(
                    RecordType.TOOL_OUTPUT,
                    r.output,
                    tool_call_id=r.call_id,
                    tool_name=r.name,
                    metadata={TOOL_ERROR: True} if r.error else {},
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
            self.retries = [*self.retries, (delay, error)]
            _log.info(
                "%s failed before its first chunk (try %d of %d); sending again in %.2f s: %s",
                self.model.name,
                attempt,
                self.retry.max_attempts,
                delay,
                describe_error(error),
            )
        return delay

    def check_retry(self) -> None:
        """Before the round is sent again: raise :class:`~rxcontext.BudgetExceeded` if the
        whole request, sent once more, would take the context over its budget. Its earlier
        attempts were billed (Anthropic bills the input as its stream starts) though the
        context's totals count them only once the reply is settled: they are spent too."""
        if self.budget_recheck is not None:
            self.budget_recheck(self.persister.billed_by_model())

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

    def deadline_passed(self) -> DeadlineExceeded:
        """The error for a reply still running when ``timeouts.deadline`` passed."""
        seconds = self.timeouts.deadline
        assert seconds is not None
        return DeadlineExceeded(
            f"the reply took longer than its deadline of {seconds:g} s; what was delivered "
            "is saved as a checkpoint: resume it, or allow a longer deadline",
            seconds=seconds,
        )

    def hooks_failed(self, error: BaseException) -> BaseException:
        """Run the hooks' ``on_error``; the error to go on with (a raising hook's own)."""
        for hook in self.hooks:
            if hook.on_error is not None:
                try:
                    hook.on_error(error)
                except Exception as hook_error:
                    hook_error.__context__ = error
                    error = hook_error
        return error

    async def ahooks_failed(self, error: BaseException) -> BaseException:
        """The asyncio twin of :meth:`hooks_failed` (an async ``on_error`` is awaited)."""
        for hook in self.hooks:
            if hook.on_error is not None:
                try:
                    await hook.ahook("on_error", error)
                except Exception as hook_error:
                    hook_error.__context__ = error
                    error = hook_error
        return error

    def checkpointed(self, error: BaseException) -> BaseException:
        """Save the checkpoint after ``error``; what the subscriber should get.

        That is a :class:`~rxcontext.StreamInterrupted` chained to ``error``, or ``error``
        itself when the reply had already ended (stored, or taken over elsewhere).
        """
        try:
            failure = self.persister.interrupted(error)
        except StoreError as store_error:
            store_error.__context__ = error
            return store_error
        if failure is not error and failure.__cause__ is None:
            failure.__cause__ = error
        return failure

    def fail(self, error: BaseException) -> BaseException:
        """Hooks, then the checkpoint: what the subscriber should get after ``error``.

        A hook that raises a ``BaseException`` (Ctrl-C landing in it) is let go after the
        checkpoint of what was delivered is saved, as the driver does with its own."""
        try:
            failed = self.hooks_failed(error)
        except BaseException as hook_error:
            self.persister.interrupt(hook_error)
            raise
        return self.checkpointed(failed)

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


def _result_metadata(result: ToolResult) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if result.error:
        meta["error"] = True
    if result.decision is not None:
        meta[result.decision] = True
    return meta


def _completed_sync(model: Model, request: Request) -> Iterator[Chunk]:
    # A generator, so the call is made (and timed) at the first next(), like a stream's.
    yield from reply_chunks(model.complete(request))


async def _completed(model: Model, request: Request) -> AsyncIterator[Chunk]:
    for chunk in reply_chunks(await model.acomplete(request)):
        yield chunk


def close_chunks(it: Iterator[Chunk] | None) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


async def aclose_chunks(it: AsyncIterator[Chunk] | None) -> None:
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
            close_chunks(it)
            it = fallback()
            first_or_none = next(it, None)
            if first_or_none is None:
                return
            first = first_or_none
        yield first
        yield from it
    finally:
        close_chunks(it)


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
            await aclose_chunks(it)
            it = fallback()
            first_or_none = await anext(it, None)
            if first_or_none is None:
                return
            first = first_or_none
        yield first
        async for chunk in it:
            yield chunk
    finally:
        await aclose_chunks(it)


def _thread_refused(error: ProviderError) -> bool:
    """The provider refused the threaded request itself (an unknown or expired response
    id: a 400 or 404), not a failure the retry policy is for (429, 5xx, a dropped
    connection: retried as it is, with its previous_response_id)."""
    return not error.retryable


def _with_fallback(run: Run, request: Request, full: Request) -> Iterator[Chunk]:
    """A threaded request; if the provider refuses it before any chunk, the full one, once."""

    def full_history() -> Iterator[Chunk]:
        return run.chunks(full)

    return before_first_chunk(
        lambda: run.chunks(replace(request, fallback=None)), full_history, _thread_refused
    )


def _awith_fallback(run: Run, request: Request, full: Request) -> AsyncIterator[Chunk]:
    """The asyncio twin of :func:`_with_fallback`."""

    def full_history() -> AsyncIterator[Chunk]:
        return run.achunks(full)

    return abefore_first_chunk(
        lambda: run.achunks(replace(request, fallback=None)), full_history, _thread_refused
    )
