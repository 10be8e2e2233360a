"""Nothing is left behind by a fault matrix: no Redis key without an expiry, no reply that
reads as generating once its owner is gone.

Five owners stream replies into one store (a SQLite file, or this test's own PostgreSQL
database) with the Redis fan-out (a private ``redis-server``: it is killed), each ended
another way: completed; stopped by ``cw.stop``; SIGKILLed mid-reply; Redis killed and
restarted empty mid-reply, then completed; Redis killed and restarted mid-reply, then the
owner SIGKILLed. The SIGKILLed owners are processes of their own (tests/gated.py), the
others threads of the test's process. After each phase:

* every key under the fan-out's prefix has an expiry (``TTL != -1``);
* every row the store has in state ``streaming``/``resuming`` belongs to a live process,
  or reads as ``INTERRUPTED`` through the public API (``find_reply``, ``cw.checkpoints()``)
  and is not among ``cw.active_replies()``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redistest
from gated import GatedModel, OwnerProcess, words
from watching import WAIT, Owner, stored_text

import rxcontext
from rxcontext import ContextWindow, ReplyState, ReplyStopped, StreamInterrupted
from tests.stores import scalar

pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout

PREFIX = "leak"
CASES = ["complete", "stop", "kill", "redis-complete", "redis-kill"]


def until(check: Callable[[], bool], what: str) -> None:
    """Bounded polling of a condition another process makes true."""
    deadline = time.monotonic() + WAIT
    tick = threading.Event()
    while not check():
        assert time.monotonic() < deadline, what
        tick.wait(0.02)


def keys_without_expiry(server: redistest.PrivateRedis) -> list[tuple[bytes, int]]:
    client = server.client()
    try:
        keys = list(client.scan_iter(match=f"{PREFIX}:*"))
        return [(k, ttl) for k in keys if (ttl := client.ttl(k)) == -1]
    finally:
        client.close()


def stream_exists(server: redistest.PrivateRedis, reply_id: str) -> bool:
    client = server.client()
    try:
        return bool(client.exists(f"{PREFIX}:{{{reply_id}}}:s"))
    finally:
        client.close()


def live_rows(store: Any) -> list[tuple[str, str]]:
    """``(reply_id, owner)`` of the rows stored as generating, read past the API."""
    if isinstance(store, rxcontext.SQLiteStore):
        rows = store._db().execute(
            "SELECT reply_id, owner FROM checkpoints WHERE state IN ('streaming', 'resuming')"
        )
        return [(r[0], r[1]) for r in rows.fetchall()]
    with store._runner.pool().connection() as conn:
        rows = conn.execute(
            "SELECT reply_id, owner FROM checkpoints WHERE state IN ('streaming', 'resuming')"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def check_no_leak(
    store: Any, cw: ContextWindow, server: redistest.PrivateRedis, alive: dict[str, int]
) -> None:
    """No key without an expiry; every row stored as generating is a live owner's (by
    pid), or reads as interrupted everywhere."""
    assert keys_without_expiry(server) == []
    active = {cp.reply_id for cp in cw.active_replies()}
    interrupted = {cp.reply_id for cp in cw.checkpoints()}
    for reply_id, owner in live_rows(store):
        pid = int(owner.split(":")[1])
        if alive.get(reply_id) == pid:
            assert reply_id in active
            continue
        row = store.find_reply(reply_id)
        assert row is not None and row.state is ReplyState.INTERRUPTED, (reply_id, row)
        assert reply_id not in active and reply_id in interrupted
    assert active <= set(alive)


def _deliver(owner: Owner, model: GatedModel, k: int) -> None:
    n = len(owner.delivered) + k
    model.permits.release(k)
    until(lambda: len(owner.delivered) == n, "the owner did not deliver")


def test_a_fault_matrix_leaves_no_key_without_expiry_and_no_orphan_reply(
    target: str, private: redistest.PrivateRedis
) -> None:
    fanout = RedisFanout(private.url, prefix=PREFIX)
    # The default lease (5 s, as the owner processes have): with 1 s, an owner thread of a
    # starved test process let its lease run out, and its live reply read as interrupted.
    # Nothing here waits on a lease: a killed owner is seen gone at once, a stop by the poll.
    store = rxcontext.open(target, lease_ttl=5.0, fanout=fanout)
    cw = ContextWindow(store, None, "leaks")
    cw.add_prompt("Count.")
    # SIGKILLed ones in processes of their own; the others on threads of this process.
    procs = {
        case: OwnerProcess(target, private.url, PREFIX, context="leaks", reply_id=case)
        for case in ("kill", "redis-kill")
    }
    models = {case: GatedModel(5) for case in ("complete", "stop", "redis-complete")}
    owners = {
        case: Owner(ContextWindow(store, model, "leaks", retry=None), case).start()
        for case, model in models.items()
    }
    try:
        for case, model in models.items():
            _deliver(owners[case], model, 3)
        for proc in procs.values():
            proc.deliver(3)
        for case in CASES:
            until(lambda c=case: stream_exists(private, c), f"{case}'s stream never began")
        alive = {case: proc.proc.pid for case, proc in procs.items()}
        alive.update((case, os.getpid()) for case in owners)
        check_no_leak(store, cw, private, alive)

        models["complete"].permits.release(3)
        owners["complete"].join()
        del alive["complete"]
        assert cw.stop("stop")
        # The model is silent: the owner's heartbeat ends the stream (the late chunks, let
        # out afterwards, are dropped).
        until(lambda: owners["stop"].error is not None, "the stop never reached the owner")
        models["stop"].permits.release(3)
        owners["stop"].join()
        del alive["stop"]
        procs["kill"].kill()
        del alive["kill"]
        check_no_leak(store, cw, private, alive)

        private.kill()
        # While Redis is down: the owners do not notice.
        _deliver(owners["redis-complete"], models["redis-complete"], 1)
        procs["redis-kill"].deliver(1)
        private.start()  # back, and empty: the writers make each log whole again
        for case in ("redis-complete", "redis-kill"):
            until(lambda c=case: stream_exists(private, c), f"{case}'s stream never came back")
        procs["redis-kill"].kill()
        del alive["redis-kill"]
        check_no_leak(store, cw, private, alive)
        models["redis-complete"].permits.release(2)
        owners["redis-complete"].join()
        del alive["redis-complete"]
        assert fanout.drain(WAIT)
        check_no_leak(store, cw, private, alive)
    finally:
        for proc in procs.values():
            proc.close()
        for case, owner in owners.items():
            models[case].permits.release(10)
            owner.join()
    assert owners["complete"].error is None and owners["redis-complete"].error is None
    stopped = owners["stop"].error
    assert isinstance(stopped, StreamInterrupted) and isinstance(stopped.__cause__, ReplyStopped)
    assert stored_text(cw, "complete") == stored_text(cw, "redis-complete") == words(5)
    assert cw.active_replies() == []
    assert sorted(cp.reply_id for cp in cw.checkpoints()) == ["kill", "redis-kill", "stop"]
    assert scalar(store, "SELECT COUNT(*) FROM checkpoints") == 3
    store.close()
    fanout.close()
