"""A dispose ends a sync stream's read while the model is silent, without Timeouts.

A real local server sends the response's headers and its first events (the text "Hello"),
then nothing, the connection open; the SDK clients are real, their own read timeout far
away. A dispose from another thread must close the HTTP connection (the producer's blocked
read ends), let the producer return, and store the checkpoint of what was delivered —
through ``subscribe_on`` on a thread too, whose dispose would otherwise only be handed to
the producer's own (blocked) thread. Threads are joined with a generous bound; nothing here
asserts how long the library took.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from crafted_text import KINDS
from localserver import silent_server
from reactivex import operators as ops
from reactivex.scheduler import NewThreadScheduler
from reactivex.subject import Subject
from test_sync_timeouts import first_events, model_at

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState

BOUND = 10.0
"""How long a test waits for a thread or the connection's end at most."""


def check_interrupted(cw: ContextWindow, got: list[str]) -> None:
    assert got == ["Hello"]
    (checkpoint,) = cw.checkpoints()
    assert (checkpoint.state, checkpoint.text) == (ReplyState.INTERRUPTED, "Hello")
    assert cw.active_replies() == []


def texts(chunk: Chunk) -> bool:
    return chunk.kind is ChunkKind.TEXT


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_dispose_through_subscribe_on_ends_a_silent_read(
    tmp_path: Any, kind: str, wire: str
) -> None:
    threads: list[threading.Thread] = []

    def factory(target: Any, **_: Any) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        threads.append(thread)
        return thread

    with silent_server(first_events(kind)) as server:
        store = rxcontext.open(str(tmp_path / "chat.db"))
        cw = ContextWindow(store, model_at(kind, server.url, wire), "silent", retry=None)
        cw.add_prompt("hi")
        got: list[str] = []
        first = threading.Event()

        def on_next(chunk: Chunk) -> None:
            got.append(chunk.text)
            first.set()

        sub = (
            cw.stream()
            .pipe(ops.filter(texts), ops.subscribe_on(NewThreadScheduler(factory)))
            .subscribe(on_next)
        )
        assert first.wait(BOUND)
        sub.dispose()
        threads[0].join(BOUND)
        returned = not threads[0].is_alive()
        closed = server.gone.wait(BOUND)
    threads[0].join(BOUND)
    assert returned, "the producer was still reading"
    assert closed, "the HTTP response was left open"
    check_interrupted(cw, got)
    store.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_dispose_from_another_thread_ends_a_silent_read_on_the_callers_thread(
    tmp_path: Any, kind: str
) -> None:
    with silent_server(first_events(kind)) as server:
        store = rxcontext.open(str(tmp_path / "chat.db"))
        cw = ContextWindow(store, model_at(kind, server.url, "fast"), "silent", retry=None)
        cw.add_prompt("hi")
        got: list[str] = []
        first = threading.Event()
        stop: Subject[int] = Subject()

        def on_next(chunk: Chunk) -> None:
            got.append(chunk.text)
            first.set()

        def subscribe() -> None:  # blocks this thread while the producer runs
            cw.stream().pipe(ops.filter(texts), ops.take_until(stop)).subscribe(on_next)

        thread = threading.Thread(target=subscribe, daemon=True)
        thread.start()
        assert first.wait(BOUND)
        stop.on_next(1)  # take_until disposes the stream's subscription, on this thread
        thread.join(BOUND)
        returned = not thread.is_alive()
        closed = server.gone.wait(BOUND)
    thread.join(BOUND)
    assert returned, "subscribe() was still blocked in the read"
    assert closed, "the HTTP response was left open"
    check_interrupted(cw, got)
    store.close()
