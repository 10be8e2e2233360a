"""SIGTERM at its default under asyncio while a reply's final write is under way.

The reply's end (its commit, or its final checkpoint) runs in a worker thread and may wait
for another process's write lock. The persister marks the reply ``finished`` as that write
begins; SIGTERM meanwhile found it so and killed the process at once, mid-write: the reply
the consumer had whole was lost (its checkpoint holding nothing). As for any store write the
reply is in, the process must die once the write ends, the reply stored.

The child runs in a process of its own, real signals; each step waits for a line of the
child's (bounded: a hung child fails the test).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_signals import _lines, _until

import rxcontext

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="needs POSIX SIGTERM"
)

# The consumer waits (os.read of stdin, blocking its loop) at the last text chunk while the
# parent takes the write lock; it then lets the driver on to the reply's end (argv[2]: the
# model ends it, so it is committed, or fails, so its checkpoint is written) and traces the
# store's statements: COMMITTING as the final write's transaction begins (the lock is held,
# so it waits). From then a line on stdin makes the loop print PONG two iterations later:
# SIGTERM sent before that line has been handed to the loop by then (its handler runs as
# the loop's select returns), and what it queued ran.
FINAL_WRITE = textwrap.dedent(
    """
    import asyncio, os, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    store = rxcontext.open(sys.argv[1], busy_timeout=60)
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(3)]
    end = ValueError("cut")  # not sent again (retry=None): its checkpoint is written
    if sys.argv[2] == "commit":
        end = Chunk(ChunkKind.DONE, finish_reason="stop")
    model = ScriptedModel([[*chunks, end]])
    cw = ContextWindow(store, model, "sig", retry=None, checkpoint_every=None)
    cw.add_prompt("q")

    def trace(sql):
        if sql.startswith("BEGIN IMMEDIATE"):
            store._db().set_trace_callback(None)
            print("COMMITTING", flush=True)

    def ping():
        os.read(0, 100)
        loop = asyncio.get_running_loop()
        loop.remove_reader(0)
        loop.call_soon(lambda: print("PONG", flush=True))

    async def main():
        async for c in cw.astream():
            if c.text:
                print("d", c.text, flush=True)
            if c.text == "<2>":
                print("WAIT", flush=True)
                os.read(0, 100)  # the parent takes the write lock meanwhile
                asyncio.get_running_loop().add_reader(0, ping)
                store._db().set_trace_callback(trace)
        print("DONE", flush=True)

    asyncio.run(main())
    print("SURVIVED", flush=True)
    """
)


@pytest.mark.parametrize("end", ["commit", "checkpoint"])
def test_sigterm_during_the_final_write_waits_for_it_then_kills(tmp_path: Path, end: str) -> None:
    path = tmp_path / "t.db"
    child = subprocess.Popen(
        [sys.executable, "-c", FINAL_WRITE, str(path), end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert child.stdin is not None
    try:
        next_line = _lines(child)
        shown: list[str] = []
        _until(next_line, "WAIT", shown)
        lock = sqlite3.connect(path, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        try:
            child.stdin.write("go\n")
            child.stdin.flush()
            _until(next_line, "COMMITTING")  # finished, and waiting for the lock
            child.send_signal(signal.SIGTERM)
            child.stdin.write("ping\n")
            child.stdin.flush()
            # The loop, finding the reply finished, used to kill the process at once: the
            # output ended here, the final write never made.
            assert next_line() == "PONG", child.stderr.read()  # type: ignore[union-attr]
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        rest = []
        while (line := next_line()) is not None:
            rest.append(line)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGTERM, child.stderr.read()  # type: ignore[union-attr]
    assert rest == []  # it died by SIGTERM once the commit ended, nothing more ran
    store = rxcontext.open(path)
    try:
        context = store.get_context_by_name("sig").id
        checkpoints = store.checkpoints(context)
        records = store.records(context)
        assert "".join(shown) == "<0><1><2>"
        if end == "commit":
            assert checkpoints == []
            assert [r.content for r in records] == ["q", "<0><1><2>"]
            assert records[1].type is rxcontext.RecordType.MODEL_RESP
        else:
            (cp,) = checkpoints
            assert (cp.state.value, cp.text) == ("interrupted", "<0><1><2>")
            assert [r.content for r in records] == ["q"]
    finally:
        store.close()


# The reply's commit fails (a trigger of the child's connection: not a lock) after SIGTERM
# was handed to the loop, and commit_whole writes its checkpoint in the same worker thread:
# the consumer let go holding the final DONE (argv[2]: ``aclose`` it, or the ``task``
# advancing it ended). The loop is blocked (a reader callback waiting on stdin) from before
# the commit goes on until that checkpoint's write waits for the parent's lock again: the
# commit's failure was told to SIGTERM's wait, then the checkpoint took the reply as
# finished, so the loop, finding it finished, killed the process mid-checkpoint. The
# worker stops at the checkpoint's BEGIN (argv[3], a pipe's read end) while the parent
# takes the lock.
COMMIT_FAILS = textwrap.dedent(
    """
    import asyncio, os, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
    from rxcontext.providers import ScriptedModel

    store = rxcontext.open(sys.argv[1], busy_timeout=60)
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(3)]
    model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(store, model, "sig", retry=None, checkpoint_every=None)
    cw.add_prompt("q")
    gate = int(sys.argv[3])
    begins = []

    def trace(sql):
        if sql.startswith("BEGIN IMMEDIATE"):
            begins.append(sql)
            if len(begins) == 1:
                print("COMMITTING", flush=True)
            else:
                store._db().set_trace_callback(None)
                print("CHECKPOINTING", flush=True)
                os.read(gate, 100)  # the parent takes the lock meanwhile

    def block():
        os.read(0, 100)
        print("BLOCKED", flush=True)
        os.read(0, 100)  # the loop runs nothing until the parent's next line
        loop = asyncio.get_running_loop()
        loop.remove_reader(0)
        # Two iterations after what the worker queued meanwhile (the commit's failure told
        # SIGTERM's wait) and what that did (a future's callbacks run an iteration later).
        loop.call_soon(loop.call_soon, lambda: print("PONG", flush=True))

    def phases():
        os.read(0, 100)
        loop = asyncio.get_running_loop()
        loop.remove_reader(0)
        loop.call_soon(lambda: print("PONG", flush=True))
        loop.add_reader(0, block)

    async def consume(agen):
        async for c in agen:
            if c.text:
                print("d", c.text, flush=True)
            if c.kind is ChunkKind.DONE:
                print("WAIT", flush=True)
                os.read(0, 100)  # the parent takes the write lock meanwhile
                store._db().execute(
                    "CREATE TEMP TRIGGER no_records BEFORE INSERT ON main.records"
                    f" WHEN NEW.source = {int(RecordType.MODEL_RESP)}"
                    " BEGIN SELECT RAISE(ABORT, 'no'); END"
                )
                store._db().set_trace_callback(trace)
                asyncio.get_running_loop().add_reader(0, phases)
                return

    async def main():
        agen = cw.astream()
        if sys.argv[2] == "aclose":
            await consume(agen)
            try:
                await agen.aclose()
            except Exception as error:
                print("aclose:", error, flush=True)
        else:
            await asyncio.create_task(consume(agen))
            await asyncio.Event().wait()  # the process dies by SIGTERM meanwhile
        print("DONE", flush=True)

    asyncio.run(main())
    print("SURVIVED", flush=True)
    """
)


@pytest.mark.parametrize("let_go", ["aclose", "task"])
def test_sigterm_waits_for_the_checkpoint_after_a_failed_commit_whole(
    tmp_path: Path, let_go: str
) -> None:
    import os

    path = tmp_path / "t.db"
    gate_read, gate_write = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", COMMIT_FAILS, str(path), let_go, str(gate_read)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=(gate_read,),
    )
    os.close(gate_read)
    assert child.stdin is not None

    def say(line: str) -> None:
        assert child.stdin is not None
        child.stdin.write(line + "\n")
        child.stdin.flush()

    try:
        next_line = _lines(child)
        shown: list[str] = []
        _until(next_line, "WAIT", shown)
        lock = sqlite3.connect(path, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        try:
            say("go")
            _until(next_line, "COMMITTING")  # the commit waits for the lock
            child.send_signal(signal.SIGTERM)
            say("ping")
            assert next_line() == "PONG"  # handed to the loop: it waits for the commit
            say("block")
            assert next_line() == "BLOCKED"  # the loop runs nothing from here
            lock.execute("ROLLBACK")  # the commit goes on, and fails
            assert next_line() == "CHECKPOINTING", child.stderr.read()  # type: ignore[union-attr]
            lock.execute("BEGIN IMMEDIATE")
            os.write(gate_write, b"go\n")  # the checkpoint waits for the lock
            say("unblock")  # the loop runs what the commit's failure queued, then PONG
            # It used to die here, the checkpoint's write still waiting for the lock.
            assert next_line() == "PONG", child.stderr.read()  # type: ignore[union-attr]
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        rest = []
        while (line := next_line()) is not None:
            rest.append(line)
        child.wait(30)
    finally:
        os.close(gate_write)
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGTERM, child.stderr.read()  # type: ignore[union-attr]
    assert rest == []  # it died by SIGTERM once the checkpoint was written
    store = rxcontext.open(path)
    try:
        context = store.get_context_by_name("sig").id
        (cp,) = store.checkpoints(context)
        assert "".join(shown) == "<0><1><2>"
        assert (cp.state.value, cp.text) == ("interrupted", "<0><1><2>")
        assert [r.content for r in store.records(context)] == ["q"]
    finally:
        store.close()


# The reply's commit waits for the parent's lock, which refuses it (busy_timeout), SIGTERM
# having been handed to the loop before that wait began (the worker stops at the commit's
# BEGIN, argv[2] a pipe's read end, until the parent saw PONG). Every BEGIN IMMEDIATE of the
# child is printed as it starts.
REFUSED = textwrap.dedent(
    """
    import asyncio, os, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    store = rxcontext.open(sys.argv[1], busy_timeout=1)
    done = Chunk(ChunkKind.DONE, finish_reason="stop")
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "<0>"), done]])
    cw = ContextWindow(store, model, "sig", retry=None, checkpoint_every=None)
    cw.add_prompt("q")
    gate = int(sys.argv[2])
    begins = []

    def trace(sql):
        if sql.startswith("BEGIN IMMEDIATE"):
            begins.append(sql)
            print("BEGIN", flush=True)
            if len(begins) == 1:
                os.read(gate, 100)  # SIGTERM is handed to the loop meanwhile

    def ping():
        os.read(0, 100)
        loop = asyncio.get_running_loop()
        loop.remove_reader(0)
        loop.call_soon(lambda: print("PONG", flush=True))

    async def main():
        async for c in cw.astream():
            if c.text:
                print("d", c.text, flush=True)
                print("WAIT", flush=True)
                os.read(0, 100)  # the parent takes the write lock meanwhile
                asyncio.get_running_loop().add_reader(0, ping)
                store._db().set_trace_callback(trace)
        print("DONE", flush=True)

    asyncio.run(main())
    print("SURVIVED", flush=True)
    """
)


def test_sigterm_during_a_refused_final_commit_waits_for_the_lock_once(tmp_path: Path) -> None:
    """A refused commit's checkpoint is kept at once, not waited for again (as for Ctrl-C,
    and SIGTERM under the blocking API): the process dies after one ``busy_timeout``, not
    two (10 s with the defaults, all of Docker's grace period)."""
    import os

    path = tmp_path / "t.db"
    gate_read, gate_write = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", REFUSED, str(path), str(gate_read)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=(gate_read,),
    )
    os.close(gate_read)
    assert child.stdin is not None
    try:
        next_line = _lines(child)
        shown: list[str] = []
        _until(next_line, "WAIT", shown)
        lock = sqlite3.connect(path, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        try:
            child.stdin.write("go\n")
            child.stdin.flush()
            _until(next_line, "BEGIN")  # the commit: finished, at its BEGIN
            child.send_signal(signal.SIGTERM)
            child.stdin.write("ping\n")
            child.stdin.flush()
            assert next_line() == "PONG"  # handed to the loop: it waits for the final write
            os.write(gate_write, b"go\n")  # the commit waits for the lock, refused
            rest = []
            while (line := next_line()) is not None:
                rest.append(line)
            child.wait(30)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    finally:
        os.close(gate_write)
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGTERM, child.stderr.read()  # type: ignore[union-attr]
    # It used to wait for the lock again, for the checkpoint (a second BEGIN), then die.
    assert rest == []
    store = rxcontext.open(path)
    try:
        context = store.get_context_by_name("sig").id
        assert "".join(shown) == "<0>"
        assert [r.content for r in store.records(context)] == ["q"]  # not committed
    finally:
        store.close()
