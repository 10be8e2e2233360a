"""The user's own exception (or Ctrl-C) in their code while another process holds the lock.

The subscriber's ``on_next`` (or the ``async for`` body) takes a chunk; meanwhile a plain
``sqlite3`` connection holds the database's write lock (``BEGIN IMMEDIATE``: a backup, a long
write) and the user's code raises. The reply's final write (its commit when the chunk was the
final ``DONE``, else the checkpoint of what was delivered) waits ``busy_timeout`` once and is
refused; it is kept and written once the lock is gone (here: as the store closes).

What the user gets is theirs: a ``KeyboardInterrupt`` with the refusal (``StoreBusy``) as its
cause, as docs/guarantees.md "Signals and crashes" promises; their own exception, the same
object, with a note that says the write was refused and kept (sync); on asyncio the
exception leaving the ``async for`` (the generator, dropped, is closed by the loop). Before
the fix, on sync, both reached the user as ``StoreBusy`` on the final ``DONE`` after two
lock waits (the commit, then the checkpoint), and the user's exception did on every chunk.
Real OpenAI SDK over a replaying transport.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, StoreBusy

pytestmark = pytest.mark.timeout(60)

TEXT = ["one ", "two"]


class UIError(Exception):
    """The user's own code failing (a UI refresh, say)."""


class Locked:
    """A database whose write lock another connection takes while the user's code runs;
    counts the store's final writes that waited for it and were refused."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "db.sqlite")
        self.store = rxcontext.open(self.path, busy_timeout=0.3, lease_ttl=5.0)
        replay = Replay(text_body("chat", TEXT))
        self.cw = ContextWindow(self.store, model_for("chat", replay), "c", retry=None)
        self.cw.add_prompt("count")
        self.locker = sqlite3.connect(self.path, isolation_level=None, timeout=0.1)
        self.refused = 0
        self.before_commit: Callable[[], None] | None = None
        """Run once as the reply's commit begins (a signal, a cancel, landing in its wait)."""
        for name in ("save_checkpoint", "commit_reply"):
            setattr(self.store, name, self._counting(getattr(self.store, name)))

    def _counting(self, write: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if write.__name__ == "commit_reply" and self.before_commit is not None:
                self.before_commit, arrive = None, self.before_commit
                arrive()
            try:
                return write(*args, **kwargs)
            except StoreBusy:
                if kwargs.get("wait", True):  # the heartbeat's tries wait for nothing
                    self.refused += 1
                raise

        return counted

    def lock(self) -> None:
        self.locker.execute("BEGIN IMMEDIATE")

    def kept(self) -> tuple[ReplyState, str]:
        """Lets the lock go, closes the store (which writes what was kept): the reply as
        another process reads it."""
        self.locker.execute("ROLLBACK")
        self.locker.close()
        self.store.close()
        other = rxcontext.open(self.path)
        try:
            [checkpoint] = ContextWindow(other, self.cw.model, "c").checkpoints()
            return checkpoint.state, checkpoint.text
        finally:
            other.close()


def delivered_up_to(kind: ChunkKind) -> str:
    return TEXT[0] if kind is ChunkKind.TEXT else "".join(TEXT)


@pytest.mark.parametrize("kind", [ChunkKind.TEXT, ChunkKind.DONE], ids=["text", "done"])
@pytest.mark.parametrize(
    "make", [KeyboardInterrupt, lambda: UIError("UI refresh failed")], ids=["ctrl_c", "own"]
)
def test_sync_the_users_exception_reaches_them_the_refused_write_kept(
    tmp_path: Path, kind: ChunkKind, make: Callable[[], BaseException]
) -> None:
    db = Locked(tmp_path)
    error = make()
    errors: list[Exception] = []

    def on_next(chunk: Chunk) -> None:
        if chunk.kind is kind:
            db.lock()
            raise error

    with pytest.raises(type(error)) as raised:
        db.cw.stream().subscribe(on_next, errors.append)
    assert raised.value is error
    assert errors == []
    assert db.refused == 1  # one wait for the lock, not one per write tried
    if isinstance(error, KeyboardInterrupt):
        assert isinstance(error.__cause__, StoreBusy), repr(error.__cause__)
    else:
        assert error.__cause__ is None and error.__context__ is None
        [note] = getattr(error, "__notes__", [])
        assert "locked by another process" in note and "kept" in note, note
    assert db.kept() == (ReplyState.INTERRUPTED, delivered_up_to(kind))


@pytest.mark.parametrize("kind", [ChunkKind.TEXT, ChunkKind.DONE], ids=["text", "done"])
def test_asyncio_the_users_exception_leaving_the_loop_reaches_them(
    tmp_path: Path, kind: ChunkKind
) -> None:
    db = Locked(tmp_path)
    error = UIError("UI refresh failed")
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: seen.append(context))
        try:
            async for chunk in db.cw.astream():
                if chunk.kind is kind:
                    db.lock()
                    raise error
        finally:
            await asyncio.sleep(0)  # the loop's finaliser closes the dropped generator

    with pytest.raises(UIError) as raised:
        asyncio.run(main())
    assert raised.value is error and error.__context__ is None
    assert db.refused == 1
    assert db.kept() == (ReplyState.INTERRUPTED, delivered_up_to(kind))


def on_the_main_thread() -> None:
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        pytest.skip("signal handlers run on the main thread")


def test_sync_ctrl_c_during_the_final_commits_lock_wait_waits_once(tmp_path: Path) -> None:
    """Ctrl-C lands as the commit on the final DONE waits for the lock (held until the
    write ends, then raised): the refused commit's checkpoint is kept at once. Before the
    fix the commit was tried again (a second wait) as the KeyboardInterrupt went by."""
    on_the_main_thread()
    db = Locked(tmp_path)
    db.before_commit = lambda: signal.raise_signal(signal.SIGINT)
    errors: list[Exception] = []

    def on_next(chunk: Chunk) -> None:
        if chunk.kind is ChunkKind.DONE:
            db.lock()

    with pytest.raises(KeyboardInterrupt) as raised:
        db.cw.stream().subscribe(on_next, errors.append)
    assert errors == []
    assert db.refused == 1  # one wait for the lock, not two
    assert isinstance(raised.value.__cause__, StoreBusy), repr(raised.value.__cause__)
    assert db.kept() == (ReplyState.INTERRUPTED, "".join(TEXT))


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_asyncio_a_cancel_during_the_final_commits_lock_wait_reaches_the_task(
    tmp_path: Path, how: str
) -> None:
    """The task is cancelled (``task.cancel()``, an ``asyncio.timeout`` expiring, what
    ``asyncio.run`` does on Ctrl-C) while the commit on the final DONE waits for the lock in
    its worker thread: the task gets its ``CancelledError`` (the timeout its
    ``TimeoutError``), the refusal as its cause, after one wait; the refused commit's
    checkpoint is kept. Before the fix the commit was tried again (a second wait) and its
    ``StoreBusy`` replaced the cancellation."""
    db = Locked(tmp_path)
    caught: list[asyncio.CancelledError] = []

    async def consume() -> None:
        try:
            async for chunk in db.cw.astream():
                if chunk.kind is ChunkKind.DONE:
                    db.lock()
        except asyncio.CancelledError as error:
            caught.append(error)
            raise

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if how == "cancel":
            task = asyncio.ensure_future(consume())
            db.before_commit = lambda: loop.call_soon_threadsafe(task.cancel)
            await task
        else:
            async with asyncio.timeout(None) as bound:
                db.before_commit = lambda: loop.call_soon_threadsafe(bound.reschedule, 0.0)
                await consume()

    with pytest.raises(asyncio.CancelledError if how == "cancel" else TimeoutError):
        asyncio.run(main())
    assert db.refused == 1  # one wait for the lock, not two
    [error] = caught
    assert isinstance(error.__cause__, StoreBusy), repr(error.__cause__)
    assert db.kept() == (ReplyState.INTERRUPTED, "".join(TEXT))


SIGTERM_CHILD = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow, StoreBusy, Tool
    from rxcontext.providers import ScriptedModel

    path, round_, blocked = sys.argv[1], sys.argv[2], sys.argv[3] == "blocked"
    T = lambda s: Chunk(ChunkKind.TEXT, s)
    call = Chunk(ChunkKind.TOOL_CALL, '{"q": "x"}', index=0, id="c1", name="look")
    script = {
        "whole": [[T("one "), T("two"), Chunk(ChunkKind.DONE, finish_reason="stop")]],
        "tool": [
            [T("one "), T("two"), call, Chunk(ChunkKind.DONE, finish_reason="tool_calls")],
            [T("three"), Chunk(ChunkKind.DONE, finish_reason="stop")],
        ],
    }[round_]
    if blocked:  # in every thread (they inherit it): the process outlives its death by it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    store = rxcontext.open(path, busy_timeout=0.3)
    cw = ContextWindow(store, ScriptedModel(script), "c", retry=None)
    cw.add_tool(Tool("look", "look").string("q", "q"), lambda args: "seen")
    cw.add_prompt("count")
    locker = sqlite3.connect(path, isolation_level=None, timeout=0.1)

    def counting(write):
        def counted(*args, **kwargs):
            if write.__name__ == "commit_reply":  # SIGTERM, held while the write lasts
                if blocked:  # what the signal would run, the kernel's SIGTERM staying blocked
                    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
                else:
                    os.kill(os.getpid(), signal.SIGTERM)
            try:
                return write(*args, **kwargs)
            except StoreBusy:
                if kwargs.get("wait", True):  # the heartbeat's tries wait for nothing
                    print("REFUSED", write.__name__, flush=True)
                raise

        return counted

    store.commit_reply = counting(store.commit_reply)
    store.save_checkpoint = counting(store.save_checkpoint)

    def on_next(chunk):
        if chunk.kind is ChunkKind.DONE:
            locker.execute("BEGIN IMMEDIATE")

    try:
        cw.stream().subscribe(on_next, lambda e: print("ON_ERROR", type(e).__name__, flush=True))
    except BaseException as error:
        chain = []
        while error is not None:
            chain.append(type(error).__name__)
            error = error.__cause__ or error.__context__
        print("RAISED", *chain, flush=True)
        raise
    print("RETURNED", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
@pytest.mark.parametrize("round_", ["whole", "tool"])
def test_sync_sigterm_during_the_final_commits_lock_wait_waits_once(
    tmp_path: Path, round_: str
) -> None:
    """SIGTERM at its default (``kill``, ``docker stop``) lands as the reply's commit (its
    final DONE, or a tool round's) waits for the lock: as with Ctrl-C the refused commit's
    checkpoint is kept at once, and the process dies by SIGTERM after that one wait. Before
    the fix the driver's ``Terminated`` was not counted among what stops a reply from
    outside: after a tool round's refused commit the checkpoint waited for the lock again,
    and on the final DONE the refusal (``StoreBusy``) replaced the ``Terminated``."""
    child = subprocess.run(
        [sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "db.sqlite"), round_, "free"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == -signal.SIGTERM, child.stderr
    assert child.stdout.splitlines() == ["REFUSED commit_reply"]  # one wait, then death


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
@pytest.mark.parametrize("round_", ["whole", "tool"])
def test_sync_sigterm_during_the_final_commits_lock_wait_is_what_ends_the_reply(
    tmp_path: Path, round_: str
) -> None:
    """As above, with SIGTERM blocked (its handler called as the signal would), so the
    process outlives the driver's death by it and ends with ``SystemExit(143)``: what the
    driver let go meanwhile is its ``__context__``, the driver's ``Terminated`` with the
    refusal as its cause, never the refusal alone."""
    child = subprocess.run(
        [sys.executable, "-c", SIGTERM_CHILD, str(tmp_path / "db.sqlite"), round_, "blocked"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 128 + signal.SIGTERM, child.stderr
    # (then the store's close, as the process exits, tries the kept checkpoint again)
    assert child.stdout.splitlines()[:2] == [
        "REFUSED commit_reply",
        "RAISED SystemExit Terminated StoreBusy OperationalError",
    ], child.stderr
