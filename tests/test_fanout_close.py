"""``store.close()`` stops the fan-out attached to the store: its threads end and its Redis
connections close then, not when the store is garbage-collected; what was queued is sent
first. A fan-out shared by several stores stops with the last of them.

Every test holds the store and its fan-out, as an application does until it exits: the
collector cannot stand in for ``close()``. Each runs a ``redis-server`` of its own, so its
``CLIENT LIST`` holds only the test's connections.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redistest
from watching import until

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.fanout import MemoryFanout, fanout_for
from rxcontext.providers import ScriptedModel

redis = pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout  # noqa: E402

THREADS = {"rxcontext-fanout", "rxcontext-tail", "rxcontext-stophint"}
"""The fan-out's threads (the writer, the watches' tail, the stop-hint listener)."""


@pytest.fixture
def server(private: redistest.PrivateRedis) -> Iterator[tuple[redistest.PrivateRedis, Any]]:
    """The test's own Redis and an admin client (not counted among the clients)."""
    admin = private.client()
    yield private, admin
    admin.close()


def _clients(admin: Any) -> int:
    """Connections to the server other than ``admin``'s own."""
    me = admin.client_id()
    return sum(1 for c in admin.client_list() if int(c["id"]) != me)


def _reply(store: Any, reply_id: str) -> None:
    model = ScriptedModel(
        [[Chunk(ChunkKind.TEXT, "hi"), Chunk(ChunkKind.DONE, finish_reason="stop")]]
    )
    cw = ContextWindow(store, model, context="closing", retry=None)
    cw.add_prompt("Say hi.")
    assert cw.call(reply_id=reply_id).text == "hi"


def _ours(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name in THREADS]


@pytest.mark.parametrize("given", ["url", "instance"])
@pytest.mark.parametrize("user", ["sync", "asyncio"])
def test_closing_the_store_stops_the_redis_fanouts_threads_and_connections(
    server: tuple[redistest.PrivateRedis, Any], given: str, user: str
) -> None:
    private, admin = server
    before = set(threading.enumerate())
    spec = private.url if given == "url" else RedisFanout(private.url)
    store = rxcontext.open(":memory:", fanout=spec)
    fanout = fanout_for(store)
    assert isinstance(fanout, RedisFanout)
    _reply(store, "r")
    key = fanout.key("r")

    if user == "sync":  # a watch's tail read (cw.watch): the tail thread and its connection
        fanout.read("r", (1, 0), epoch=1, wait=0.0, cancelled=threading.Event())
        started = _ours(before)
        store.close()
    else:  # cw.awatch's, and the store closed on the event loop at the app's shutdown

        async def main() -> list[threading.Thread]:
            await fanout.aread("r", (1, 0), epoch=1, wait=0.0)
            started = _ours(before)
            store.close()
            return started

        started = asyncio.run(main())

    assert {"rxcontext-fanout", "rxcontext-tail"} <= {t.name for t in started}
    assert [t.name for t in started if t.is_alive()] == []
    # The server sees a closed connection at its next turn: looked for, bounded.
    assert until(lambda: _clients(admin) == 0), admin.client_list()
    # What was queued when it closed was sent first: the reply's log ends with its End.
    entries = admin.xrange(key)
    assert entries and entries[-1][1][b"k"] == b"e", entries
    store.close()  # idempotent
    fanout.close()


def test_a_fanout_shared_by_two_stores_stops_with_the_last(
    server: tuple[redistest.PrivateRedis, Any],
) -> None:
    private, admin = server
    before = set(threading.enumerate())
    fanout = RedisFanout(private.url)
    first = rxcontext.open(":memory:", fanout=fanout)
    second = rxcontext.open(":memory:", fanout=fanout)
    _reply(first, "a")
    first.close()
    # The second store still publishes through it.
    _reply(second, "b")
    writer = [t for t in _ours(before) if t.name == "rxcontext-fanout"]
    assert writer and writer[0].is_alive()
    second.close()
    assert not writer[0].is_alive()
    assert until(lambda: _clients(admin) == 0), admin.client_list()
    assert admin.xrange(fanout.key("b"))[-1][1][b"k"] == b"e"


def test_a_close_from_another_thread_while_closing_returns_once_stopped(
    server: tuple[redistest.PrivateRedis, Any],
) -> None:
    private, _ = server
    fanout = RedisFanout(private.url)
    store = rxcontext.open(":memory:", fanout=fanout)
    _reply(store, "r")
    go = threading.Barrier(3)
    alive: list[bool] = []

    def close(how: Any) -> None:
        go.wait()
        how()
        alive.append(fanout._thread.is_alive())

    threads = [
        threading.Thread(target=close, args=(store.close,)),
        threading.Thread(target=close, args=(fanout.close,)),
    ]
    for t in threads:
        t.start()
    go.wait()
    for t in threads:
        t.join()
    assert alive == [False, False]


def test_closing_the_store_drops_the_memory_fanouts_logs() -> None:
    store = rxcontext.open(":memory:", fanout="memory")
    fanout = fanout_for(store)
    assert isinstance(fanout, MemoryFanout)
    _reply(store, "r")
    never = threading.Event()
    assert fanout.read("r", None, epoch=1, wait=0.0, cancelled=never)  # kept after its end
    store.close()
    assert fanout.read("r", None, epoch=1, wait=0.0, cancelled=never) is None
