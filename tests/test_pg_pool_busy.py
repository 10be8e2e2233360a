"""A reply's final write that finds every pooled connection busy is kept, as a locked one is.

A store's pool (``pool_size``) is shared by all its calls. When every connection is held by
the store's other calls at the moment a reply ends, the reply's final write (its commit, or
the checkpoint of its failure) waits for one (1 s at least) and is refused: nothing was
written, the server is healthy, and a later attempt succeeds. That is the store being
busy, as a lock refused by ``lock_timeout`` is (tests/test_pg_lock_timeout.py): the
subscriber gets ``StoreBusy`` and the final checkpoint, exactly the text it was shown, is
kept and written once a connection is free (by the heartbeat's next round, or as the store
closes). Before the fix the refusal was a plain ``StoreError``: the final checkpoint was
tried once more (another wait on the still busy pool) and then given up, so the text the
user was shown was lost (the row stayed as its periodic writes left it).

The other calls are the store's own (its runner, as every store call runs), started from
inside the model's stream after the reply showed its text; each says when it holds its
connection and holds it until the test lets it go. The waits are bounds, not sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ending import start_replies

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, StoreBusy, StoreError
from rxcontext.heartbeat import heartbeat_for
from rxcontext.providers import ScriptedModel

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

T = Chunk
POOL = 2
BOUND = 30.0  # seconds: far past the 1 s pool wait; only a hang reaches it


class Crowding(ScriptedModel):
    """Shows five chunks, then the store's other calls take every pooled connection (until
    ``gate`` is set), then the reply ends (``completed``: its commit finds the pool busy)
    or its connection is cut (``cut``: the checkpoint of that failure finds it busy)."""

    def __init__(self, store: Any, gate: threading.Event, end: str) -> None:
        super().__init__([])
        self.store = store
        self.gate = gate
        self.end = end
        self.holders: list[threading.Thread] = []

    def iter_chunks(self, request: Any) -> Iterator[Chunk]:
        for i in range(5):
            yield T(ChunkKind.TEXT, f"<{i}>")
        self.holders = [self._hold_a_connection() for _ in range(POOL)]
        yield T(ChunkKind.TEXT, "<end>")
        if self.end == "cut":
            raise ConnectionError("the model's connection was cut")
        yield T(ChunkKind.DONE, finish_reason="stop")

    def _hold_a_connection(self) -> threading.Thread:
        held = threading.Event()

        def body(conn: Any, _: bool) -> None:
            held.set()
            assert self.gate.wait(BOUND)

        holder = threading.Thread(target=lambda: self.store._runner.run(body), daemon=True)
        holder.start()
        assert held.wait(BOUND), "a call never got a pooled connection"
        return holder


@pytest.mark.parametrize(("end", "writer"), [("completed", "close"), ("cut", "heartbeat")])
def test_a_final_write_finding_the_pool_busy_is_kept_not_dropped(
    pg_url: str, end: str, writer: str
) -> None:
    """``writer``: who writes the kept checkpoint once the pool is free: ``store.close()``,
    or the heartbeat's next round while the store stays open."""
    store = rxcontext.open(pg_url, retry_budget=0.5, pool_size=POOL)
    other = rxcontext.open(pg_url)  # another worker, with a pool of its own
    gate = threading.Event()
    model = Crowding(store, gate, end)
    try:
        cw = ContextWindow(store, model, "c", retry=None)
        cw.add_prompt("go")
        shown: list[str] = []
        errors: list[BaseException] = []
        cw.stream(reply_id="r").subscribe(
            lambda c: shown.append(c.text) if c.kind is ChunkKind.TEXT else None, errors.append
        )
        assert "".join(shown) == "<0><1><2><3><4><end>"
        [error] = errors
        # Meanwhile the reply is its owner's, live, for everyone else.
        found = other.find_reply("r")
        assert found is not None and found.state is ReplyState.STREAMING, found
        written = threading.Event()
        heartbeat = heartbeat_for(store)

        def after_round() -> None:
            if not any(b.persister.pending for b in list(heartbeat._beats.values())):
                written.set()

        heartbeat.listeners.append(after_round)
        gate.set()
        for holder in model.holders:
            holder.join(BOUND)
        if writer == "heartbeat":
            heartbeat.poke()
            assert written.wait(BOUND), "the heartbeat never wrote the kept checkpoint"
            found = store.find_reply("r")
            assert found is not None and found.state is ReplyState.INTERRUPTED, found
            assert found.text == "".join(shown)
        store.close()  # writes the kept checkpoint, if the heartbeat has not
        found = other.find_reply("r")
        assert found is not None and found.state is ReplyState.INTERRUPTED, found
        assert found.text == "".join(shown)
        # Busy, as a lock refusal is: the text is kept, and the message says why and what to do.
        busy = error if isinstance(error, StoreBusy) else error.__cause__
        assert isinstance(busy, rxcontext.PoolBusy), repr(error)  # not another process's lock
        message = str(busy)
        assert f"all {POOL} (pool_size) were busy" in message and "kept" in message, message
    finally:
        gate.set()
        store.close()
        other.close()


def test_a_connection_passing_between_calls_still_counts_as_busy(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection a call gives back while another waits is handed by the pool straight to
    the waiter, which holds it from then on, though its thread has yet to run. A call timing
    out in that gap found every connection busy all the same, so it is ``StoreBusy``. Before
    the fix the store counted a connection busy only from when the receiving call's code ran:
    in the gap the pool looked idle to it, and the timeout was told as a server down ("did
    not answer ... Check that the server is up"), a plain ``StoreError``; a reply's final
    write refused so was dropped (the reviewer's churn: 370 of 4,854 timeouts, and 3 of 10
    runs of 60 replies lost the text of 40 to 60).

    The gap is held open, not raced: psycopg_pool logs "connection given by" in the
    receiving call's thread before it returns the connection to the store, and a filter on
    that log stops the thread there until the test lets it go."""
    from rxcontext.store import pg_run

    monkeypatch.setattr(pg_run, "PATIENCE", 0.2)  # how long the call waits for the pool
    store = rxcontext.open(pg_url, retry_budget=0, pool_size=1)
    runner = store._runner
    pool = runner.pool()
    gate = threading.Event()  # lets the holder give its connection back
    held = threading.Event()
    in_gap = threading.Event()  # the receiver has the connection; its store code has not run
    let_go = threading.Event()

    def holding(conn: Any, _: bool) -> None:
        held.set()
        assert gate.wait(BOUND)

    receiver_ran: list[bool] = []
    receiver = threading.Thread(
        target=lambda: runner.run(lambda conn, _: receiver_ran.append(True)), daemon=True
    )

    def stop_the_receiver(record: logging.LogRecord) -> bool:
        if threading.current_thread() is receiver and record.msg.startswith("connection given"):
            in_gap.set()
            assert let_go.wait(BOUND)
        return True

    logger = logging.getLogger("psycopg.pool")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addFilter(stop_the_receiver)
    holder = threading.Thread(target=lambda: runner.run(holding), daemon=True)
    try:
        holder.start()
        assert held.wait(BOUND)
        receiver.start()
        assert _until(lambda: pool.get_stats().get("requests_waiting", 0) == 1)
        gate.set()  # the holder gives it back: the pool hands it to the waiting receiver
        assert in_gap.wait(BOUND), "the waiting call was never given the connection"
        holder.join(BOUND)
        assert not holder.is_alive()
        with pytest.raises(StoreError) as refused:
            runner.run(lambda conn, _: None)
        assert isinstance(refused.value, StoreBusy), str(refused.value)
        assert "all 1 (pool_size) were busy" in str(refused.value), str(refused.value)
    finally:
        gate.set()
        let_go.set()
        logger.removeFilter(stop_the_receiver)
        logger.setLevel(level)
        holder.join(BOUND)
        receiver.join(BOUND)
        store.close()
    assert receiver_ran == [True]


def _until(done: Callable[[], bool], bound: float = BOUND) -> bool:
    """Whether ``done()`` came true within ``bound`` seconds (asked every millisecond)."""
    deadline = time.monotonic() + bound
    while not done():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.001)
    return True


@pytest.mark.slow
def test_closing_waits_once_for_a_pool_held_past_several_pending_replies(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Several replies' final writes were refused by a pool a hung call holds (a lock wait
    with no ``lock_timeout``, say): ``store.close()`` tries each once more, but waits for the
    pool once (1 s, the least a call waits), not once a reply: the first refusal shows the
    pool still busy, so all of them are tried again without waiting until as long again, then
    given up and logged. Before the fix each waited in turn: 5 replies on ``retry_budget=3``
    took 15 s to close (the reviewer's), here 4 replies about 2 s."""
    replies = 4
    store = rxcontext.open(pg_url, retry_budget=0, pool_size=1)
    patience = store._runner.patience
    go = threading.Event()
    gate = threading.Event()
    held = threading.Event()
    errors: list[BaseException] = []
    streams = []
    holder: threading.Thread | None = None
    try:
        streams = start_replies(store, replies, go, errors, BOUND)

        def hung(conn: Any, _: bool) -> None:
            held.set()
            assert gate.wait(BOUND)

        holder = threading.Thread(target=lambda: store._runner.run(hung), daemon=True)
        holder.start()
        assert held.wait(BOUND)
        go.set()  # every reply ends; its commit finds the pool held
        for stream in streams:
            stream.join(BOUND)
        assert [type(e) for e in errors] == [rxcontext.PoolBusy] * replies, errors
        with caplog.at_level("WARNING", logger="rxcontext"):
            took = _close_timed(store)
        given_up = [r for r in caplog.records if "could not be written" in r.getMessage()]
        assert len(given_up) == replies, caplog.text
        assert took < 3 * patience, f"close() took {took:.1f} s: it waited once a reply"
    finally:
        go.set()
        gate.set()
        if holder is not None:
            holder.join(BOUND)
        store.close()
    assert holder is not None and not holder.is_alive()


@pytest.mark.slow
def test_closing_waits_once_for_a_server_gone_past_several_pending_replies(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Several replies' final writes were refused by a pool a hung call held; then the server
    goes away and ``store.close()`` runs. The first write waits the retry budget and fails
    (``StoreError``, the store as a whole): the others are tried without waiting, then given
    up and logged, not each waited for in turn. Before the fix the wait went on after a
    plain failure (the reviewer's close_down.py, 4 replies, ``retry_budget=3``: close() took
    12 s, every write failing after its own wait)."""
    from urllib.parse import urlsplit, urlunsplit

    from tcpproxy import TcpProxy

    replies = 3
    parts = urlsplit(pg_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    query = "&".join(q for q in (parts.query, "connect_timeout=2") if q)
    url = urlunsplit(
        parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host, query=query)
    )
    store = rxcontext.open(url, retry_budget=1, pool_size=1)
    go = threading.Event()
    gate = threading.Event()
    held = threading.Event()
    errors: list[BaseException] = []
    streams = []
    holder: threading.Thread | None = None

    def hung(conn: Any, _: bool) -> None:
        held.set()
        assert gate.wait(BOUND)

    def hold() -> None:
        with pytest.raises(StoreError):  # its connection goes with the server
            store._runner.run(hung)

    try:
        streams = start_replies(store, replies, go, errors, BOUND)
        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert held.wait(BOUND)
        go.set()  # every reply ends; its commit finds the pool held
        for stream in streams:
            stream.join(BOUND)
        assert [type(e) for e in errors] == [rxcontext.PoolBusy] * replies, errors
        proxy.close()  # the server goes away; the hung call ends with it
        gate.set()
        holder.join(BOUND)
        assert not holder.is_alive()
        with caplog.at_level("WARNING", logger="rxcontext"):
            took = _close_timed(store)
        failed = [r for r in caplog.records if "final checkpoint of" in r.getMessage()]
        assert [r.levelname for r in failed] == ["ERROR"] + ["WARNING"] * (replies - 1), [
            r.getMessage() for r in failed
        ]
        # Given up because the store failed, not because a lock or the pool was busy: the
        # warning says so (it said "the database is still busy", pointing at the wrong fix).
        for given_up in failed[1:]:
            message = given_up.getMessage()
            assert "still busy" not in message, message
            assert "the store failed as it closed" in message, message
        assert took < 2 * replies, f"close() took {took:.1f} s: it waited once a reply"
    finally:
        go.set()
        gate.set()
        if holder is not None:
            holder.join(BOUND)
        store.close()
        proxy.close()


def _close_timed(store: Any) -> float:
    """``store.close()`` on a thread of its own, which must end within ``BOUND``: the
    seconds it took."""
    started = time.monotonic()
    closing = threading.Thread(target=store.close, daemon=True)
    closing.start()
    closing.join(BOUND)
    took = time.monotonic() - started
    assert not closing.is_alive(), "store.close() hung"
    return took
