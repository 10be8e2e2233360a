"""Fault tests against a private PostgreSQL server (tests/pgserver.py), never the shared one.

* The server restarts (``-m fast``; ``-m immediate`` = crash and WAL recovery) while worker
  processes stream replies (with periodic checkpoints every few chunks) and commit them:
  every acknowledged reply is stored exactly once, in its own place; positions stay
  contiguous; no reply is left streaming (or orphaned) once its process is gone.
* The server stays down longer than the retry budget while a reply streams: the subscriber
  gets a clear StoreError, nothing of the reply is stored, and the store works again once
  the server is back.
* 8 processes race to resume one checkpoint with ``ContextWindow.resume_call`` (on the shared
  server: not destructive): exactly one resumes it, the others are told why not.

The default run has a short version of each (the restart: ``-m immediate``); ``-m faults``
runs the long ones.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, StoreError
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

pytestmark = pytest.mark.slow  # seconds of real deadlines and faults: a step of its own (setup.cfg)

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


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]


WORDS = 12
REPLY = "".join(f"w{i} " for i in range(WORDS))

WORKER = f"""
import sys, rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = rxcontext.open(url, retry_budget=30)
words = [Chunk(ChunkKind.TEXT, f"w{{i}} ") for i in range({WORDS})]
model = ScriptedModel([[*words, Chunk(ChunkKind.DONE, finish_reason="stop")]],
                      delay=0.005, repeat_last=True)
# Periodic checkpoints every few chunks: they run into the restart too.
own = ContextWindow(store, model, name, checkpoint_every=0.02)
shared = ContextWindow(store, model, "hot", checkpoint_every=0.02)
for i in range(n):
    cw = shared if i % 2 else own
    key = f"{{name}}-{{i}}"
    cw.add_prompt(key)
    cw.call(reply_id=key)
    print("ack", key, flush=True)
store.close()
print("done", flush=True)
"""


class Worker:
    """A process streaming and committing replies; ``acked`` fills as it acknowledges them."""

    def __init__(self, url: str, name: str, n: int) -> None:
        self.acked: list[str] = []
        self.lines: list[str] = []
        self.progress = threading.Condition()
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, name, str(n)],
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

    def wait_for(self, acks: int, timeout: float = 120) -> None:
        with self.progress:
            ok = self.progress.wait_for(
                lambda: len(self.acked) >= acks or "EOF" in self.lines, timeout
            )
        assert ok and len(self.acked) >= acks, self.lines[-3:]

    def finish(self) -> tuple[int, str]:
        self.proc.wait(timeout=180)
        self.reader.join(timeout=10)
        self.stderr.seek(0)
        err = self.stderr.read()
        self.stderr.close()
        return self.proc.returncode, err


def check_everything_stored_once(url: str, acked: list[str]) -> None:
    """Every acknowledged reply stored once in its place; contiguous positions; no reply
    left streaming."""
    rows = query(
        url,
        "SELECT c.name, r.pos, r.source, r.content, r.reply_id, c.next_pos"
        " FROM records r JOIN contexts c ON c.id = r.context_id ORDER BY c.name, r.pos, r.id",
    )
    replies = sorted(r[4] for r in rows if r[2] == int(RecordType.MODEL_RESP))
    assert replies == sorted(acked)  # each exactly once, and nothing unacknowledged
    assert all(r[3] == REPLY for r in rows if r[2] == int(RecordType.MODEL_RESP))
    assert sorted(r[3] for r in rows if r[2] == int(RecordType.PROMPT)) == sorted(acked)
    by_context: dict[str, dict[int, set[Any]]] = defaultdict(lambda: defaultdict(set))
    next_pos: dict[str, int] = {}
    for name, pos, source, content, reply_id, nxt in rows:
        by_context[name][pos].add((source, reply_id or content))
        next_pos[name] = nxt
    for name, places in by_context.items():
        assert sorted(places) == list(range(next_pos[name])), name  # no gap, no extra
        assert all(len(unit) == 1 for unit in places.values()), name  # one thing per place
        asked = {key: pos for pos, unit in places.items() for source, key in unit if source == 0}
        for pos, unit in places.items():  # every reply placed after its prompt
            for source, key in unit:
                assert source == 0 or asked[key] < pos, (name, key)
    # Completed without a cut: no lifecycle row left, none streaming with a dead owner.
    assert query(url, "SELECT reply_id, state FROM checkpoints") == []
    assert query(url, "SELECT COUNT(*) FROM checkpoint_parts") == [(0,)]


def restart_while_streaming(
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
    acked = [key for p in procs for key in p.acked]
    assert len(acked) == workers * n
    check_everything_stored_once(url, acked)


@faults  # the default run has the immediate (crash) one; -m faults runs both, longer
def test_a_fast_restart_while_processes_stream_loses_and_duplicates_nothing(server, url):
    restart_while_streaming(server, url, "fast", workers=2, n=16, restarts=1)


def test_an_immediate_restart_while_processes_stream_loses_and_duplicates_nothing(server, url):
    restart_while_streaming(server, url, "immediate", workers=2, n=16, restarts=1)


@faults
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restarts_under_load_lose_and_duplicate_nothing(server, url, mode):
    restart_while_streaming(server, url, mode, workers=4, n=80, restarts=3)


def test_a_server_down_past_the_retry_budget_gives_the_subscriber_a_clear_store_error(
    server: pgserver.PrivateServer, url: str
):
    store = rxcontext.open(url, retry_budget=1.0)
    words = [Chunk(ChunkKind.TEXT, f"w{i} ") for i in range(6)]
    model = ScriptedModel([[*words, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(store, model, "c", checkpoint_every=None, retry=None)
    cw.add_prompt("q")

    def stop_the_server(chunk: Chunk) -> None:
        if chunk.text == "w2 ":
            server.stop("fast")

    got: list[Chunk] = []
    errors: list[Exception] = []
    try:
        cw.stream(rxops.middleware(on_chunk=stop_the_server)).subscribe(got.append, errors.append)
    finally:
        server.start()
    assert "".join(c.text for c in got) == REPLY[: len("w0 w1 w2 w3 w4 w5 ")]
    (error,) = errors
    assert isinstance(error, StoreError)
    message = str(error)
    assert "did not answer in " in message and "(retry budget 1 s; " in message
    assert "nothing was written" in message and "Check that the server is up" in message
    # Nothing of the reply was stored: the prompt only, no commit.
    assert query(url, "SELECT source, content FROM records") == [(0, "q")]
    assert query(url, "SELECT COUNT(*) FROM commits") == [(0,)]
    store.close()
    # Once the server is back the store works again.
    store = rxcontext.open(url, retry_budget=10.0)
    cw = ContextWindow(store, ScriptedModel([[*words]]), "c")
    assert cw.call().text == "w0 w1 w2 w3 w4 w5 "
    assert [r.content for r in cw.records()][-1] == "w0 w1 w2 w3 w4 w5 "
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
    cw = ContextWindow(store, ScriptedModel([[Chunk(ChunkKind.TEXT, "after")]]), "c")
    cw.add_prompt("q")
    assert cw.call().text == "after"
    store.close()


RESUMER = """
import sys, rxcontext
from rxcontext import Chunk, ChunkKind, CheckpointResolved, ContextWindow, ReplyBusy
from rxcontext.providers import ScriptedModel
store = rxcontext.open(sys.argv[1])
model = ScriptedModel([[Chunk(ChunkKind.TEXT, " and the rest"),
                        Chunk(ChunkKind.DONE, finish_reason="stop")]])
cw = ContextWindow(store, model, "race")
sys.stdin.readline()  # released together
try:
    reply = cw.resume_call(int(sys.argv[2]))
except ReplyBusy:
    print("busy", flush=True)
except CheckpointResolved:
    print("resolved", flush=True)
else:
    print("won", reply.text, flush=True)
sys.stdin.readline()  # stay alive until all have answered: a dead resumer's claim is free
store.close()
"""


def _resume_race(url: str, processes: int) -> list[str]:
    store = rxcontext.open(url)
    cw = ContextWindow(
        store,
        ScriptedModel([[Chunk(ChunkKind.TEXT, "partial"), ConnectionError("cut")]]),
        "race",
        retry=None,
    )
    cw.add_prompt("q")
    with pytest.raises(rxcontext.StreamInterrupted) as cut:
        cw.call()
    cp = cut.value.checkpoint
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESUMER, url, str(cp.id)],
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
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    # The winner's reply is stored once, in the reply's own place.
    replies = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert [(r.content, r.reply_id) for r in replies] == [("partial and the rest", cp.reply_id)]
    assert replies[0].pos == cp.pos and cw.checkpoints() == []
    store.close()
    return answers


def test_eight_processes_racing_to_resume_one_checkpoint_give_one_winner(pg_url: str):
    answers = _resume_race(pg_url, 8)
    assert sorted(answers).count("won partial and the rest") == 1
    assert all(a in ("busy", "resolved") for a in answers if not a.startswith("won"))


@faults
def test_resume_races_repeated(pg_url: str):
    for _ in range(10):
        store = rxcontext.open(pg_url)
        for ctx in store.list_contexts():
            store.delete_context(ctx.id)
        store.close()
        answers = _resume_race(pg_url, 8)
        assert sorted(answers).count("won partial and the rest") == 1
