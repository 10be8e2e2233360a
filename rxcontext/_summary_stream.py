"""The summariser's stream under the window's ``Timeouts`` and ``RetryPolicy``.

A summary's request is no reply (it has no reply row, no checkpoint, no subscriber), so the
stream drivers (:mod:`.streaming`, :mod:`.astreaming`) do not run it; this runs it by their
rules, with their pieces:

- ``first_chunk`` / ``idle`` bound each read and ``deadline`` the whole summary, its
  retries included, ending in the same :class:`~rxcontext.FirstChunkTimeout`,
  :class:`~rxcontext.IdleTimeout` and :class:`~rxcontext.DeadlineExceeded`. On asyncio the
  read is cancelled (the driver's ``_next_within``); on the blocking path the watchdog
  thread (:mod:`._watchdog`) shuts the socket of a read that outlasts its limit, as for a
  reply, and a late chunk is refused when its read returns.
- A failed attempt is sent again as the policy says, only while nothing but usage came (no
  text was handed to ``on_chunk``), never for ``on_chunk``'s own exception, and never with a
  wait that would end past the deadline. The usage a failed attempt reported was billed: it
  is set aside and added to the summary's (:meth:`SummaryAttempts.billed`), and checked
  against the budget before the request is sent again (``recheck``).
- Waits and limits run on the window's scheduler (a ``TestScheduler`` makes them
  virtual), else on the real clock (the event loop's on asyncio).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from math import inf
from typing import cast

from reactivex import abc
from reactivex.scheduler import VirtualTimeScheduler

from ._watchdog import Watched, watching
from .astreaming import _clock, _Expired, _next_within, _sleep, off_loop
from .chunks import Chunk, ChunkKind, Reply, ReplyBuilder, Usage
from .errors import DeadlineExceeded, FirstChunkTimeout, IdleTimeout, StreamTimeout
from .operators import Done, is_async
from .persist import _plus, describe_error
from .providers.base import Model, Request
from .retry import RetryPolicy, Timeouts
from .run import aclose_chunks, close_chunks

__all__ = ["SummaryAttempts", "SummaryLimits"]

_log = logging.getLogger("rxcontext.summarize")


@dataclass(frozen=True, slots=True)
class SummaryLimits:
    """What bounds a summary's request: the window's retry policy, timeouts and scheduler,
    and its budget check before a retry (given what the earlier attempts were billed)."""

    retry: RetryPolicy | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    scheduler: abc.SchedulerBase | None = None
    recheck: Callable[[Usage | None], None] | None = None


@dataclass
class SummaryAttempts:
    """The attempts of one summary's request; what they were billed, however it ends."""

    model: Model
    limits: SummaryLimits = field(default_factory=SummaryLimits)
    builder: ReplyBuilder = field(default_factory=ReplyBuilder)
    set_aside: Usage | None = None
    """The usage of the attempts that failed and were sent again (billed)."""
    user_raised: bool = False
    """Whether ``on_chunk`` raised: its error is the caller's, never a reason to retry."""

    def billed(self) -> Usage | None:
        """What the request has been billed so far, its failed attempts included."""
        return _plus(self.set_aside, self.builder.usage)

    def reply(self) -> Reply:
        """The summariser's reply so far, with the usage of every attempt."""
        reply = self.builder.build()
        return reply if self.set_aside is None else replace(reply, usage=self.billed())

    # -- both paths ------------------------------------------------------------------------

    def _retry_delay(
        self, error: Exception, attempt: int, now: float, due: float | None
    ) -> float | None:
        """The wait before sending again after try ``attempt`` failed with ``error``; None:
        raise it. Only while nothing but usage was handed on (a retry repeats no text)."""
        retry = self.limits.retry
        if retry is None or self.user_raised or self.builder.shows_anything():
            return None
        delay = retry.delay(error, attempt)
        if delay is None or (due is not None and now + delay >= due):
            return None
        _log.info(
            "the summariser %s failed before its first chunk (try %d of %d); asking again "
            "in %.2f s: %s",
            self.model.name,
            attempt,
            retry.max_attempts,
            delay,
            describe_error(error),
        )
        self.set_aside = _plus(self.set_aside, self.builder.take_usage())
        return delay

    def _deliver(self, chunk: Chunk, on_chunk: Callable[[Chunk], Done] | None) -> Done:
        """Fold ``chunk`` and hand it to ``on_chunk``: a USAGE chunk with what the failed
        attempts before were billed counted in, as the summary's usage counts it (a fold
        of what ``on_chunk`` got counts that usage, once)."""
        self.builder.add(chunk)
        if on_chunk is None:
            return None
        aside = self.set_aside
        if aside is not None and chunk.usage is not None:
            chunk = replace(chunk, usage=aside + chunk.usage)
        try:
            return on_chunk(chunk)
        except BaseException:
            self.user_raised = True
            raise

    def _due(self, now: float) -> float | None:
        deadline = self.limits.timeouts.deadline
        return now + deadline if deadline is not None else None

    # -- blocking ----------------------------------------------------------------------------

    def run(self, request: Request, on_chunk: Callable[[Chunk], None] | None) -> Reply:
        """Stream the request to its end (sent again as the policy says); its reply."""
        clock = self._sync_clock()
        due = self._due(clock())
        attempt = 0
        while True:
            if due is not None and clock() >= due:
                raise _deadline(self.limits.timeouts)
            attempt += 1
            try:
                self._read(request, on_chunk, clock, due)
                return self.reply()
            except Exception as error:
                delay = self._retry_delay(error, attempt, clock(), due)
                if delay is None:
                    raise
                if self.limits.recheck is not None:  # the whole request again: within it?
                    self.limits.recheck(self.billed())
                self._wait(delay)

    def _sync_clock(self) -> Callable[[], float]:
        scheduler = self.limits.scheduler
        if isinstance(scheduler, VirtualTimeScheduler):
            return lambda: scheduler.now.timestamp()
        return time.monotonic

    def _wait(self, seconds: float) -> None:
        scheduler = self.limits.scheduler
        if isinstance(scheduler, VirtualTimeScheduler):
            scheduler.sleep(seconds)
        else:
            time.sleep(seconds)

    def _read(
        self,
        request: Request,
        on_chunk: Callable[[Chunk], None] | None,
        clock: Callable[[], float],
        due: float | None,
    ) -> None:
        it = self.model.iter_chunks(request)
        try:
            if not self.limits.timeouts.timed:
                for chunk in it:
                    self._deliver(chunk, on_chunk)
                return
            with watching(self.limits.scheduler) as watched:
                self._timed_read(it, watched, on_chunk, clock, due)
        finally:
            close_chunks(it)

    def _timed_read(
        self,
        it: Iterator[Chunk],
        watched: Watched | None,
        on_chunk: Callable[[Chunk], None] | None,
        clock: Callable[[], float],
        due: float | None,
    ) -> None:
        timeouts = self.limits.timeouts
        delivered = False
        last: Chunk | None = None
        while True:
            limit = timeouts.limit(delivered)
            asked = clock()
            if watched is not None:  # the watchdog breaks the read when it must end
                watched.arm(asked, limit, due)
            try:
                chunk = next(it)
            except StopIteration:
                if watched is None or not watched.fired or _ended(last):
                    return
                raise self._broken(delivered, limit, clock(), due) from None
            except Exception:
                if watched is None or not watched.fired:
                    raise
                if _ended(last):
                    return  # only the end came late: the reply is whole
                raise self._broken(delivered, limit, clock(), due) from None
            if watched is not None:
                watched.due = inf
                if watched.fired:
                    raise self._broken(delivered, limit, clock(), due)
            if due is not None and clock() > due:
                raise _deadline(timeouts)
            if limit is not None and clock() - asked > limit:
                raise _timeout(delivered, limit)
            self._deliver(chunk, on_chunk)
            delivered, last = True, chunk

    def _broken(
        self, delivered: bool, limit: float | None, now: float, due: float | None
    ) -> StreamTimeout:
        """The error for a read the watchdog broke: the limit it outlasted."""
        if due is not None and (limit is None or now >= due):
            return _deadline(self.limits.timeouts)
        if limit is None:  # broken as the read before (the first chunk's) returned
            limit = self.limits.timeouts.first_chunk
            assert limit is not None
            return _timeout(False, limit)
        return _timeout(delivered, limit)

    # -- asyncio -----------------------------------------------------------------------------

    async def arun(self, request: Request, on_chunk: Callable[[Chunk], Done] | None) -> Reply:
        """The asyncio twin of :meth:`run` (an ``async def`` ``on_chunk`` is awaited). The
        model's stream is closed before an error (``on_chunk``'s own too) reaches the caller."""
        limits = self.limits
        clock = _clock(limits.scheduler)
        due = self._due(clock())
        attempt = 0
        while True:
            if due is not None and clock() >= due:
                raise _deadline(limits.timeouts)
            attempt += 1
            it: AsyncIterator[Chunk] | None = self.model.aiter_chunks(request)
            try:
                assert it is not None
                await self._aread(it, on_chunk, clock, due)
                return self.reply()
            except Exception as error:
                await aclose_chunks(it)
                it = None
                delay = self._retry_delay(error, attempt, clock(), due)
                if delay is None:
                    raise
                if limits.recheck is not None:  # its store reads stay off the event loop
                    await off_loop(limits.recheck, self.billed())
                await _sleep(delay, limits.scheduler)
            finally:
                if it is not None:
                    await aclose_chunks(it)

    async def _aread(
        self,
        it: AsyncIterator[Chunk],
        on_chunk: Callable[[Chunk], Done] | None,
        clock: Callable[[], float],
        due: float | None,
    ) -> None:
        timeouts = self.limits.timeouts
        timed = timeouts.timed
        awaited = is_async(on_chunk)
        delivered = False
        last: Chunk | None = None
        while True:
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
                    chunk = await _next_within(it, limit, self.limits.scheduler)
            except StopAsyncIteration:
                return
            except _Expired:
                assert limit is not None
                if _ended(last):  # only the end is late, or on_chunk held it past the deadline
                    return  # the reply is whole, as on the sync path
                if by_deadline:
                    raise _deadline(timeouts) from None
                raise _timeout(delivered, limit) from None
            done = self._deliver(chunk, on_chunk)
            delivered, last = True, chunk
            if awaited:
                try:
                    await cast("Awaitable[None]", done)
                except BaseException:
                    self.user_raised = True
                    raise


def _ended(last: Chunk | None) -> bool:
    """Whether the stream's end was delivered already (only its close can then be late)."""
    return last is not None and last.kind is ChunkKind.DONE


def _timeout(delivered: bool, limit: float) -> StreamTimeout:
    """The error for a summariser's chunk that did not come within ``limit`` seconds."""
    if delivered:
        return IdleTimeout(
            f"the summariser's stream sent nothing for {limit:g} s (Timeouts.idle); no "
            "summary was proposed: ask again, or allow a longer idle time",
            seconds=limit,
        )
    return FirstChunkTimeout(
        f"the summariser sent no chunk within {limit:g} s of the request "
        "(Timeouts.first_chunk); allow longer if the model is slow to start",
        seconds=limit,
    )


def _deadline(timeouts: Timeouts) -> DeadlineExceeded:
    """The error for a summary still running when ``timeouts.deadline`` passed."""
    seconds = timeouts.deadline
    assert seconds is not None
    return DeadlineExceeded(
        f"the summary took longer than its deadline of {seconds:g} s (Timeouts.deadline); "
        "no summary was proposed: ask again, or allow a longer deadline",
        seconds=seconds,
    )
