"""Test doubles for the fault suites: a scripted model that can stall on a virtual clock.

``TimedModel`` plays one script per call like ``ScriptedModel``; a ``Wait(seconds)`` step is
a read that takes that long. On the sync path the wait advances the ``TestScheduler``'s
clock without running its work (``VirtualTimeScheduler.sleep``), as a blocking socket read
would; on asyncio it awaits the scheduler, so a timer of the driver can fire first and
cancel it. ``Stall()`` never returns on asyncio (only cancellation ends it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from reactivex.testing import TestScheduler

from rxcontext.checkpointer import Checkpointer
from rxcontext.chunks import Chunk, Reply
from rxcontext.providers.base import Request, reply_from_chunks


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Stall:
    pass


Step = Chunk | BaseException | Wait | Stall


class Clock(TestScheduler):
    """A TestScheduler that records every timer armed on it and can be awaited for one.

    The periodic checkpoint timer (which runs on the window's scheduler too) is not counted:
    these tests are about retry waits and timeouts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.timers: list[tuple[float, float]] = []
        """``(armed at, due at)`` of every timed item, in order."""
        self._armed = asyncio.Event()  # set on the event loop's thread (async tests only)

    def schedule_absolute(self, duetime: Any, action: Any, state: Any = None) -> Any:
        due = duetime if isinstance(duetime, float | int) else self.to_seconds(duetime)
        periodic_checkpoint = isinstance(getattr(action, "__self__", None), Checkpointer)
        if due > self.clock and not periodic_checkpoint:
            self.timers.append((float(self.clock), float(due)))
            self._armed.set()
        return super().schedule_absolute(duetime, action, state)

    async def armed(self, count: int) -> None:
        """Wait until ``count`` timers have been armed in all."""
        while len(self.timers) < count:
            self._armed.clear()
            await self._armed.wait()


class TimedModel:
    """Plays scripts of chunks, errors and waits; ``at`` records the clock at each request."""

    def __init__(self, scripts: Sequence[Sequence[Step]], clock: Clock) -> None:
        self._scripts = [list(s) for s in scripts]
        self._clock = clock
        self._next = 0
        self.at: list[float] = []
        self.requests: list[Request] = []
        self.closed = 0

    @property
    def name(self) -> str:
        return "timed"

    def _take(self, request: Request) -> list[Step]:
        self.requests.append(request)
        self.at.append(float(self._clock.clock))
        if self._next >= len(self._scripts):
            raise RuntimeError("TimedModel: all scripts were played")
        script = self._scripts[self._next]
        self._next += 1
        return script

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        script = self._take(request)
        finished = False
        try:
            for step in script:
                if isinstance(step, Wait):
                    self._clock.sleep(step.seconds)
                elif isinstance(step, Stall):
                    raise AssertionError("Stall() is for the asyncio path")
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
            finished = True
        finally:
            if not finished:
                self.closed += 1

    async def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        script = self._take(request)
        finished = False
        try:
            for step in script:
                if isinstance(step, Wait):
                    await self._wait(step.seconds)
                elif isinstance(step, Stall):
                    await asyncio.Event().wait()
                elif isinstance(step, BaseException):
                    raise step
                else:
                    await asyncio.sleep(0)
                    yield step
            finished = True
        finally:
            if not finished:
                self.closed += 1

    async def _wait(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        self._clock.schedule_relative(seconds, lambda *_: loop.call_soon_threadsafe(resolve))
        await done

    def complete(self, request: Request) -> Reply:
        return reply_from_chunks(self.iter_chunks(request))

    async def acomplete(self, request: Request) -> Reply:
        return reply_from_chunks([c async for c in self.aiter_chunks(request)])
