"""The Redis connections a process holds for its watches: a burst of watchers (a page reloaded
by many at once) must not leave as many connections open once they are gone.

Each watch's own reads (the log's head, a catch-up, ``EXISTS``, ``CLIENT UNBLOCK``) take a
connection of the fan-out's reader pool. redis-py's pool keeps every connection it made
open until it is closed: after 60 watchers came at once and were disposed, 59 stayed idle
for the life of the process, counted against the server's ``maxclients`` that every worker
shares."""

from __future__ import annotations

import threading

import pytest
import redistest
from watching import AsyncWatcher, Owner, Watcher, published, stored_text, until

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel

redis = pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout  # noqa: E402

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
WORDS = [f"w{i} " for i in range(12)]
BURST = 48
IDLE = 4  # reader connections a process keeps open when no watch is reading


def _clients(client: object) -> int:
    return len(client.client_list())  # type: ignore[attr-defined]


@pytest.mark.parametrize("watching", [Watcher, AsyncWatcher], ids=["watch", "awatch"])
def test_a_burst_of_watchers_leaves_no_more_than_a_few_connections_open(
    private: redistest.PrivateRedis, watching: type[Watcher]
) -> None:
    fanout = RedisFanout(private.url)
    store = rxcontext.open(":memory:", fanout=fanout)
    script = [*(T(w) for w in WORDS), Chunk(ChunkKind.DONE, finish_reason="stop")]
    cw = ContextWindow(
        store, ScriptedModel([script]), context="c", retry=None, checkpoint_every=None
    )
    cw.add_prompt("Count.")
    client = private.client()
    gate = threading.Semaphore(0)
    owner = Owner(cw, "r", gate=gate).start()
    try:
        gate.release(3)
        assert published(fanout, "r", 3)
        first = watching(cw, "r", poll=5.0).start()
        assert first.wait_for("".join(WORDS[:3])), first.text
        # The writer, the stop listener, the tail, the watch's reads, this client.
        before = _clients(client)
        burst = [watching(cw, "r", poll=5.0) for _ in range(BURST)]
        for watcher in burst:  # all at once: their first reads overlap
            watcher.start()
        for watcher in burst:
            assert watcher.wait_for("".join(WORDS[:3])), watcher.text
        gate.release(100)
        owner.join()
        for watcher in [first, *burst]:
            watcher.join()
            assert watcher.completed and watcher.error is None
            assert watcher.text == stored_text(cw, "r") == "".join(WORDS)
        # Gone: at most a few of the burst's connections stay open for the next watches.
        assert until(lambda: _clients(client) <= before + IDLE, timeout=10.0), (
            before,
            _clients(client),
            [c["cmd"] for c in client.client_list()],
        )
    finally:
        owner.join()
        client.close()
        store.close()
        fanout.close()


def test_a_watch_that_finds_every_reader_connection_taken_is_served_by_the_store(
    private: redistest.PrivateRedis,
) -> None:
    fanout = RedisFanout(private.url, timeout=0.1)
    store = rxcontext.open(":memory:", fanout=fanout)
    script = [*(T(w) for w in WORDS), Chunk(ChunkKind.DONE, finish_reason="stop")]
    cw = ContextWindow(store, ScriptedModel([script]), context="c", retry=None)
    cw.add_prompt("Count.")
    client = private.client()
    pool = fanout._reader.connection_pool
    gate = threading.Semaphore(0)
    owner = Owner(cw, "r", gate=gate).start()
    taken: list[object] = []
    try:
        gate.release(3)
        assert published(fanout, "r", 3)
        with pytest.raises(redis.ConnectionError):  # bounded: the next one waits, in vain
            while True:
                taken.append(pool.get_connection())
        assert _clients(client) <= len(taken) + 4 < BURST  # the writer's, the tail's, ours
        watcher = Watcher(cw, "r", poll=0.05).start()
        gate.release(100)
        owner.join()
        watcher.join()
        assert watcher.completed and watcher.error is None
        assert watcher.text == stored_text(cw, "r") == "".join(WORDS)
    finally:
        for connection in taken:
            pool.release(connection)
        owner.join()
        client.close()
        store.close()
        fanout.close()
