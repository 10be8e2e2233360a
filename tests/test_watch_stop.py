"""``cw.stop`` seen by a watcher: the owner stores the checkpoint of exactly what its
subscriber received, and a watcher of the same reply ends with ``StreamInterrupted``
carrying that checkpoint, having seen exactly its text (both stores, memory fan-out)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from reactivex import operators as ops

from rxcontext import ReplyState, ReplyStopped, StreamInterrupted
from tests.test_heartbeat import DONE, WAIT, PausingModel, Subscriber, T, in_thread, window


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_watcher_of_a_stopped_reply_ends_with_its_checkpoint(
    make_store: Callable[..., Any], path: str
) -> None:
    store = make_store(lease_ttl=0.6, fanout="memory")
    model = PausingModel([T("Rivers: "), T("the Nile")], [T(", the Amazon"), DONE])
    cw = window(store, model)
    owner = Subscriber()
    if path == "sync":
        driver = in_thread(lambda: cw.stream(reply_id="r").subscribe(owner))
    else:
        import asyncio

        async def consume() -> None:
            try:
                async for chunk in cw.astream(reply_id="r"):
                    owner.on_next(chunk)
            except StreamInterrupted as exc:
                owner.on_error(exc)
            else:
                owner.on_completed()

        driver = in_thread(lambda: asyncio.run(consume()))
    assert model.paused.wait(WAIT)
    watcher = Subscriber()
    caught_up = threading.Event()

    def seen(chunk: Any) -> None:
        watcher.on_next(chunk)
        if "".join(watcher.texts) == "Rivers: the Nile":
            caught_up.set()

    # A watch is driven on the thread that subscribes (like stream()): give it one.
    in_thread(
        lambda: (
            cw.watch("r")
            .pipe(ops.filter(lambda c: c.text != ""))
            .subscribe(seen, watcher.on_error, watcher.on_completed)
        )
    )
    assert caught_up.wait(WAIT)
    assert cw.stop("r") is True
    assert owner.ended.wait(WAIT) and watcher.ended.wait(WAIT)
    if model.async_go is None:
        model.go.set()
    driver.join(WAIT)
    assert isinstance(owner.error, StreamInterrupted), owner.error
    assert isinstance(owner.error.__cause__, ReplyStopped)
    assert isinstance(watcher.error, StreamInterrupted), watcher.error
    checkpoint = watcher.error.checkpoint
    assert checkpoint.state is ReplyState.INTERRUPTED
    assert checkpoint.text == "".join(owner.texts) == "".join(watcher.texts) == "Rivers: the Nile"
