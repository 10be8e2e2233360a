"""Fault tests against a private PostgreSQL server (tests/pgserver.py), never the shared one.

* The server restarts (``-m fast``; ``-m immediate`` = crash and WAL recovery) while worker
  processes commit replies: every acknowledged reply is stored exactly once, nothing is
  stored that was not acknowledged twice, and positions stay contiguous.
* The server stays down longer than the retry budget: a clear StoreError, nothing half
  written, and the store works again once the server is back.
* 8 processes race to claim one checkpoint (on the shared server: not destructive): one wins.

The default run has a short version of each; ``-m faults`` runs the long ones.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import rxcontext
from rxcontext import RecordType, StoreError
from rxcontext.store import CheckpointDraft, RecordDraft

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")
import pgserver  # noqa: E402

if pgserver.binaries() is None:
    pytest.skip("no PostgreSQL binaries (initdb) installed", allow_module_level=True)

faults = pytest.mark.faults


@pytest.fixture(scope="module")
def server() -> Iterator[pgserver.PrivateServer]:
    with pgserver.PrivateServer() as s:
        yield s


_dbs = iter(range(10**6))


@pytest.fixture
def url(server: pgserver.PrivateServer) -> str:
    if not server.running:
        server.start()
    return server.createdb(f"t{next(_dbs)}")


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


WORKER = """
import sys, rxcontext
from rxcontext import RecordType
from rxcontext.store import RecordDraft
url, name, n, hot = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s = rxcontext.open(url, retry_budget=30)
own = s.get_or_create_context(name)
shared = s.get_or_create_context(hot)
for i in range(n):
    ctx = shared if i % 2 else own
    key = f"{name}-{i}"
    drafts = [RecordDraft(RecordType.MODEL_RESP, key + s) for s in (":a", ":b")]
    s.commit_reply(ctx.id, drafts, commit_id=key)
    print("ack", key, flush=True)
s.close()
print("done", flush=True)
"""


class Worker:
    """A process committing replies; ``acked`` fills as it prints acknowledgements."""

    def __init__(self, url: str, name: str, n: int) -> None:
        self.acked: list[str] = []
        self.lines: list[str] = []
        self.progress = threading.Condition()
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, name, str(n), "hot"],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.progress:
                self.lines.append(line.strip())
                if line.startswith("ack "):
                    self.acked.append(line.split()[1])
                self.progress.notify_all()
        with self.progress:
            self.lines.append("EOF")
            self.progress.notify_all()

    def wait_for(self, acks: int, timeout: float = 60) -> None:
        with self.progress:
            ok = self.progress.wait_for(
                lambda: len(self.acked) >= acks or "EOF" in self.lines, timeout
            )
        assert ok and len(self.acked) >= acks, self.lines[-3:]

    def finish(self) -> tuple[int, str]:
        self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        self.stderr.seek(0)
        err = self.stderr.read()
        self.stderr.close()
        return self.proc.returncode, err


def restart_while_committing(
    server: pgserver.PrivateServer,
    url: str,
    mode: pgserver.StopMode,
    workers: int,
    n: int,
    restarts: int,
) -> None:
    procs = [Worker(url, f"w{k}", n) for k in range(workers)]
    for r in range(restarts):
        for p in procs:  # restart in the middle of everyone's run
            p.wait_for((r + 1) * n // (restarts + 1))
        server.restart(mode)
    results = [p.finish() for p in procs]
    assert [rc for rc, _ in results] == [0] * workers, [err[-800:] for _, err in results]

    acked = sorted(key for p in procs for key in p.acked)
    assert len(acked) == workers * n
    rows = query(url, "SELECT content, context_id, pos FROM records ORDER BY context_id, pos")
    contents = sorted(r[0] for r in rows)
    # Every acknowledged reply stored exactly once (both records), nothing else.
    assert contents == sorted(k + s for k in acked for s in (":a", ":b"))
    assert sorted(r[0] for r in query(url, "SELECT commit_id FROM commits")) == acked
    by_context: dict[str, list[int]] = {}
    for _, ctx, pos in rows:
        by_context.setdefault(ctx, []).append(pos)
    for positions in by_context.values():
        assert positions == list(range(len(positions)))  # contiguous, no gap, no duplicate
    next_pos = dict(query(url, "SELECT id, next_pos FROM contexts"))
    assert all(next_pos[c] == len(p) for c, p in by_context.items())


def test_a_fast_restart_loses_and_duplicates_no_acknowledged_reply(server, url):
    restart_while_committing(server, url, "fast", workers=2, n=30, restarts=1)


@faults
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restarts_under_load_lose_and_duplicate_nothing(server, url, mode):
    restart_while_committing(server, url, mode, workers=4, n=150, restarts=3)


def test_immediate_restart_short(server, url):
    restart_while_committing(server, url, "immediate", workers=2, n=20, restarts=1)


def test_a_server_down_past_the_retry_budget_gives_a_clear_error_and_writes_nothing(
    server: pgserver.PrivateServer, url: str
):
    store = rxcontext.open(url, retry_budget=1.0)
    ctx = store.get_or_create_context("c")
    store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "q"))
    cp = store.save_checkpoint(ctx.id, CheckpointDraft("partial"))
    server.stop("fast")
    try:
        with pytest.raises(StoreError) as info:
            store.commit_reply(
                ctx.id,
                [RecordDraft(RecordType.MODEL_RESP, "lost?")],
                drop_checkpoint=cp.id,
                commit_id="r1",
            )
        message = str(info.value)
        assert "did not answer within the retry budget of 1 s" in message
        assert "nothing was written" in message and "Check that the server is up" in message
    finally:
        server.start()
    assert query(url, "SELECT content FROM records") == [("q",)]
    assert query(url, "SELECT COUNT(*) FROM commits") == [(0,)]
    assert query(url, "SELECT text FROM checkpoints") == [("partial",)]
    # The same store works again once the server is back, and the reply can be retried.
    store.close()
    store = rxcontext.open(url, retry_budget=10.0)
    out = store.commit_reply(
        ctx.id,
        [RecordDraft(RecordType.MODEL_RESP, "stored")],
        drop_checkpoint=cp.id,
        commit_id="r1",
    )
    assert [r.content for r in store.records(ctx.id)] == ["q", "stored"] == ["q", out[0].content]
    store.close()


@faults
def test_the_store_recovers_by_itself_after_an_outage(server: pgserver.PrivateServer, url: str):
    store = rxcontext.open(url, retry_budget=1.0)
    ctx = store.get_or_create_context("c")
    server.stop("fast")
    with pytest.raises(StoreError):
        store.records(ctx.id)
    server.start()
    store._runner.retry_budget = 15.0  # the pool reconnects in the background, with backoff
    store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "after"))
    assert [r.content for r in store.records(ctx.id)] == ["after"]
    store.close()


CLAIMER = """
import sys, rxcontext
s = rxcontext.open(sys.argv[1])
sys.stdin.readline()  # released together
print(s.claim_checkpoint(int(sys.argv[2])), flush=True)
sys.stdin.readline()  # stay alive until all have answered: a dead claimer's claim is free
s.close()
"""


def _claim_race(url: str, processes: int) -> list[str]:
    store = rxcontext.open(url)
    ctx = store.get_or_create_context("race")
    cp = store.save_checkpoint(ctx.id, CheckpointDraft("partial"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, str(cp.id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    # Every process has opened its store once it reads stdin; a line releases them all.
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    answers = []
    for p in procs:
        assert p.stdout is not None
        answers.append(p.stdout.readline().strip())
    outs = [p.communicate("exit\n", timeout=120) for p in procs]
    store.close()
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    return answers


def test_eight_processes_racing_to_claim_one_checkpoint_give_one_winner(pg_url: str):
    assert sorted(_claim_race(pg_url, 8)) == ["False"] * 7 + ["True"]


@faults
def test_claim_races_repeated(pg_url: str):
    for _ in range(10):
        store = rxcontext.open(pg_url)
        for ctx in store.list_contexts():
            store.delete_context(ctx.id)
        store.close()
        assert sorted(_claim_race(pg_url, 8)) == ["False"] * 7 + ["True"]
