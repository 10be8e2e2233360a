"""Replies that end on a signal from the test: each shows one chunk, says so, then waits.

For tests of what happens to several replies' final writes at once (a lock, a busy pool,
a closing store): :func:`start_replies` starts them in threads of their own and returns
once each has shown its chunk; setting ``go`` ends them all (``completed``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel


class Waiting(ScriptedModel):
    """Shows one chunk (``hello``), says so, then ends (``completed``) once ``go`` is set."""

    def __init__(self, shown: threading.Semaphore, go: threading.Event, bound: float) -> None:
        super().__init__([])
        self.shown = shown
        self.go = go
        self.bound = bound

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        yield Chunk(ChunkKind.TEXT, "hello")
        self.shown.release()
        assert self.go.wait(self.bound)
        yield Chunk(ChunkKind.DONE, finish_reason="stop")


def start_replies(
    store: Any, replies: int, go: threading.Event, errors: list[BaseException], bound: float
) -> list[threading.Thread]:
    """Replies ``r0``… in contexts ``c0``… of ``store``, each streamed in a thread of its
    own (their errors appended to ``errors``); returns once each has shown its chunk."""
    shown = threading.Semaphore(0)
    streams = []
    for i in range(replies):
        cw = ContextWindow(store, Waiting(shown, go, bound), f"c{i}", retry=None)
        cw.add_prompt("go")
        streams.append(stream_in_thread(cw, f"r{i}", errors))
    for _ in range(replies):
        assert shown.acquire(timeout=bound)
    return streams


def stream_in_thread(
    cw: ContextWindow, reply_id: str, errors: list[BaseException]
) -> threading.Thread:
    """``cw.stream(reply_id=reply_id)`` subscribed in a (daemon) thread of its own, started;
    its error, if any, appended to ``errors``."""
    stream = threading.Thread(
        target=lambda: cw.stream(reply_id=reply_id).subscribe(lambda c: None, errors.append),
        daemon=True,
    )
    stream.start()
    return stream


class OnFirstRecord(logging.Handler):
    """Keeps the records logged to it; ``then`` runs (once) at the first."""

    def __init__(self, then: Any) -> None:
        super().__init__(logging.INFO)
        self.then = then
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) == 1:
            self.then()


class Watched:
    """A store's own lock, telling ``queued`` when ``thread`` first asks for it (once
    ``thread`` is set), and then running ``then`` if one is given."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.thread: threading.Thread | None = None
        self.queued = threading.Event()
        self.then: Any = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.thread is threading.current_thread() and not self.queued.is_set():
            self.queued.set()
            if self.then is not None:
                self.then()
        got: bool = self._real.acquire(blocking, timeout)
        return got

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._real.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
