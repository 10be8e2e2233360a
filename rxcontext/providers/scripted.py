"""An offline model that plays given chunks: for tests, demos and examples."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence

from ..chunks import Chunk, Reply
from .base import Request, reply_from_chunks

__all__ = ["ScriptedModel"]

Step = Chunk | BaseException


class ScriptedModel:
    """Plays one list of chunks per call, in order; an exception in a list is raised there.

    ::

        ScriptedModel([
            [Chunk(ChunkKind.TEXT, "Hel"), Chunk(ChunkKind.TEXT, "lo")],      # first call
            [Chunk(ChunkKind.TEXT, "par"), ConnectionError("cut")],           # second call
        ])

    ``delay`` seconds pass before each chunk (for demos; tests leave it at 0). Every request
    is kept in ``requests``; ``closed`` counts streams closed before their end, as a real
    provider closes its HTTP stream.
    """

    call_options = frozenset(
        {"temperature", "max_output_tokens", "tool_choice", "stop", "extra", "schema"}
    )
    """It takes every per-call option (and ignores them; they are on ``requests``)."""

    def __init__(
        self,
        scripts: Sequence[Sequence[Step]],
        *,
        name: str = "scripted",
        delay: float = 0.0,
        repeat_last: bool = False,
        context_window: int | None = None,
    ) -> None:
        self._scripts = _checked(scripts)
        self._name = name
        self._delay = delay
        self._repeat_last = repeat_last
        self.context_window = context_window
        """The context size this model reports (a window's default ``max_tokens``)."""
        self._lock = threading.Lock()
        self._next = 0
        self.requests: list[Request] = []
        self.closed = 0

    @property
    def name(self) -> str:
        """The label given at construction."""
        return self._name

    def _take(self, request: Request) -> list[Step]:
        with self._lock:
            self.requests.append(request)
            if self._next >= len(self._scripts):
                if self._repeat_last and self._scripts:
                    return self._scripts[-1]
                raise RuntimeError(
                    f"ScriptedModel has {len(self._scripts)} script(s) and all were played"
                )
            script = self._scripts[self._next]
            self._next += 1
            return script

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        """Yield this call's chunks on the calling thread."""
        script = self._take(request)
        finished = False
        try:
            for step in script:
                if self._delay:
                    time.sleep(self._delay)
                if isinstance(step, BaseException):
                    raise step
                yield step
            finished = True
        finally:
            if not finished:
                with self._lock:
                    self.closed += 1

    async def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        """Yield this call's chunks on the running event loop."""
        script = self._take(request)
        finished = False
        try:
            for step in script:
                await asyncio.sleep(self._delay)
                if isinstance(step, BaseException):
                    raise step
                yield step
            finished = True
        finally:
            if not finished:
                with self._lock:
                    self.closed += 1

    def complete(self, request: Request) -> Reply:
        """The reply this call's chunks reduce to."""
        return reply_from_chunks(self.iter_chunks(request))

    async def acomplete(self, request: Request) -> Reply:
        """The asyncio twin of :meth:`complete`."""
        return reply_from_chunks([c async for c in self.aiter_chunks(request)])


def _checked(scripts: object) -> list[list[Step]]:
    """``scripts`` as lists of steps; TypeError naming the first step that is not one."""
    if isinstance(scripts, (str, bytes)) or not isinstance(scripts, Sequence):
        raise TypeError(
            "ScriptedModel takes a list of scripts, one per call, each a list of Chunk"
            f" or exception steps; got {type(scripts).__name__}"
        )
    checked: list[list[Step]] = []
    for n, script in enumerate(scripts):
        if isinstance(script, (str, bytes)) or not isinstance(script, Sequence):
            raise TypeError(
                f"ScriptedModel script {n} must be a list of Chunk or exception steps,"
                f" not {type(script).__name__} (wrap text as Chunk(ChunkKind.TEXT, ...))"
            )
        for i, step in enumerate(script):
            if not isinstance(step, (Chunk, BaseException)):
                raise TypeError(
                    f"ScriptedModel script {n} step {i} must be a Chunk or an exception,"
                    f" not {type(step).__name__}"
                )
        checked.append(list(script))
    return checked
