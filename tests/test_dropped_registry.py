"""What the wait for a dropped ``astream()`` (rxcontext/_dropped.py) keys on, and keeps.

* Two store objects of one database file (two ``rxcontext.open()`` of it in one process, a
  web app's per-request stores, say): a reply dropped through one is waited for by a
  request through the other, whose history then holds it as the blocking twin's does.
  Before the fix the entries were keyed by the store object: the second store's request
  left the dropped reply out.
* A loop closed without ``shutdown_asyncgens()`` (a loop per job, as older code makes)
  never runs the dropped generator's close: nothing of its reply may stay behind for good
  (before the fix its entry, and through it the loop, the run and the store, did).

Real OpenAI SDK over a replaying transport.
"""

from __future__ import annotations

import asyncio
import gc
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
