"""What the wait for a dropped ``astream()`` (rxcontext/_dropped.py) keys on, and keeps.

* Two store objects of one database file (two ``rxcontext.open()`` of it in one process, a
  web app's per-request stores, say): a reply dropped through one is waited for by a
  request through the other, whose history then holds it as the blocking twin's does.
  Before the fix the entries were keyed by the store object: the second store's request
  left the dropped reply out.
* A loop closed without ``shutdown_asyncgens()`` (a loop per job, as older code makes)
  never runs the dropped generator's close: nothing of its reply may stay behind for good
  (before the fix its entry, and through it the loop, the run and the store, did).
* A stream dropped in a reference cycle is noted when the cyclic collector frees it, on
  whatever allocation sets it off: one made while the registry's lock is held (a new
  reply looking for dropped ones) included. Before the fix the note took that lock, which
  its own thread held: the event loop hung for good.

Real OpenAI SDK over a replaying transport.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from crafted_text import text_body
from provider_rules import model_for
from replay import Replay

import rxcontext
from rxcontext import ChunkKind, ContextWindow, _dropped

JOBS = 5


def test_a_reply_dropped_through_another_store_of_the_database_is_waited_for(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    replay = Replay(text_body("chat", ["one ", "two"]), text_body("chat", ["and more"]))
    model = model_for("chat", replay)
    first, second = rxcontext.open(path), rxcontext.open(str(tmp_path / "." / "db.sqlite"))

    async def main() -> None:
        cw = ContextWindow(first, model, "c", retry=None)
        cw.add_prompt("count")
        async for chunk in cw.astream():
            if chunk.kind is ChunkKind.DONE:
                break  # dropped here, unclosed, holding the final DONE
        other = ContextWindow(second, model, "c", retry=None)
        other.add_prompt("and then?")
        assert (await other.acall()).text == "and more"

    try:
        asyncio.run(main())
    finally:
        first.close()
        second.close()
    assert [(m["role"], m["content"]) for m in replay.bodies[1]["messages"]] == [
        ("user", "count"),
        ("assistant", "one two"),
        ("user", "and then?"),
    ]


def test_a_loop_closed_with_a_dropped_stream_unclosed_leaves_no_entry_behind() -> None:
    """Each job's loop is closed without running the dropped generator's close; the next
    job's reply (on a loop of its own) must find no entry of the earlier ones left in the
    registry (before the fix every one stayed, each holding its loop, run and store)."""
    store = rxcontext.open(":memory:")
    replay = Replay(*[text_body("chat", ["one ", "two"]) for _ in range(JOBS)])
    cw = ContextWindow(store, model_for("chat", replay), "c", retry=None)

    async def main() -> None:
        async for chunk in cw.astream():
            if chunk.kind is ChunkKind.TEXT:
                break  # dropped here, unclosed, as the job ends

    try:
        for i in range(JOBS):
            cw.add_prompt(f"q{i}")
            loop = asyncio.new_event_loop()
            loop.run_until_complete(main())
            loop.close()  # no shutdown_asyncgens(): the generator's close never runs
            del loop
        gc.collect()
        left = [d for d in list(_dropped._running) if d.loop is None or d.loop.is_closed()]
        assert len(left) <= 1, f"{len(left)} entries of closed loops"  # the last job's
    finally:
        store.close()


BOUND = 30.0
"""How long the child may take at most (it is killed, and the test fails, instead of hanging)."""

COLLECTED_UNDER_THE_LOCK = textwrap.dedent(
    """
    import asyncio, gc
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow, _dropped
    from rxcontext.providers import ScriptedModel

    gc.disable()  # the cycle below is freed only where the loop sets the collector off

    class Loop(asyncio.SelectorEventLoop):
        \"\"\"Sets the cyclic collector off once, when asked whether it is closed while the
        registry's lock is held: as an allocation there may.\"\"\"
        armed = False
        collected = False

        def is_closed(self):
            if Loop.armed and _dropped._lock.locked():
                Loop.armed = False
                gc.collect()
                Loop.collected = True
            return super().is_closed()

    def reply():
        return [Chunk(ChunkKind.TEXT, "a "), Chunk(ChunkKind.DONE, finish_reason="stop")]

    store = rxcontext.open(":memory:")
    windows = [ContextWindow(store, ScriptedModel([reply()]), f"c{k}") for k in range(3)]
    for cw in windows:
        cw.add_prompt("q")

    async def drop_plainly():
        async for _ in windows[0].astream():
            break  # noted at once, its close never run: this loop does not run again

    async def drop_in_a_cycle_then_reply():
        box = {}
        box["me"] = box
        box["stream"] = windows[1].astream()
        await anext(box["stream"])
        del box  # noted when the collector frees it
        Loop.armed = True
        await windows[2].acall()  # looks for dropped replies, the lock held
        assert Loop.collected, "the collector never ran under the lock"

    idle = Loop()
    idle.run_until_complete(drop_plainly())
    running = Loop()
    running.run_until_complete(drop_in_a_cycle_then_reply())
    running.run_until_complete(running.shutdown_asyncgens())
    running.close()
    idle.close()
    store.close()
    print("done", flush=True)
    """
)


def test_a_stream_collected_while_the_registry_is_locked_does_not_hang_the_loop() -> None:
    try:
        child = subprocess.run(
            [sys.executable, "-c", COLLECTED_UNDER_THE_LOCK],
            capture_output=True,
            text=True,
            timeout=BOUND,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the child hung (killed after {BOUND} s)") from None
    assert child.returncode == 0, child.stderr
    assert child.stdout == "done\n", child.stdout
