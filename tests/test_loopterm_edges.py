"""SIGTERM at its default under asyncio where the loop cannot take it (rxcontext._loopterm).

A sync bridge over ``cw.astream()`` steps the main thread's loop with
``run_until_complete`` per chunk: between two steps the loop is not running, so a SIGTERM
handed to it would wait for a next step that may never come. The process must still die
by it, at once. So must a SIGTERM that lands in a step's last loop iteration: the loop is
still running, so the hand-over is queued, but the loop stops before running it.
(PID 1 is tests/test_signals.py's.)

The child runs in its own process; waits are bounded (a hung child fails the test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
BOUND = 30.0

# A sync bridge's start: a window on the database named by argv[1], a loop, its steps.
STEPPED = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    store = rxcontext.open(sys.argv[1])
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(50)]
    cw = ContextWindow(
        store, ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]]), "sig"
    )
    cw.add_prompt("go")
    loop = asyncio.new_event_loop()
    steps = cw.astream().__aiter__()
    """
)

BRIDGE = STEPPED + textwrap.dedent(
    """
    first = loop.run_until_complete(steps.__anext__())
    print("got", first.text, flush=True)
    sys.stdin.readline()  # the sync side waits between two steps (the loop is stopped)
    print("STILL ALIVE", flush=True)
    """
)


@contextlib.contextmanager
def running(script: str, db: Path) -> Iterator[subprocess.Popen[str]]:
    """``script`` in a child process of its own (its session killed on the way out if it
    still runs: a child it forked too)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def test_sigterm_between_two_steps_of_a_stopped_loop_still_kills(tmp_path: Path) -> None:
    with running(BRIDGE, tmp_path / "t.db") as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "got <0>"
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM at its default was swallowed: the child still runs")
        assert child.returncode == -signal.SIGTERM, child.stderr.read()  # type: ignore[union-attr]
        assert child.stdout.read() == ""


LAST_ITERATION = STEPPED + textwrap.dedent(
    """
    print("got", loop.run_until_complete(steps.__anext__()).text, flush=True)
    step = asyncio.ensure_future(steps.__anext__(), loop=loop)
    # Runs in the step's last loop iteration (before run_until_complete's own callback
    # stops the loop): SIGTERM arrives while the loop still runs, as one from outside may.
    step.add_done_callback(lambda _: os.kill(os.getpid(), signal.SIGTERM))
    print("got", loop.run_until_complete(step).text, flush=True)
    sys.stdin.readline()  # the sync side waits between two steps (the loop is stopped)
    print("STILL ALIVE", flush=True)
    """
)


def test_sigterm_in_the_last_iteration_of_a_step_still_kills(tmp_path: Path) -> None:
    with running(LAST_ITERATION, tmp_path / "t.db") as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "got <0>"
        try:
            child.wait(BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM queued for a loop that then stopped was swallowed")
        out = child.stdout.read()
        assert child.returncode == -signal.SIGTERM, (out, child.stderr.read())  # type: ignore[union-attr]
        assert "STILL ALIVE" not in out


# Between two steps, the sync side runs a blocking reply of another window (argv[2]: ``term``,
# its subscriber waits at the third chunk for SIGTERM; ``end``, it runs to its end).
BRIDGE_THEN_BLOCKING = STEPPED + textwrap.dedent(
    """
    print("got", loop.run_until_complete(steps.__anext__()).text, flush=True)
    texts = [Chunk(ChunkKind.TEXT, f"[{i}]") for i in range(5)]
    other = ContextWindow(
        store,
        ScriptedModel([[*texts, Chunk(ChunkKind.DONE, finish_reason="stop")]]),
        "blocking",
        retry=None,
        checkpoint_every=3600,
    )
    other.add_prompt("q")

    def on_next(chunk):
        if chunk.text:
            print("d", chunk.text, flush=True)
        if chunk.text == "[2]" and sys.argv[2] == "term":
            print("WAIT", flush=True)
            sys.stdin.readline()  # SIGTERM lands here, in the subscriber's code

    other.stream().subscribe(on_next)
    handler = signal.getsignal(signal.SIGTERM)
    print("handler", type(getattr(handler, "__self__", None)).__name__, flush=True)
    """
)


@pytest.mark.parametrize("end", ["term", "end"])
def test_a_blocking_reply_between_two_steps_keeps_what_it_delivered_at_sigterm(
    tmp_path: Path, end: str
) -> None:
    """The loop's SIGTERM handler, stopped between two steps, would kill at once (it still
    waits for the stepped reply): the blocking reply takes SIGTERM as at its default, saves
    what it delivered, and the process dies by it; the loop's handler is put back after."""
    db = tmp_path / "t.db"
    child = subprocess.Popen(
        [sys.executable, "-c", BRIDGE_THEN_BLOCKING, str(db), end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "got <0>"
        lines = []
        if end == "term":
            while (line := child.stdout.readline().strip()) != "WAIT":
                assert line, child.stderr.read()  # type: ignore[union-attr]
                lines.append(line)
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail("the child still runs")
        lines += child.stdout.read().splitlines()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    import rxcontext

    store = rxcontext.open(db)
    try:
        context = store.get_context_by_name("blocking").id
        if end == "term":
            assert child.returncode == -signal.SIGTERM, child.stderr.read()  # type: ignore[union-attr]
            assert lines == ["d [0]", "d [1]", "d [2]"]
            # It used to hold '': the loop's handler killed at once, nothing saved.
            (cp,) = store.checkpoints(context)
            assert (cp.state.value, cp.text) == ("interrupted", "[0][1][2]")
        else:
            assert child.returncode == 0, child.stderr.read()  # type: ignore[union-attr]
            assert lines[-1] == "handler _LoopTerm"  # the loop's, for its next steps
            assert [r.content for r in store.records(context)] == ["q", "[0][1][2][3][4]"]
    finally:
        store.close()


# Between two steps a blocking reply runs; its subscriber notes the SIGTERM handler it finds
# (the reply's own), which the program puts back after the reply, then steps the loop again.
PUT_BACK_THEN_STEPPED = STEPPED + textwrap.dedent(
    """
    print("got", loop.run_until_complete(steps.__anext__()).text, flush=True)
    other = ContextWindow(
        store,
        ScriptedModel([[Chunk(ChunkKind.TEXT, "x"), Chunk(ChunkKind.DONE, finish_reason="stop")]]),
        "blocking",
        retry=None,
    )
    other.add_prompt("q")
    found = []
    other.stream().subscribe(lambda chunk: found.append(signal.getsignal(signal.SIGTERM)))
    signal.signal(signal.SIGTERM, found[0])  # the program puts back what it found

    async def more():
        for _ in range(3):
            print("d", (await steps.__anext__()).text, flush=True)
        print("WAIT", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    loop.run_until_complete(more())
    print("STILL ALIVE", flush=True)
    """
)


def test_a_blocking_replys_handler_put_back_hands_sigterm_to_the_stepped_loop(
    tmp_path: Path,
) -> None:
    """The blocking reply's handler, put back by the program after it, stands for the
    loop's (which it replaced as at SIGTERM's default): SIGTERM while the loop runs again
    reaches the loop's handler, which saves what the stepped reply delivered, then dies by
    it. It used to die at once (the ended handler took SIGTERM for its default), the stepped
    reply's checkpoint holding ''."""
    db = tmp_path / "t.db"
    with running(PUT_BACK_THEN_STEPPED, db) as child:
        assert child.stdout is not None
        lines = []
        while (line := child.stdout.readline().strip()) != "WAIT":
            assert line, child.stderr.read()  # type: ignore[union-attr]
            lines.append(line)
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail("the child still runs")
    assert lines == ["got <0>", "d <1>", "d <2>", "d <3>"]
    assert child.returncode == -signal.SIGTERM, child.stderr.read()  # type: ignore[union-attr]
    import rxcontext

    store = rxcontext.open(db)
    try:
        (cp,) = store.checkpoints(store.get_context_by_name("sig").id)
        assert (cp.state.value, cp.text) == ("interrupted", "<0><1><2><3>")
    finally:
        store.close()


FORKED_IN_A_STEP = PUT_BACK_THEN_STEPPED.replace(
    '    print("WAIT", flush=True)\n'
    "    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)\n",
    "    r, w = os.pipe()\n"
    "    ready, up = os.pipe()\n"
    "    pid = os.fork()  # (multiprocessing's fork start method, from a coroutine)\n"
    "    if pid == 0:\n"
    "        os.write(up, b'.')  # (a signal before the child's own start is dropped)\n"
    "        os.read(r, 1)  # the child waits for SIGTERM; nobody writes\n"
    "        os._exit(3)\n"
    "    os.read(ready, 1)\n"
    "    os.kill(pid, signal.SIGTERM)\n"
    "    _, status = os.waitpid(pid, 0)\n"
    '    print("child", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)\n'
    "    os._exit(0)\n",
)


def test_a_child_forked_in_a_step_after_a_put_back_dies_by_sigterm(tmp_path: Path) -> None:
    """A child forked from the stepped loop (its copy of the loop never runs again) with
    the blocking reply's handler put back: that handler passes SIGTERM on to the loop's,
    which in the child must die by it, not queue it to a loop that never runs (the child
    lived on)."""
    assert FORKED_IN_A_STEP != PUT_BACK_THEN_STEPPED
    with running(FORKED_IN_A_STEP, tmp_path / "t.db") as child:
        try:
            out, err = child.communicate(timeout=BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail("the forked child lived on after SIGTERM")
    assert out.splitlines()[-1] == f"child {int(signal.SIGTERM)}", out + err


def test_a_second_sigterm_behind_a_put_back_handler_is_a_second_one() -> None:
    """Behind an ended blocking reply's handler put back over a stepped loop's, a second
    SIGTERM (the loop took the first) kills at once during a store write, as with the
    loop's handler installed directly: it was held until the write ended."""
    import asyncio

    from rxcontext import _signals
    from rxcontext._loopterm import _LoopTerm

    loop = asyncio.new_event_loop()
    try:
        term = _LoopTerm(loop)
        term.terminated = True  # the first SIGTERM was taken: its replies are being saved
        ended = _signals._Handler(_signals.HandOver())
        ended.guard = None  # its run is over
        ended.saved[signal.SIGTERM] = ended.die
        ended.after = term.handler  # what HandOver leaves over a stopped loop's handler
        assert _signals._again_at_default(term.handler, signal.SIGTERM, False)
        assert _signals._again_at_default(ended, signal.SIGTERM, False)
    finally:
        loop.close()
