"""A lease renewal whose ``COMMIT`` outcome is unknown (the connection was lost during it)
on PostgreSQL: settled by reading the lease row back, never taken for a failure.

The heartbeat renews each lease in one bounded attempt per poll (it must never wait). A
renewal whose connection was lost during ``COMMIT`` may well have been written: before, it
counted as not written, and once the leases had not been renewed (by this process's count)
for ``lease_ttl`` the heartbeat gave the reply up as "could not renew its lease … may have
been taken over" — the lease in the database fresh all along, nobody able to take it. Here a
TCP proxy (tests/tcpproxy.py) lets every renewal commit on the server and closes the
connection before the client hears of the ``COMMIT``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from tcpproxy import TcpProxy

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.heartbeat import heartbeat_for
from rxcontext.providers import ScriptedModel
from tests.test_store_replies import ELSEWHERE, P, begin

psycopg = pytest.importorskip("psycopg")

RENEWAL = b"SET lease_until = clock_timestamp()"  # the renewal's statement text
BOUND = 60.0  # seconds: a bound that fails the test instead of hanging it, not a sleep


@pytest.fixture
def proxied(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """``pg_url`` through a proxy of this test's own: (its URL, the proxy)."""
    parts = urlsplit(pg_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    url = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    try:
        yield url, proxy
    finally:
        proxy.close()


def _lease_until(pg_url: str, checkpoint_id: int) -> Any:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT lease_until FROM checkpoints WHERE id = %s", (checkpoint_id,))
        return row.fetchone()[0]  # type: ignore[index]


def test_a_renewal_committed_as_its_connection_is_lost_counts_as_renewed(
    pg_url: str, proxied: tuple[str, TcpProxy]
) -> None:
    """``renew_replies`` on a renewal the server committed but whose ``COMMIT`` answer was
    lost: renewed (before: None, "could not be written"), read back from the row."""
    url, proxy = proxied
    store = rxcontext.open(url)
    try:
        ctx = store.get_or_create_context("c")
        store.add_record(ctx.id, P("q"))
        mine = begin(store, ctx.id, "mine", owner=ELSEWHERE)
        before = _lease_until(pg_url, mine.checkpoint_id)
        proxy.lose_commit_acks(RENEWAL)
        assert store.renew_replies([mine]) == [True]
        assert proxy.acks_lost == 1  # it did lose the COMMIT's answer
        assert _lease_until(pg_url, mine.checkpoint_id) > before  # and it was written
        proxy.lose_commit_acks(None)
        # Settled by the row, not assumed: a ticket of an epoch moved on is not renewed.
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE checkpoints SET epoch = epoch + 1 WHERE id = %s", (mine.checkpoint_id,)
            )
        proxy.lose_commit_acks(RENEWAL)
        assert store.renew_replies([mine]) == [False]
        assert proxy.acks_lost == 2
    finally:
        store.close()


class Holding(ScriptedModel):
    """One chunk, then waits (the model reasons in silence) until told to end."""

    def __init__(self, go: threading.Event) -> None:
        super().__init__([])
        self.go = go

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        yield Chunk(ChunkKind.TEXT, "[a]")
        assert self.go.wait(BOUND)
        yield Chunk(ChunkKind.TEXT, "[b]")
        yield Chunk(ChunkKind.DONE, finish_reason="stop")


def test_renewals_whose_commit_answer_is_lost_keep_the_reply(
    pg_url: str, proxied: tuple[str, TcpProxy]
) -> None:
    """Every renewal commits but its answer is lost for longer than ``lease_ttl``: the
    reply used to be given up (``OwnershipLost`` at its commit). It is this process's, its
    lease fresh in the database: it is stored whole."""
    url, proxy = proxied
    ttl = 3.0
    store = rxcontext.open(url, lease_ttl=ttl)
    try:
        heartbeat = heartbeat_for(store)
        go = threading.Event()
        cw = ContextWindow(store, Holding(go), "c", retry=None, checkpoint_every=None)
        cw.add_prompt("q")

        # Answers lost for longer than lease_ttl (by the heartbeat's own clock, looked at
        # after each of its rounds: no sleep), over a few renewals: counted as failures,
        # the reply would have been given up by then.
        began: list[float] = []
        enough = threading.Event()

        def counted() -> None:
            if began and time.monotonic() - began[0] > 1.5 * ttl and proxy.acks_lost >= 3:
                enough.set()

        def first_chunk(chunk: Chunk) -> None:
            began.append(time.monotonic())
            proxy.lose_commit_acks(RENEWAL)
            heartbeat.listeners.append(counted)
            assert enough.wait(BOUND), f"{proxy.acks_lost} renewal answers lost"
            heartbeat.listeners.remove(counted)
            proxy.lose_commit_acks(None)
            go.set()

        texts: list[str] = []

        def on_next(chunk: Chunk) -> None:
            if chunk.text == "[a]":
                first_chunk(chunk)
            texts.append(chunk.text)

        errors: list[BaseException] = []
        cw.stream().subscribe(on_next, errors.append)
        assert errors == [], [(e, e.__cause__) for e in errors]
        assert "".join(texts) == "[a][b]"
        (rec,) = [r for r in cw.live_records() if r.type.name == "MODEL_RESP"]
        assert rec.content == "[a][b]"
        assert cw.checkpoints() == [] and cw.active_replies() == []
    finally:
        store.close()
