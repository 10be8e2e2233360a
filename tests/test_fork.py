"""A worker forked from a process that opened the store (gunicorn ``--preload``,
multiprocessing's ``fork`` start method) serves replies as a fresh process does.

The child gets threads of its own (heartbeat, periodic checkpoints, the fan-out's writer),
connections of its own (SQLite, PostgreSQL, Redis), and nothing it does breaks the parent's:
the parent streams and publishes on after the child closed its copies. Each case forks
twice over: after the parent served a reply (its threads run), and right after open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redistest
from reactivex import operators as ops
from watching import WAIT, until

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.fanout.entries import Chunks, End
from rxcontext.fanout.redis import RedisFanout, _entry_at
from rxcontext.heartbeat import heartbeat_for
from rxcontext.providers import ScriptedModel


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


def _reply(*words: str) -> list[Chunk]:
    return [*(Chunk(ChunkKind.TEXT, w) for w in words), Chunk(ChunkKind.DONE, finish_reason="stop")]


def _in_child(
    job: Callable[[], dict[str, Any]], meanwhile: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Run ``job`` in a forked child, ``meanwhile`` in the parent; what the job returned (or
    the error it raised), read back through a pipe within ``2 * WAIT`` seconds (a child
    that hangs is killed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            os.close(r)
            try:
                out = job()
            except BaseException as exc:
                out = {"error": f"{type(exc).__name__}: {exc} (cause {exc.__cause__!r})"}
            os.write(w, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    try:
        meanwhile()
        while True:
            ready, _, _ = select.select([r], [], [], 2 * WAIT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked child gave no answer within {2 * WAIT:g} s")
            piece = os.read(r, 65536)
            if not piece:
                break
            data += piece
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return dict(json.loads(data))


def _serve_in_child(store: Any, fanout: RedisFanout, context: str, rid: str) -> dict[str, Any]:
    """The child's job: stream a reply that holds at its first chunk until the heartbeat
    renewed its lease, then close the store and the fan-out (sending what is queued)."""
    heartbeat = heartbeat_for(store)
    base = heartbeat.renewals
    renewed = threading.Event()
    heartbeat.listeners.append(lambda: heartbeat.renewals > base and renewed.set())
    seen: dict[str, Any] = {}

    def first(_: Chunk) -> None:
        if not seen:
            seen["renewed"] = renewed.wait(WAIT)
            # Stop hints reach the child on its own channel (its worker id is its own).
            seen["listening"] = all(x.subscribed.wait(WAIT) for x in fanout.stop_listeners)
            seen["threads"] = sorted({t.name for t in threading.enumerate()})

    cw = ContextWindow(store, ScriptedModel([_reply("child ", "words")]), context, retry=None)
    cw.add_prompt("in the child")
    texts: list[str] = []
    cw.stream(reply_id=rid).pipe(ops.do_action(first)).subscribe(
        on_next=lambda c: texts.append(c.text), on_error=lambda e: seen.setdefault("err", e)
    )
    store.close()
    fanout.close()
    error = seen.pop("err", None)
    if error is not None:
        raise error
    return {**seen, "text": "".join(texts)}


def _logged(fanout: RedisFanout, url: str, rid: str) -> tuple[str, str | None]:
    """The text of reply ``rid``'s chunks in its Redis log, and how its log ended."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        rows = client.xrange(fanout.key(rid))
    finally:
        client.close()
    text, ended = "", None
    for raw_id, fields in rows:
        _, entry = _entry_at(raw_id, fields)
        if isinstance(entry, Chunks):
            text += "".join(c.text for c in entry.chunks)
        elif isinstance(entry, End):
            ended = entry.state
    return text, ended


@pytest.mark.parametrize("warm", [True, False], ids=["after-a-reply", "right-after-open"])
def test_forked_worker_serves_replies(
    target: str, redis_prefix: tuple[str, str], warm: bool
) -> None:
    url, prefix = redis_prefix
    fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(target, fanout=fanout, lease_ttl=3.0)
    try:
        cw = ContextWindow(store, ScriptedModel([_reply("warm")] * 3), "parent", retry=None)
        if warm:
            cw.add_prompt("before the fork")
            assert cw.call().text == "warm"
        child = _in_child(lambda: _serve_in_child(store, fanout, "child", "child-reply"))
        assert "error" not in child, child["error"]
        assert child["text"] == "child words"
        assert child["renewed"], "the child's heartbeat never renewed its lease"
        assert child["listening"], "the child never listened for stop hints"
        for name in ("rxcontext-heartbeat", "rxcontext-checkpoints", "rxcontext-fanout"):
            assert name in child["threads"], (name, child["threads"])
        # The child's reply is stored, and was published live through Redis.
        found = store.reply_records("child-reply")
        assert "".join(r.content for r in found) == "child words"
        assert _logged(fanout, url, "child-reply") == ("child words", "completed")
        # The parent goes on with its own connections and threads.
        cw.add_prompt("after the fork")
        rid = "parent-after"
        assert cw.call(reply_id=rid).text == "warm"
        # The writer sends every 20 ms: the log's end may come a batch after its chunk.
        assert until(lambda: _logged(fanout, url, rid)[1] is not None), "the log never ended"
        assert _logged(fanout, url, rid) == ("warm", "completed")
    finally:
        store.close()
        fanout.close()


def test_forked_child_never_closes_the_parents_postgres_connections(pg_url: str) -> None:
    """The child closing its store leaves the parent's sessions open: the parent's pooled
    connection is the same backend before and after."""
    store = rxcontext.open(pg_url, pool_size=1)
    try:
        pid_of: Callable[[], int] = lambda: int(  # noqa: E731
            store._runner.run(lambda conn, _: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        )
        before = pid_of()

        def child() -> dict[str, Any]:
            mine = pid_of()
            store.close()
            return {"backend": mine}

        out = _in_child(child)
        assert "error" not in out, out["error"]
        assert out["backend"] != before  # a connection of the child's own
        assert pid_of() == before
    finally:
        with contextlib.suppress(Exception):
            store.close()


def test_a_forked_childs_sqlite_writes_survive_the_parent_closing(tmp_path: Any) -> None:
    """The parent's connections are closed in the child (idle at the fork): kept open, they
    would share SQLite's per-process lock records with the child's own connection, which
    then held no lock of its own on the file: the parent's close took the database for its
    last connection, checkpointed and deleted the WAL under the child, and the child's next
    write was lost."""
    path = str(tmp_path / "fork.db")
    store = rxcontext.open(path)
    cw = ContextWindow(store, ScriptedModel([_reply("warm")]), "both", retry=None)
    cw.add_prompt("parent before the fork")
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child() -> dict[str, Any]:
        os.close(ready_r)
        os.close(go_w)
        mine = ContextWindow(store, ScriptedModel([]), "both", retry=None)
        mine.add_prompt("child, before the parent closes")
        os.write(ready_w, b"1")
        select.select([go_r], [], [], WAIT)  # the parent has closed its store
        assert os.read(go_r, 1) == b"1"
        mine.add_prompt("child, after the parent closed")
        store.close()
        return {}

    def parent() -> None:
        os.close(ready_w)
        os.close(go_r)
        ready, _, _ = select.select([ready_r], [], [], 2 * WAIT)
        assert ready and os.read(ready_r, 1) == b"1", "the child never wrote"
        store.close()
        os.write(go_w, b"1")

    try:
        assert _in_child(child, parent) == {}
    finally:
        for fd in (ready_r, go_w):
            os.close(fd)
        store.close()
    again = rxcontext.open(path)
    try:
        records = ContextWindow(again, ScriptedModel([]), "both").live_records()
        prompts = [r.content for r in records]
        assert prompts == [
            "parent before the fork",
            "child, before the parent closes",
            "child, after the parent closed",
        ]
        assert again._db().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        again.close()


@contextlib.contextmanager
def _held_by_a_parent_thread(hold: Callable[[], Any]) -> Iterator[None]:
    """``hold()`` (a context manager) entered by another thread of this process, held for
    the block: the fork inside it lands while that thread is in the store (not inside a
    SQLite call: waiting on an event, which SQLite's own mutexes do not see)."""
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with hold():
            inside.set()
            release.wait(2 * WAIT)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(WAIT)
        yield
    finally:
        release.set()
        thread.join()


@pytest.mark.parametrize("use", ["read", "transaction"])
def test_a_child_forked_while_the_parent_uses_sqlite_refuses_the_store(
    tmp_path: Any, use: str
) -> None:
    """A connection in use at the fork (its lock held by a parent's thread, or a transaction
    open) cannot be closed in the child, and kept open beside a connection of the child's it
    would lose the child's writes (a read) or lock them out for good (a transaction). The
    child's store refuses every call at once with a StoreError that says what to do, and so
    do a store of the same file opened anew in the child and a second store of the file
    the parent opened (idle at the fork: its own connection would share that lock record
    too); the parent's writes are whole."""
    path = str(tmp_path / "fork.db")
    store = rxcontext.open(path, busy_timeout=0.5)
    second = rxcontext.open(path, busy_timeout=0.5)
    cw = ContextWindow(store, ScriptedModel([]), "both", retry=None)
    cw.add_prompt("parent before the fork")
    hold = store._read if use == "read" else store._tx

    def child() -> dict[str, Any]:
        errors = []
        for attempt in (
            lambda: ContextWindow(store, ScriptedModel([]), "both", retry=None),
            lambda: cw.add_prompt("child"),
            lambda: store.list_contexts(),
            lambda: rxcontext.open(path),  # shares the kept connection's lock record: lost too
            lambda: second.list_contexts(),  # so would the second store's own connection
            lambda: ContextWindow(second, ScriptedModel([]), "both").add_prompt("child"),
        ):
            try:
                attempt()
            except rxcontext.StoreError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        store.close()  # closing is allowed (the parent's connection is kept, unused)
        second.close()
        return {"errors": errors, "closed": store.closed and second.closed}

    try:
        with _held_by_a_parent_thread(hold):
            out = _in_child(child)
        assert "error" not in out, out["error"]
        assert len(out["errors"]) == 6, out
        for message in out["errors"]:
            assert message.startswith("StoreError: "), message
            assert "forked" in message and "rxcontext.open()" in message, message
        assert out["closed"]
        cw.add_prompt("parent after the fork")
    finally:
        store.close()
        second.close()
    again = rxcontext.open(path)
    try:
        records = ContextWindow(again, ScriptedModel([]), "both").live_records()
        assert [r.content for r in records] == ["parent before the fork", "parent after the fork"]
        assert again._db().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        again.close()


@pytest.mark.parametrize("held", ["cache", "window"])
def test_a_child_forked_while_a_parent_thread_holds_a_history_streams(
    tmp_path: Any, held: str
) -> None:
    """A parent's reply reads its history under the window's locks (across a store call);
    the child, forked meanwhile, streams on the same window with locks of its own and the
    history read anew, instead of waiting forever for a holder it does not have."""
    store = rxcontext.open(str(tmp_path / "fork.db"))
    cw = ContextWindow(store, ScriptedModel([_reply("warm"), _reply("child")]), "both", retry=None)
    try:
        cw.add_prompt("before the fork")
        assert cw.call().text == "warm"
        cache = cw._history(cw.context_id)
        lock = cache._lock if held == "cache" else cw._histories_lock

        def child() -> dict[str, Any]:
            cw.add_prompt("in the child")
            reply = cw.call()
            prompts = [r.content for r in cw.live_records() if r.reply_id is None]
            store.close()
            return {"text": reply.text, "prompts": prompts}

        with _held_by_a_parent_thread(lambda: lock):
            out = _in_child(child)
        assert "error" not in out, out["error"]
        assert out == {"text": "child", "prompts": ["before the fork", "in the child"]}
    finally:
        store.close()


def test_a_grandchild_forked_before_the_child_used_sqlite_resets_quietly(tmp_path: Any) -> None:
    """A child that forks before it used the store (a pool inside a worker) holds the
    parent's closed connection: the grandchild's reset skips it, logging nothing, and the
    grandchild's store works."""
    import logging

    store = rxcontext.open(str(tmp_path / "fork.db"))
    ContextWindow(store, ScriptedModel([]), "both", retry=None).add_prompt("parent")
    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    def grandchild() -> dict[str, Any]:
        ContextWindow(store, ScriptedModel([]), "both", retry=None).add_prompt("grandchild")
        store.close()
        return {"logged": logged}

    def child() -> dict[str, Any]:
        logging.getLogger("rxcontext").addHandler(Keep())
        return _in_child(grandchild)

    try:
        out = _in_child(child)
        assert out == {"logged": []}
        records = ContextWindow(store, ScriptedModel([]), "both").live_records()
        assert [r.content for r in records] == ["parent", "grandchild"]
    finally:
        store.close()


# A worker forked (multiprocessing's ``fork`` method) while an asyncio reply streams, the
# consumer holding its first chunk: the main thread's loop has taken SIGTERM over
# (rxcontext._loopterm). The worker does plain work, told to stop by SIGTERM.
FORKED_WHILE_STREAMING = textwrap.dedent(
    """
    import asyncio, multiprocessing, signal, sys, threading
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    BOUND = float(sys.argv[2])

    def work(ready):
        ready.set()
        threading.Event().wait(4 * BOUND)  # plain work, until SIGTERM ends it

    async def main():
        store = rxcontext.open(sys.argv[1])
        words = [Chunk(ChunkKind.TEXT, "a "), Chunk(ChunkKind.TEXT, "b")]
        model = ScriptedModel([[*words, Chunk(ChunkKind.DONE, finish_reason="stop")]])
        cw = ContextWindow(store, model, "c", retry=None)
        cw.add_prompt("hi")
        replies = cw.astream()
        first = await replies.__anext__()
        forking = multiprocessing.get_context("fork")
        ready = forking.Event()
        worker = forking.Process(target=work, args=(ready,))
        worker.start()
        assert ready.wait(BOUND), "the worker never started"
        worker.terminate()
        worker.join(BOUND)
        print("worker", worker.exitcode, flush=True)
        if worker.exitcode is None:
            worker.kill()
            worker.join()
        rest = [c async for c in replies]
        print("reply", first.text + "".join(c.text for c in rest), flush=True)
        store.close()

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
def test_a_worker_forked_while_an_asyncio_reply_streams_dies_by_sigterm(tmp_path: Any) -> None:
    """The parent's loop took SIGTERM over for its reply; a worker forked meanwhile has the
    handler but not the loop (it never runs there): SIGTERM was handed to that loop and
    waited for, and the worker lived on. The child's SIGTERM is back at its default, as
    before the parent's loop took it: the worker dies by it, the parent's reply goes on."""
    child = subprocess.Popen(
        [sys.executable, "-c", FORKED_WHILE_STREAMING, str(tmp_path / "t.db"), str(WAIT / 3)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=2 * WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.splitlines() == [f"worker {-signal.SIGTERM}", "reply a b"], (out, err)


@pytest.mark.parametrize("held", ["heartbeat", "checkpointer", "dropped", "fanout"])
def test_a_child_forked_while_a_parent_thread_holds_a_module_lock_serves(
    tmp_path: Any, held: str
) -> None:
    """A lock of this process's registries (each store's heartbeat and checkpointer, the
    dropped asyncio replies, the fan-outs' users), held by a parent's thread at the fork,
    is made anew in the child: its replies (a dropped asyncio one among them) and its close
    go on, instead of waiting forever for a holder the child does not have."""
    from rxcontext import _dropped, checkpointer, fanout, heartbeat

    lock = {
        "heartbeat": heartbeat._registry_lock,
        "checkpointer": checkpointer._registry_lock,
        "dropped": _dropped._lock,
        "fanout": fanout._users_lock,
    }[held]
    store = rxcontext.open(str(tmp_path / "fork.db"), fanout="memory")
    replies = [_reply("warm"), _reply("child"), _reply("dropped ", "early"), _reply("after")]
    cw = ContextWindow(store, ScriptedModel(replies), "both", retry=None)
    try:
        cw.add_prompt("before the fork")
        assert cw.call().text == "warm"

        async def drop_one() -> str:
            cw.add_prompt("to be dropped")
            async for _ in cw.astream():
                break  # dropped unclosed: noted in rxcontext._dropped
            cw.add_prompt("after the drop")
            return (await cw.acall()).text

        def child() -> dict[str, Any]:
            cw.add_prompt("in the child")
            texts = [cw.call().text, asyncio.run(drop_one())]
            store.close()
            return {"texts": texts, "closed": store.closed}

        with _held_by_a_parent_thread(lambda: lock):
            out = _in_child(child)
        assert "error" not in out, out["error"]
        assert out == {"texts": ["child", "after"], "closed": True}
    finally:
        store.close()
