"""PostgreSQL partitioned from the owner mid-reply (tests/tcpproxy.py's blackhole: connections
accepted and held, no byte through either way, no reset): every store operation is bounded.

Before the fix a read from the silent server blocked for as long as the partition lasted:
the reply's commit (or the periodic checkpoint write it waited behind) never returned, the
heartbeat hung in its stop poll and ``store.close()`` waited for it for good. Now each
operation has a deadline (the call's ``retry_budget``, a background attempt's own bound)
after which the connection is broken and dropped, and the subscriber gets a
:class:`~rxcontext.StoreError` (as the cause of the ``StreamInterrupted`` when the
checkpoint could not be written either). The waits below are bounds for a hang, far above
the budget; nothing is timed.

``-m faults`` adds a run through a real PgBouncer of the test's own (skipped, saying so,
without the ``pgbouncer`` binary; the default run models it with the proxy).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tcpproxy import TcpProxy

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, StoreError, StreamInterrupted
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

pytestmark = pytest.mark.slow  # seconds of real deadlines and faults: a step of its own (setup.cfg)

pytest.importorskip("psycopg", reason="the postgres extra is not installed")

HANG = 60.0  # seconds: far above every bound below (retry_budget 1 s); only a hang fails


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(("127.0.0.1", 5432))
    yield p
    p.close()


def through(proxy: TcpProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    host_part = url.split("@", 1)[1].split("/", 1)[0]
    return url.replace(host_part, f"127.0.0.1:{proxy.port}")


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _store_error(exc: BaseException | None) -> StoreError | None:
    """The StoreError the subscriber got: itself, or the cause of its StreamInterrupted."""
    if isinstance(exc, StreamInterrupted):
        exc = exc.__cause__
    return exc if isinstance(exc, StoreError) else None


@pytest.mark.parametrize("checkpoint_every", [0.05, None])
def test_a_partition_mid_reply_ends_the_stream_with_a_store_error(
    pg_url: str, proxy: TcpProxy, checkpoint_every: float | None
) -> None:
    store = rxcontext.open(
        through(proxy, pg_url), retry_budget=1.0, lease_ttl=1.0, connect_timeout=2.0
    )
    words = [Chunk(ChunkKind.TEXT, f"w{i} ") for i in range(20)]
    # The model's pace lets periodic writes start (and, before the fix, stick) meanwhile.
    model = ScriptedModel([[*words, Chunk(ChunkKind.DONE, finish_reason="stop")]], delay=0.02)
    cw = ContextWindow(store, model, context="part", retry=None, checkpoint_every=checkpoint_every)
    cw.add_prompt("go")
    got: list[str] = []

    def on_chunk(chunk: Chunk) -> None:
        got.append(chunk.text)
        if len(got) == 5:
            proxy.blackhole()

    streaming, out = _in_thread(lambda: cw.stream(rxops.middleware(on_chunk=on_chunk)).run())
    streaming.join(HANG)
    assert not streaming.is_alive(), "the reply hung on the partitioned database"
    error = out.get("error")
    assert _store_error(error) is not None, repr(error)
    assert "".join(got) == "".join(w.text for w in words)  # the stream itself never waited

    # Still partitioned: closing the store (its heartbeat first) is bounded too.
    closing, _ = _in_thread(store.close)
    closing.join(HANG)
    assert not closing.is_alive(), "store.close() hung on the partitioned database"

    proxy.heal()  # the database works again, through a new store
    with rxcontext.open(through(proxy, pg_url), retry_budget=10.0) as again:
        assert ContextWindow(again, None, context="part").live_records()


def test_a_call_on_a_partitioned_database_raises_store_error_within_its_budget(
    pg_url: str, proxy: TcpProxy
) -> None:
    store = rxcontext.open(through(proxy, pg_url), retry_budget=1.0, connect_timeout=2.0)
    cw = ContextWindow(store, None, context="calls")
    cw.add_prompt("before")  # the pool holds a live connection now
    proxy.blackhole()
    adding, out = _in_thread(lambda: cw.add_prompt("during"))
    adding.join(HANG)
    assert not adding.is_alive(), "a store call hung on the partitioned database"
    error = out.get("error")
    assert isinstance(error, StoreError), repr(error)
    assert "1 s" in str(error)  # the message names the budget it spent
    closing, _ = _in_thread(store.close)
    closing.join(HANG)
    assert not closing.is_alive(), "store.close() hung on the partitioned database"


def test_a_write_waiting_for_a_lock_past_its_budget_is_not_taken_for_a_partition(
    pg_url: str,
) -> None:
    """The other side of the deadline: a silent server that is at work on the call (here
    waiting for a row lock another session holds, no ``lock_timeout``) is asked, and the
    call goes on waiting, as docs/guarantees.md promises for final writes."""
    import psycopg

    store = rxcontext.open(pg_url, retry_budget=0.5)
    cw = ContextWindow(store, None, context="locked")
    cw.add_prompt("before")
    runner = store._runner  # type: ignore[attr-defined]
    asked = threading.Event()
    answers: list[bool | None] = []
    check = runner._at_work

    def counted(conn: Any) -> bool | None:  # the store's own check, observed
        answers.append(check(conn))
        asked.set()
        return answers[-1]

    runner._at_work = counted
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT 1 FROM contexts WHERE name = 'locked' FOR UPDATE")
        adding, out = _in_thread(lambda: cw.add_prompt("after"))
        assert asked.wait(HANG), "the deadline never came"
        other.rollback()
    adding.join(HANG)
    assert not adding.is_alive()
    assert "error" not in out, repr(out.get("error"))
    assert answers and answers[0] is True
    assert [r.content for r in cw.live_records()] == ["before", "after"]
    store.close()


def _observed(runner: Any, answers: list[bool | None], asked: threading.Event) -> None:
    """Record the store's own at-work answers (the check itself runs unchanged)."""
    check = runner._at_work

    def counted(conn: Any) -> bool | None:
        answers.append(check(conn))
        asked.set()
        return answers[-1]

    runner._at_work = counted


def test_a_lock_wait_past_the_budget_goes_on_when_the_probe_is_slow_to_connect(
    pg_url: str, proxy: TcpProxy
) -> None:
    """A healthy link whose connects are slow (far-away server: handshake and
    authentication take several round trips): the probe's connect has its own bound
    (``connect_timeout``), only its question the short one. Before the fix the caller gave
    connect and question 0.5 s together, got no answer and took a lock wait for a
    partition."""
    import psycopg

    store = rxcontext.open(through(proxy, pg_url), retry_budget=0.5)
    cw = ContextWindow(store, None, context="slowlink")
    cw.add_prompt("before")  # the pool holds a live connection now
    answers: list[bool | None] = []
    asked = threading.Event()
    _observed(store._runner, answers, asked)  # type: ignore[attr-defined]
    proxy.connect_delay = 1.0  # the probe's new connection: longer than 0.5 s to connect
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT 1 FROM contexts WHERE name = 'slowlink' FOR UPDATE")
        adding, out = _in_thread(lambda: cw.add_prompt("after"))
        assert asked.wait(HANG), "the deadline never came"
        other.rollback()
    adding.join(HANG)
    assert not adding.is_alive()
    assert answers[0] is True, answers
    assert "error" not in out, repr(out.get("error"))
    assert [r.content for r in cw.live_records()] == ["before", "after"]
    store.close()


def test_a_reply_still_in_flight_to_the_client_is_not_cut(pg_url: str, proxy: TcpProxy) -> None:
    """The server sent its answer and is idle, the answer still on its way (a big result
    on a slow link): the probe reaches the server and finds our session, so the call goes
    on. Before the fix 'idle' counted as done, and the call was cut 0.5 s later."""
    store = rxcontext.open(through(proxy, pg_url), retry_budget=0.5)
    cw = ContextWindow(store, None, context="inflight")
    cw.add_prompt("before")
    answers: list[bool | None] = []
    asked = threading.Event()
    _observed(store._runner, answers, asked)  # type: ignore[attr-defined]
    proxy.stall_replies()  # the pool's connection: replies held; the probe's goes through
    # A read: the server sends the rows and is idle (a pipelined write shows 'active' until
    # its COMMIT's Sync, so it would not show the difference).
    reading, out = _in_thread(cw.live_records)
    assert asked.wait(HANG), "the deadline never came"
    proxy.heal()
    reading.join(HANG)
    assert not reading.is_alive()
    assert answers[0] is True, answers
    assert "error" not in out, repr(out.get("error"))
    assert [r.content for r in out["value"]] == ["before"]
    store.close()


def test_the_probe_still_tells_a_session_gone_from_one_at_work(pg_url: str) -> None:
    """On a direct connection the probe's own pid is the server's, so a session that is
    not there is gone (False: the caller cuts after a short grace); one there, idle or not,
    may still get its answer (True); an unreachable server cannot tell (None)."""
    import psycopg

    from rxcontext.store.pg_deadline import BoundedConnection, at_work

    check = at_work(pg_url, {"connect_timeout": 2}, 5.0)
    with BoundedConnection.connect(pg_url, autocommit=True) as conn:
        assert check(conn) is True  # idle, its answer possibly in flight
        with psycopg.connect(pg_url, autocommit=True) as killer:
            # Waits (bounded) until the session is gone from pg_stat_activity.
            killer.execute("SELECT pg_terminate_backend(%s, 30000)", (conn.pgconn.backend_pid,))
        assert check(conn) is False
        proxy = TcpProxy(("127.0.0.1", 5432))
        try:
            proxy.blackhole()
            assert at_work(through(proxy, pg_url), {"connect_timeout": 2}, 0.5)(conn) is None
        finally:
            proxy.close()


def _as_role(url: str, role: str) -> str:
    """``url`` with its user replaced by ``role``."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


def test_a_lock_wait_goes_on_when_the_server_refuses_the_probe_a_connection(
    pg_url: str,
) -> None:
    """A lock pile-up uses up connections exactly when a write waits past its budget: the
    server refuses the probe's (here the role's CONNECTION LIMIT, FATAL 53300 "too many
    connections"; ``max_connections`` reached is the same). The server answered, so it is
    reachable: the call goes on waiting. Before the fix any error of the probe counted as
    no answer, and the lock wait was cut as a partition."""
    import os

    import psycopg

    role = f"rxct_{os.getpid()}_limited"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'
        )
        admin.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        try:
            store = rxcontext.open(_as_role(pg_url, role), retry_budget=0.5, pool_size=1)
            cw = ContextWindow(store, None, context="crowded")
            cw.add_prompt("before")  # the pool's one connection is open: the role's last
            admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 1')
            answers: list[bool | None] = []
            asked = threading.Event()
            _observed(store._runner, answers, asked)  # type: ignore[attr-defined]
            with psycopg.connect(pg_url) as other:
                other.execute("SELECT 1 FROM contexts WHERE name = 'crowded' FOR UPDATE")
                adding, out = _in_thread(lambda: cw.add_prompt("after"))
                assert asked.wait(HANG), "the deadline never came"
                other.rollback()
            adding.join(HANG)
            assert not adding.is_alive()
            assert answers[0] is True, answers
            assert "error" not in out, repr(out.get("error"))
            assert [r.content for r in cw.live_records()] == ["before", "after"]
            store.close()
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def test_a_lock_wait_goes_on_when_the_probe_connects_but_its_question_is_queued(
    pg_url: str, proxy: TcpProxy
) -> None:
    """Behind PgBouncer in transaction mode the lock waiters hold every server connection
    of its pool: the probe connects (to the pooler) but its question waits in the pooler's
    queue past its bound (the proxy holds the question here, the connect goes through).
    The connect succeeding is the server side answering, so the call goes on waiting; a
    partition stops the connect itself (the other tests here). Before the fix a question
    unanswered in time counted as a partition, and every waiter was cut."""
    import psycopg

    store = rxcontext.open(through(proxy, pg_url), retry_budget=0.5)
    cw = ContextWindow(store, None, context="queued")
    cw.add_prompt("before")
    answers: list[bool | None] = []
    asked = threading.Event()
    _observed(store._runner, answers, asked)  # type: ignore[attr-defined]
    proxy.hold_statements(b"pg_stat_activity")  # the probe's question, queued
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT 1 FROM contexts WHERE name = 'queued' FOR UPDATE")
        adding, out = _in_thread(lambda: cw.add_prompt("after"))
        assert asked.wait(HANG), "the deadline never came"
        other.rollback()
    proxy.heal()
    adding.join(HANG)
    assert not adding.is_alive()
    assert answers[0] is True, answers
    assert "error" not in out, repr(out.get("error"))
    assert [r.content for r in cw.live_records()] == ["before", "after"]
    store.close()


@pytest.fixture
def pgbouncer(pg_url: str, tmp_path: Any) -> Iterator[str]:
    """A PgBouncer of the test's own (transaction mode, two server connections) in front of
    the test's database; its URL. Skips, saying so, without a ``pgbouncer`` binary."""
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import time

    import psycopg

    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, _, server_port = server.partition(":")
    user = pg_url.split("://", 1)[1].split("@", 1)[0]
    (tmp_path / "users.txt").write_text(f'"{user}" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        f"[databases]\n* = host={host} port={server_port or 5432}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {tmp_path / 'users.txt'}\npool_mode = transaction\n"
        "default_pool_size = 2\nignore_startup_parameters = extra_float_digits,options\n"
    )
    cmd = [binary, str(tmp_path / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(tmp_path, pw.pw_uid, pw.pw_gid)
        cmd[1:1] = ["-u", "postgres"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = pg_url.replace(server, f"127.0.0.1:{port}", 1)
    try:
        for _ in range(200):  # its start: a process of its own, polled (at most 10 s)
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(HANG)


@pytest.mark.faults
def test_lock_waiters_filling_pgbouncers_pool_are_not_cut(pgbouncer: str, pg_url: str) -> None:
    """The real thing the proxy test above models: two writes wait past their budget for a
    row lock another session holds, through PgBouncer in transaction mode whose two server
    connections they hold; the probe's question waits in PgBouncer's queue. Both writes go
    on and succeed once the lock is gone (before the fix both were cut)."""
    import psycopg

    store = rxcontext.open(pgbouncer, retry_budget=0.5, pool_size=2)
    cws = [ContextWindow(store, None, context=f"pooled{i}") for i in range(2)]
    for cw in cws:
        cw.add_prompt("before")
    answers: list[bool | None] = []
    asked = threading.Event()
    _observed(store._runner, answers, asked)  # type: ignore[attr-defined]
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT 1 FROM contexts WHERE name LIKE 'pooled%' FOR UPDATE")
        adding = [_in_thread(lambda cw=cw: cw.add_prompt("after")) for cw in cws]
        assert asked.wait(HANG), "the deadline never came"
        other.rollback()
    for thread, out in adding:
        thread.join(HANG)
        assert not thread.is_alive()
        assert "error" not in out, repr(out.get("error"))
    assert answers and all(answers), answers
    for cw in cws:
        assert [r.content for r in cw.live_records()] == ["before", "after"]
    store.close()


def test_a_zero_retry_budget_leaves_a_healthy_store_alone(pg_url: str) -> None:
    """``retry_budget=0`` (fail fast: no retries) bounds retries, not how long a healthy
    server may take to answer. Before the fix the background attempts' bound was the budget
    (0: every attempt was cut and its connection closed, so a streaming reply's lease went
    unrenewed) and so was the wait before the probe and between its asks (every statement
    of every call opened a probe connection: 20 calls, about 130)."""
    store = rxcontext.open(pg_url, retry_budget=0)
    runner = store._runner  # type: ignore[attr-defined]
    answers: list[bool | None] = []
    _observed(runner, answers, threading.Event())
    cw = ContextWindow(store, None, context="failfast")
    for i in range(10):
        cw.add_prompt(f"p{i}")
    assert len(cw.live_records()) == 10
    assert len(answers) < 10, f"{len(answers)} probes for 10 calls to a healthy server"
    assert runner.attempt(lambda conn, _: conn.execute("SELECT 1").fetchone()) == (1,)
    store.close()


def test_a_reply_streams_past_its_lease_with_a_zero_retry_budget(pg_url: str) -> None:
    """The heartbeat's renewals are background attempts: with ``retry_budget=0`` they were
    all cut before the fix, and a reply streaming longer than ``lease_ttl`` ended with
    ``OwnershipLost``."""
    store = rxcontext.open(pg_url, retry_budget=0, lease_ttl=1.0)
    words = [Chunk(ChunkKind.TEXT, f"w{i} ") for i in range(25)]
    model = ScriptedModel([[*words, Chunk(ChunkKind.DONE, finish_reason="stop")]], delay=0.1)
    cw = ContextWindow(store, model, context="leased", retry=None)
    cw.add_prompt("go")
    cw.stream().run()  # 2.5 s: renewed twice or more, or its lease runs out
    assert cw.live_records()[-1].content == "".join(w.text for w in words)
    store.close()


def _holding_the_pool(store: Any) -> tuple[threading.Event, threading.Thread]:
    """A call of the store's own that holds its only pooled connection until the event is
    set (another thread's slow call, say)."""
    runner = store._runner
    gate = threading.Event()
    held = threading.Event()

    def body(conn: Any, _: bool) -> None:
        held.set()
        gate.wait(HANG)

    holder, _ = _in_thread(lambda: runner.run(body))
    assert held.wait(HANG)
    return gate, holder


@pytest.mark.parametrize("budget", [0, 0.3])
def test_a_pool_busy_with_other_calls_is_not_told_as_a_server_down(
    pg_url: str, budget: float
) -> None:
    """``retry_budget`` under 1 s (0: fail fast) bounds the retries, not a healthy store's
    pace: a call finding every pooled connection busy with the store's other calls waits
    for one as long as it would for the server's answer, 1 s at least. Kept busy past that,
    the ``StoreError`` says so, how long it waited, and what to do (fewer calls at once, a
    larger ``pool_size``). Before the fix the call waited 50 ms (the budget, 0.05 s at
    least) and was told "no connection within 0 s ... Check that the server is up": 12 of
    240 calls of 16 threads on a pool of 4 failed so on a healthy server."""
    store = rxcontext.open(pg_url, retry_budget=budget, pool_size=1)
    cw = ContextWindow(store, None, context="busy")
    gate, holder = _holding_the_pool(store)
    started = time.monotonic()
    adding, out = _in_thread(lambda: cw.add_prompt("refused"))
    adding.join(HANG)
    took = time.monotonic() - started
    gate.set()
    holder.join(HANG)
    error = out.get("error")
    assert isinstance(error, StoreError), repr(error)
    message = str(error)
    assert "pool_size" in message and "Check that the server is up" not in message, message
    assert f"retry budget {budget:g} s, at least 1 s is waited" in message, message
    assert 1.0 <= _waited(message) <= took, message
    store.close()


def _waited(message: str) -> float:
    """The seconds a StoreError says the call waited."""
    found = re.search(r" in (\d+\.\d) s \(", message)
    assert found is not None, message
    return float(found.group(1))


@pytest.mark.parametrize("budget", [0, 0.3])
def test_a_partitioned_calls_error_says_how_long_it_waited(
    pg_url: str, proxy: TcpProxy, budget: float
) -> None:
    """A budget under 1 s still waits 1 s for the server (then the probe's connect): the
    ``StoreError`` says how long the call waited, and why longer than its budget. Before
    the fix it said "did not answer within the retry budget of 0 s" after some 3 s."""
    store = rxcontext.open(through(proxy, pg_url), retry_budget=budget, connect_timeout=2.0)
    cw = ContextWindow(store, None, context="calls")
    cw.add_prompt("before")
    proxy.blackhole()
    started = time.monotonic()
    adding, out = _in_thread(lambda: cw.add_prompt("during"))
    adding.join(HANG)
    took = time.monotonic() - started
    assert not adding.is_alive(), "a store call hung on the partitioned database"
    error = out.get("error")
    assert isinstance(error, StoreError), repr(error)
    message = str(error)
    assert "did not answer in " in message and "Check that the server is up" in message
    assert f"retry budget {budget:g} s, at least 1 s is waited" in message, message
    assert 1.0 <= _waited(message) <= took, message
    closing, _ = _in_thread(store.close)
    closing.join(HANG)
    assert not closing.is_alive(), "store.close() hung on the partitioned database"
