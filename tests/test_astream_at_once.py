"""``astream`` on SQLite opens its reply and reads its history on the event loop's thread
when the store can do that at once, and in a worker thread otherwise.

At once means: nothing else holds the store, no lock (of another connection or process) to
wait for, nothing synced to disk, a short history without attachments. The executor is
counted (a ``ThreadPoolExecutor`` of the loop's that counts what it is given), and the
store's own rows and the model's requests say that the reply is the same either way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import linecache
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
from rxcontext.history import INTERRUPTED_TOOL_OUTPUT
from rxcontext.providers import ScriptedModel
from rxcontext.store.sqlite import AT_ONCE_RECORDS, AT_ONCE_TOKENS

REPLY = [Chunk(ChunkKind.TEXT, "one "), Chunk(ChunkKind.TEXT, "two"), Chunk(ChunkKind.DONE)]


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting the jobs it is given; ``on_submit`` is called
    with each, on the loop's thread, before it runs."""

    def __init__(self, on_submit: Callable[[], None] | None = None) -> None:
        super().__init__(max_workers=2)
        self.jobs = 0
        self.on_submit = on_submit

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        self.jobs += 1
        if self.on_submit is not None:
            self.on_submit()
        return super().submit(fn, *args, **kwargs)


def first_chunk(cw: ContextWindow, executor: CountingExecutor) -> tuple[int, list[str]]:
    """Jobs the executor was given before the first chunk, and the reply's texts."""

    async def main() -> tuple[int, list[str]]:
        asyncio.get_running_loop().set_default_executor(executor)
        texts: list[str] = []
        jobs = -1
        async for chunk in cw.astream():
            if jobs < 0:
                jobs = executor.jobs
            if chunk.kind is ChunkKind.TEXT:
                texts.append(chunk.text)
        return jobs, texts

    return asyncio.run(main())


def test_a_free_store_opens_the_reply_on_the_loop(tmp_path: Path) -> None:
    with rxcontext.open(tmp_path / "once.db") as store:
        model = ScriptedModel([REPLY])
        cw = ContextWindow(store, model, "once")
        cw.add_prompt("hi")
        jobs, texts = first_chunk(cw, CountingExecutor())
        assert jobs == 0  # no trip to a worker thread before the first chunk
        assert texts == ["one ", "two"]
        assert [r.content for r in model.requests[0].records] == ["hi"]
        records = cw.live_records()
        assert [(r.type, r.content) for r in records] == [
            (RecordType.PROMPT, "hi"),
            (RecordType.MODEL_RESP, "one two"),
        ]
        assert cw.active_replies() == [] and cw.checkpoints() == []


def test_a_write_lock_held_elsewhere_is_waited_for_in_a_worker_thread(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    with rxcontext.open(path) as store:
        model = ScriptedModel([REPLY])
        cw = ContextWindow(store, model, "locked")
        cw.add_prompt("hi")
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
        ticks = 0
        submitted = threading.Event()

        async def main() -> tuple[int, list[str]]:
            nonlocal ticks
            loop = asyncio.get_running_loop()
            executor = CountingExecutor(submitted.set)
            loop.set_default_executor(executor)

            async def release() -> None:
                nonlocal ticks
                while not submitted.is_set():  # the loop runs while the begin waits
                    ticks += 1
                    await asyncio.sleep(0)
                ticks += 1
                await asyncio.sleep(0)  # one more turn of the loop with the lock still held
                other.execute("ROLLBACK")

            releaser = asyncio.ensure_future(release())
            texts = [c.text async for c in cw.astream() if c.kind is ChunkKind.TEXT]
            await releaser
            return executor.jobs, texts

        jobs, texts = asyncio.run(main())
        other.close()
        assert jobs >= 1 and ticks >= 1
        assert texts == ["one ", "two"]
        assert [r.content for r in cw.live_records()] == ["hi", "one two"]


def test_a_long_history_is_read_in_a_worker_thread(tmp_path: Path) -> None:
    with rxcontext.open(tmp_path / "long.db") as store:
        model = ScriptedModel([REPLY])
        cw = ContextWindow(store, model, "long")
        prompts = [f"p{i}" for i in range(AT_ONCE_RECORDS + 1)]
        for text in prompts:
            cw.add_prompt(text)
        jobs, texts = first_chunk(cw, CountingExecutor())
        assert jobs == 1  # the begin on the loop, the history in the worker thread
        assert texts == ["one ", "two"]
        assert [r.content for r in model.requests[0].records] == prompts
        assert [r.content for r in cw.live_records()] == [*prompts, "one two"]


def test_a_few_long_records_are_read_in_a_worker_thread(tmp_path: Path) -> None:
    # Few records, but megabytes of them: reading them on the loop would stall it.
    with rxcontext.open(tmp_path / "big.db") as store:
        model = ScriptedModel([REPLY])
        cw = ContextWindow(store, model, "big")
        prompts = ["é" * (AT_ONCE_TOKENS * 4), "and?"]
        for text in prompts:
            cw.add_prompt(text)
        jobs, texts = first_chunk(cw, CountingExecutor())
        assert jobs == 1  # the begin on the loop, the history in the worker thread
        assert texts == ["one ", "two"]
        assert [r.content for r in model.requests[0].records] == prompts


def test_a_short_history_after_it_is_read_on_the_loop(tmp_path: Path) -> None:
    with rxcontext.open(tmp_path / "short.db") as store:
        model = ScriptedModel([REPLY], repeat_last=True)
        cw = ContextWindow(store, model, "short")
        prompts = [f"p{i}" for i in range(AT_ONCE_RECORDS + 1)]
        for text in prompts:
            cw.add_prompt(text)
        first_chunk(cw, CountingExecutor())
        cw.add_prompt("again")
        # The window's history is read: only what changed since comes now.
        jobs, _ = first_chunk(cw, CountingExecutor())
        assert jobs == 0
        assert [r.content for r in model.requests[1].records] == [*prompts, "one two", "again"]


def test_attachments_are_read_in_a_worker_thread(tmp_path: Path) -> None:
    with rxcontext.open(tmp_path / "blobs.db") as store:
        model = ScriptedModel([REPLY])
        cw = ContextWindow(store, model, "blobs")
        png = b"\x89PNG\r\n\x1a\n" + bytes(64)
        picture = rxcontext.Attachment(data=png, media_type="image/png")
        cw.add_prompt("look", [picture])
        jobs, _ = first_chunk(cw, CountingExecutor())
        assert jobs == 1
        (sent,) = model.requests[0].records
        assert sent.attachments == (picture,)


def test_an_unanswered_tool_call_is_answered_in_a_worker_thread(tmp_path: Path) -> None:
    # The request answers it with a durable write (synced to disk): never on the loop.
    with rxcontext.open(tmp_path / "dangling.db") as store:
        model = ScriptedModel([REPLY])
        cw = ContextWindow(store, model, "dangling")
        cw.add_prompt("hi")
        cw.add_tool_call("lookup", {"q": "x"}, id="call_1")
        jobs, texts = first_chunk(cw, CountingExecutor())
        assert jobs == 1
        assert texts == ["one ", "two"]
        sent = model.requests[0].records
        assert [r.type for r in sent] == [
            RecordType.PROMPT,
            RecordType.TOOL_CALL,
            RecordType.TOOL_OUTPUT,
        ]
        assert sent[2].content == INTERRUPTED_TOOL_OUTPUT
        assert sent[2].id is not None  # stored, not only sent


def test_a_sync_call_beside_astream_on_one_window_does_not_deadlock(tmp_path: Path) -> None:
    # The at-once open holds the store and then wants the window's history cache; a sync
    # call (or another astream's worker-thread open) holds that cache and wants the store.
    # Real threads, a bounded number of replies on each side; a hang is a failed join.
    store = rxcontext.open(tmp_path / "both.db")
    model = ScriptedModel([REPLY], repeat_last=True)
    cw = ContextWindow(store, model, "both")
    cw.add_prompt("hi")
    rounds, width = 300, 4
    failures: list[BaseException] = []

    def sync_side() -> None:
        try:
            for _ in range(rounds * width):
                cw.call()
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    async def one() -> None:
        async for _ in cw.astream():
            pass

    async def rounds_of_astream() -> None:
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(width)))

    def async_side() -> None:
        try:
            asyncio.run(rounds_of_astream())
        except BaseException as exc:
            failures.append(exc)

    sides = [threading.Thread(target=f, daemon=True) for f in (sync_side, async_side)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch often: many interleavings in few replies
    try:
        for side in sides:
            side.start()
        deadline = time.monotonic() + 60  # a bound, not a measurement: a deadlock never ends
        for side in sides:
            side.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(interval)
    hung = [side for side in sides if side.is_alive()]
    assert not hung, "sync call and astream deadlocked on the store and history locks"
    store.close()  # (not on a hang: the store's lock would be waited for forever)
    assert failures == []
    assert len(model.requests) == 2 * rounds * width


def test_dead_records_are_read_in_a_worker_thread(tmp_path: Path) -> None:
    # A window's first read returns every record, dead ones too (summarised away, say):
    # megabytes of them would stall the loop though the live tokens are few.
    with rxcontext.open(tmp_path / "dead.db") as store:
        model = ScriptedModel([REPLY])
        cw = ContextWindow(store, model, "dead")
        for i in range(3):
            cw.add_prompt(f"old {i} " * AT_ONCE_TOKENS)
        cw.set_record_live_state(0, 2, False)
        cw.add_prompt("hi")
        assert cw.live_tokens() <= AT_ONCE_TOKENS
        jobs, texts = first_chunk(cw, CountingExecutor())
        assert jobs == 1  # the begin on the loop, the history in the worker thread
        assert texts == ["one ", "two"]
        assert [r.content for r in model.requests[0].records] == ["hi"]


def test_records_gone_dead_since_the_last_read_are_read_in_a_worker_thread(
    tmp_path: Path,
) -> None:
    # A read brings the records changed since the window's last one: records just set dead
    # come back whole (their text included).
    with rxcontext.open(tmp_path / "gone.db") as store:
        model = ScriptedModel([REPLY], repeat_last=True)
        cw = ContextWindow(store, model, "gone")
        for i in range(3):
            cw.add_prompt(f"old {i} " * AT_ONCE_TOKENS)
        first_chunk(cw, CountingExecutor())  # (a long history: read in the worker thread)
        cw.set_record_live_state(0, 2, False)
        cw.add_prompt("and now?")
        assert cw.live_tokens() <= AT_ONCE_TOKENS
        jobs, _ = first_chunk(cw, CountingExecutor())
        assert jobs == 1
        assert [r.content for r in model.requests[1].records] == ["one two", "and now?"]


def test_the_store_waits_and_checkpoints_again_after_an_at_once_stretch(tmp_path: Path) -> None:
    # Inside at_once nothing waits and no commit checkpoints the WAL; the foreground
    # connection gets the store's settings back before any use outside it (they are given
    # back lazily, not as at_once ends), on every thread, a read's and a write's.
    store = rxcontext.open(str(tmp_path / "c.db"), busy_timeout=3.0)
    wanted = (3000, store._autocheckpoint)
    assert wanted[1] > 0

    def settings(db: sqlite3.Connection) -> tuple[int, int]:
        busy = db.execute("PRAGMA busy_timeout").fetchone()[0]
        return busy, db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    seen: list[tuple[int, int]] = []
    for use in ("read", "write", "read on a thread", "write on a thread", "close"):
        with store.at_once() as free:
            assert free
            with store._read() as db:  # (its own reads and writes: still at once)
                assert settings(db) == (0, 0)
            with store._tx() as db:
                assert settings(db) == (0, 0)

        def outside(use: str = use) -> None:
            if use.startswith("read"):
                with store._read() as db:
                    seen.append(settings(db))
            else:
                with store._tx() as db:
                    seen.append(settings(db))

        if use == "close":
            store.close()  # (the WAL checkpointed by the close, as before)
            assert not (tmp_path / "c.db-wal").exists()
            continue
        if use.endswith("thread"):
            thread = threading.Thread(target=outside)
            thread.start()
            thread.join()
        else:
            outside()
    assert seen == [wanted] * 4


def _interrupt_before(function: str, needle: str) -> None:
    """Raise KeyboardInterrupt, as a signal's handler would, before the line of
    ``function`` that contains ``needle`` runs (a line trace: the same point every run)."""

    def local(frame: Any, event: str, arg: Any) -> Any:
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        if event == "line" and needle in line:
            sys.settrace(None)
            raise KeyboardInterrupt
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_name == function else None

    sys.settrace(calls)


@pytest.mark.parametrize(
    ("function", "needle", "use"),
    [
        ("_given_back", "busy_timeout", "a read"),  # half given back
        ("at_once", "wal_autocheckpoint = 0", "at_once"),  # half set
    ],
)
def test_a_ctrl_c_between_the_two_pragmas_leaves_no_half_setting(
    tmp_path: Path, function: str, needle: str, use: str
) -> None:
    # The next at_once runs with both of its settings (no busy wait, no WAL checkpoint at
    # a commit: a commit on the loop must not checkpoint and sync), and the next use
    # outside it with both of the store's, whichever PRAGMA a Ctrl-C fell between.
    store = rxcontext.open(str(tmp_path / "c.db"), busy_timeout=3.0)

    def settings() -> tuple[int, int]:
        db = store._conn
        assert db is not None
        busy = db.execute("PRAGMA busy_timeout").fetchone()[0]
        return busy, db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    with store.at_once() as free:
        assert free
    if use == "at_once":
        with store._read():  # all given back first
            pass
    _interrupt_before(function, needle)
    try:
        with pytest.raises(KeyboardInterrupt):
            if use == "at_once":
                with store.at_once():
                    pass
            else:
                with store._read():
                    pass
    finally:
        sys.settrace(None)
    with store.at_once() as free:
        assert free
        assert settings() == (0, 0)
    with store._read():
        assert settings() == (3000, store._autocheckpoint)
    store.close()
