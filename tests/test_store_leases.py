"""Leases and stop requests, conformance on both stores (SQLite, PostgreSQL).

``renew_replies`` renews exactly the replies whose ticket still owns them and whose lease
has not run out; ``request_stop``
records a stop for the running epoch only (a later claim is not stopped), says False for a
reply that is not running and raises ``ReplyNotFound`` for an unknown one; an owner whose
lease ran out reads as gone even when its process still exists on this host (a stopped
process), by the store's clock; ``on_close`` hooks run once when the store closes;
``lease_ttl`` is validated before anything is opened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import rxcontext
from rxcontext import RecordType, ReplyNotFound, ReplyState
from rxcontext.store import CheckpointDraft, ReplyTicket, Store
from rxcontext.store.owner import _start_time, owner_alive, worker_id
from tests.test_store_replies import ELSEWHERE, P, R, begin


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    target = request.getfixturevalue("pg_url") if request.param == "postgres" else ":memory:"
    s = rxcontext.open(target)
    yield s
    s.close()


def execute(store: Any, sql: str) -> None:
    """Change rows past the store's API (either store): what another worker, or time, did."""
    if isinstance(store, rxcontext.SQLiteStore):
        store._db().execute(sql)
        return
    with store._runner.pool().connection() as conn:
        conn.execute(sql)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this host that owns nothing (its worker id is a live owner's)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield child
    assert child.stdin is not None
    child.stdin.close()
    child.wait(10)


def live_owner(child: subprocess.Popen[bytes]) -> str:
    start = _start_time(child.pid)
    if start is None:
        pytest.skip("needs /proc to name another live process of this host")
    return f"{worker_id().split(':')[0]}:{child.pid}:{start}"


def test_renew_extends_the_leases_the_tickets_still_own(store: Store) -> None:
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    mine = begin(store, ctx.id, "mine", owner=ELSEWHERE)
    taken = begin(store, ctx.id, "taken", owner=ELSEWHERE)
    done = begin(store, ctx.id, "done", owner=ELSEWHERE)
    execute(store, f"UPDATE checkpoints SET epoch = epoch + 1 WHERE id = {taken.checkpoint_id}")
    store.commit_reply(ctx.id, [R("a")], reply=done, end="reply")
    execute(store, "UPDATE checkpoints SET lease_until = NULL")
    # A lease that ran out (or was released) is not renewed: others may have seen the
    # reply interrupted (the heartbeat gives it up instead).
    assert store.renew_replies([mine, taken, done]) == [False, False, False]
    soon = (datetime.now(UTC) + timedelta(seconds=60)).isoformat(timespec="microseconds")
    execute(store, f"UPDATE checkpoints SET lease_until = '{soon}' WHERE id = {mine.checkpoint_id}")
    assert store.renew_replies([mine, taken, done]) == [True, False, False]
    assert store.renew_replies([]) == []
    # Renewed: an owner on another host with a fresh lease is alive.
    cp = store.find_reply("mine")
    assert cp is not None and cp.state is ReplyState.STREAMING
    assert store.find_reply("taken").state is ReplyState.INTERRUPTED  # type: ignore[union-attr]


def test_an_expired_lease_reads_interrupted_even_if_the_process_lives(
    store: Store, sleeper: subprocess.Popen[bytes]
) -> None:
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    ticket = begin(store, ctx.id, "r", owner=live_owner(sleeper))
    assert store.find_reply("r").state is ReplyState.STREAMING  # type: ignore[union-attr]
    assert [cp.reply_id for cp in store.active_replies(ctx.id)] == ["r"]
    execute(store, "UPDATE checkpoints SET lease_until = '2000-01-01T00:00:00+00:00'")
    assert store.find_reply("r").state is ReplyState.INTERRUPTED  # type: ignore[union-attr]
    assert store.active_replies(ctx.id) == []
    assert [cp.reply_id for cp in store.checkpoints(ctx.id)] == ["r"]
    # Taken over: the old owner's renewal, writes and commit change nothing.
    claimed = store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())
    assert claimed.epoch == ticket.epoch + 1
    assert store.renew_replies([ticket]) == [False]
    with pytest.raises(rxcontext.OwnershipLost):
        store.commit_reply(ctx.id, [R("zombie")], reply=ticket, end="reply")
    store.commit_reply(
        ctx.id, [R("new owner")], reply=ReplyTicket(claimed.id, claimed.epoch), end="reply"
    )
    assert [r.content for r in store.records(ctx.id)] == ["q", "new owner"]


def test_this_process_is_judged_by_its_lease_too(store: Store) -> None:
    """A reply of this very process whose lease ran out (its final write failed, so the
    heartbeat let it go) reads INTERRUPTED here as it does in every other process: this
    process can list, keep or resume it instead of being told it is still streaming."""
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    ticket = begin(store, ctx.id, "r", owner=worker_id())
    assert store.find_reply("r").state is ReplyState.STREAMING  # type: ignore[union-attr]
    execute(store, "UPDATE checkpoints SET lease_until = '2000-01-01T00:00:00+00:00'")
    assert store.find_reply("r").state is ReplyState.INTERRUPTED  # type: ignore[union-attr]
    assert store.active_replies(ctx.id) == []
    assert store.busy_reply_ids(ctx.id) == set()
    assert [cp.reply_id for cp in store.checkpoints(ctx.id)] == ["r"]
    claimed = store.claim_checkpoint(ticket.checkpoint_id, owner=worker_id())
    assert claimed.epoch == ticket.epoch + 1


def test_a_stale_ticket_beside_the_current_one_is_not_renewed(store: Store) -> None:
    """Per ticket: the old epoch's ticket of a reply claimed again reads False even when the
    new epoch's ticket is renewed in the same call (the heartbeat must let the old go)."""
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    old = begin(store, ctx.id, "r", owner="w1")
    store.save_checkpoint(old, CheckpointDraft("x"), state=ReplyState.INTERRUPTED)
    claimed = store.claim_checkpoint(old.checkpoint_id, owner="w1")
    new = ReplyTicket(claimed.id, claimed.epoch, "w1")
    assert store.renew_replies([old, new]) == [False, True]
    assert store.renew_replies([new, old]) == [True, False]
    assert store.renew_replies([old]) == [False]


def test_stop_requests_name_the_running_epoch(store: Store) -> None:
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    a = begin(store, ctx.id, "a")
    b = begin(store, ctx.id, "b")
    assert store.stop_requests([a, b]) == []
    assert store.request_stop("a") is True
    assert store.request_stop("a") is True  # asking again is harmless
    assert store.stop_requests([a, b]) == [a.checkpoint_id]
    assert store.stop_requests([ReplyTicket(a.checkpoint_id, a.epoch + 1)]) == []
    assert store.stop_requests([]) == []
    many = [ReplyTicket(10_000 + i, 1) for i in range(1_200)]  # more than one query's worth
    assert store.stop_requests([*many, b, a]) == [a.checkpoint_id]


def test_stopping_what_does_not_run(store: Store) -> None:
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, P("q"))
    with pytest.raises(ReplyNotFound, match="nope"):
        store.request_stop("nope")
    done = begin(store, ctx.id, "done")
    store.commit_reply(ctx.id, [R("a")], reply=done, end="reply")
    assert store.request_stop("done") is False  # completed: its row is gone, records stay
    cut = begin(store, ctx.id, "cut")
    store.save_checkpoint(cut, CheckpointDraft(append_text="x"), state=ReplyState.INTERRUPTED)
    assert store.request_stop("cut") is False
    # A claim (resume) starts a new run: the old request does not stop it.
    claimed = store.claim_checkpoint(cut.checkpoint_id, owner=worker_id())
    again = ReplyTicket(claimed.id, claimed.epoch)
    assert store.stop_requests([again]) == []
    orphan = begin(store, ctx.id, "orphan", owner=ELSEWHERE)
    execute(store, f"UPDATE checkpoints SET lease_until = NULL WHERE id = {orphan.checkpoint_id}")
    assert store.request_stop("orphan") is False  # its owner is gone: nothing runs
    assert store.records(ctx.id)[-1].type is RecordType.MODEL_RESP


def test_close_hooks_run_once_before_the_connections_go(store: Store) -> None:
    seen: list[bool] = []
    store.on_close(lambda: seen.append(store.closed))
    store.close()
    store.close()
    assert seen == [False]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_lease_ttl_must_be_a_positive_number(bad: float, tmp_path: Any) -> None:
    path = tmp_path / "x.db"
    with pytest.raises(ValueError, match="lease_ttl"):
        rxcontext.open(path, lease_ttl=bad)
    with pytest.raises(TypeError, match="lease_ttl"):
        rxcontext.open(path, lease_ttl="5")
    assert not os.path.exists(path)  # refused before anything was opened


def test_lease_ttl_is_checked_on_postgres_too(pg_url: str) -> None:
    with pytest.raises(ValueError, match="lease_ttl"):
        rxcontext.open(pg_url, lease_ttl=0)
    with rxcontext.open(pg_url, lease_ttl=2) as s:
        assert s.lease_ttl == 2.0


def test_an_owner_in_another_pid_namespace_is_judged_by_its_lease() -> None:
    """Two containers of one pod (or a host-network container and its host) share a host
    name but not a process table: an owner of the other namespace must not be looked up in
    this one's (where its pid is another process, or none) and taken for dead while its lease
    runs; its lease alone decides, as for an owner on another host."""
    code = "from rxcontext.store.owner import worker_id; print(worker_id())"
    try:
        made = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here: cannot make a PID namespace")
    if made.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {made.stderr.strip()[:200]}")
    other = made.stdout.strip()
    assert other and other != worker_id()
    now = datetime.now(UTC)
    assert owner_alive(other, now + timedelta(seconds=60), now)  # its lease runs: alive
    assert not owner_alive(other, now - timedelta(seconds=1), now)  # it ran out: gone


def test_an_owner_killed_but_not_yet_reaped_is_gone_at_once() -> None:
    """A supervisor that SIGKILLs a worker and reads the store before wait()ing on it: the
    worker is a zombie, its /proc entry (start time included) still there. It generates
    nothing, so its replies read as interrupted at once, as for any dead process on this
    host, not only once their lease runs out."""
    code = (
        "import sys; from rxcontext.store.owner import worker_id;"
        " print(worker_id(), flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        owner = child.stdout.readline().strip()
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=60)
        assert owner_alive(owner, lease, now)  # running: its lease decides
        child.kill()
        # Not reaped: wait until the kernel has made it a zombie (its state field says Z).
        state = b""
        for _ in range(10_000):
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                stat = f.read()
            state = stat[stat.rfind(b")") + 2 :].split()[0]
            if state in (b"Z", b"X"):
                break
            os.sched_yield()
        assert state in (b"Z", b"X"), state
        assert not owner_alive(owner, lease, now)
    finally:
        child.kill()
        child.wait()
