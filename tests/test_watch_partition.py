"""Redis partitioned from one worker, not the others (a real partition through a TCP
proxy, tests/tcpproxy.py: connections accepted and held, no byte through, then healed).

The owner is another process, streaming into a SQLite file shared with this process (the
watcher); each process reaches the shared Redis (under a key prefix of the test's own)
through its own link, and only one link is cut.

* The owner's link cut mid-reply: the owner goes on delivering and checkpointing with no
  error and no wait (its commit while cut off: tests/test_watch_redis.py); the watcher
  (its Redis fine, the live log stalled) shows the stored checkpoints meanwhile; after
  the link heals it gets the owner's chunks live again (within 2 s) and ends with the
  stored record.
* The watcher's link cut mid-reply: the watcher falls back to the store's checkpoints,
  and goes live again once healed; it ends with the stored record.

Live chunks are told from the store's by their metadata: the owner gives each chunk
``metadata={"n": i}``, which the live log carries and the store does not keep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redistest
from gated import OwnerProcess, words
from tcpproxy import TcpProxy
from watching import Watcher, published, stored_text

import rxcontext
from rxcontext import Chunk, ContextWindow

pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout

HEALED_WITHIN = 2.0  # live again this soon after the link heals (bounded wait)
FALLBACK_WITHIN = 10.0  # the store's checkpoints shown this soon (bounded wait)


def live(chunk: Chunk) -> bool:
    """Whether the watcher got ``chunk`` from the live log (the store keeps no metadata)."""
    return "n" in chunk.metadata


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


@pytest.fixture
def links(shared: tuple[str, str]) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    """The owner's and the watcher's own links to the shared Redis."""
    where = urlparse(shared[0])
    upstream = (where.hostname or "127.0.0.1", where.port or 6379)
    pair = (TcpProxy(upstream), TcpProxy(upstream))
    yield pair
    for proxy in pair:
        proxy.close()


def _start(
    tmp_path: Path, prefix: str, owner_link: TcpProxy, watcher_link: TcpProxy
) -> tuple[OwnerProcess, Watcher, ContextWindow]:
    target = str(tmp_path / "shared.db")
    ContextWindow(rxcontext.open(target), None, "part").add_prompt("Count.")
    owner = OwnerProcess(target, owner_link.url, prefix, context="part")
    owner.deliver(3)
    # timeout=0.2: the watcher's reads give up after 2.2 s (the XREAD block + 1.2 s).
    fanout = RedisFanout(watcher_link.url, prefix=prefix, timeout=0.2)
    # The three chunks are in the live log before the watcher starts (the owner's writer
    # sends every 20 ms; a watcher that came first would show them from the store).
    assert published(fanout, "r", 3)
    store = rxcontext.open(target, fanout=fanout)
    cw = ContextWindow(store, None, "part")
    watcher = Watcher(cw, "r", poll=0.05).start()
    assert watcher.wait_for(words(3)), watcher.text
    return owner, watcher, cw


def _live_again(owner: OwnerProcess, watcher: Watcher) -> float:
    """After a heal: one chunk at a time until the watcher gets one live; how long that
    took (bounded by ``HEALED_WITHIN``)."""
    healed = time.monotonic()
    while True:
        owner.deliver(1)
        assert watcher.wait_for(words(owner.n), HEALED_WITHIN), watcher.text
        took = time.monotonic() - healed
        if live(watcher.chunks[-1]):
            return took
        assert took < HEALED_WITHIN, "not live again after the partition healed"


def _finish(owner: OwnerProcess, watcher: Watcher, cw: ContextWindow) -> None:
    assert owner.end() == "done"  # no error at the owner, ever
    watcher.join()
    assert watcher.completed, watcher.error
    assert watcher.text == stored_text(cw, "r") == words(owner.n)
    cw.store.close()


def test_the_owner_cut_off_from_redis_goes_on_and_its_watcher_reads_the_store(
    tmp_path: Path, shared: tuple[str, str], links: tuple[TcpProxy, TcpProxy]
) -> None:
    owner_link, watcher_link = links
    owner, watcher, cw = _start(tmp_path, shared[1], owner_link, watcher_link)
    try:
        assert all(live(c) for c in watcher.chunks), watcher.chunks
        owner_link.blackhole()
        owner.deliver(3)  # returns: delivering never waits on Redis
        # Its checkpoints go on; the watcher, whose live log stalled, shows them.
        assert watcher.wait_for(words(6), FALLBACK_WITHIN), watcher.text
        assert not live(watcher.chunks[-1])
        owner_link.heal()
        print(f"live again {_live_again(owner, watcher):.2f} s after the heal")
        _finish(owner, watcher, cw)
    finally:
        owner.close()


def test_a_watcher_cut_off_from_redis_reads_the_store_then_goes_live_again(
    tmp_path: Path, shared: tuple[str, str], links: tuple[TcpProxy, TcpProxy]
) -> None:
    owner_link, watcher_link = links
    owner, watcher, cw = _start(tmp_path, shared[1], owner_link, watcher_link)
    try:
        watcher_link.blackhole()
        owner.deliver(3)
        assert watcher.wait_for(words(6), FALLBACK_WITHIN), watcher.text
        assert not live(watcher.chunks[-1])
        watcher_link.heal()
        print(f"live again {_live_again(owner, watcher):.2f} s after the heal")
        _finish(owner, watcher, cw)
    finally:
        owner.close()
