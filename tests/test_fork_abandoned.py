"""A forked child never ends the parent's asyncio replies.

The child holds copies of the parent's drivers (memory is copied whole at the fork). When
its collector lets go of one (its copy of a driver the parent let go without its end, not
collected yet; its copy of a live reply's task, which the child has no use for), the
child's copy must not end the reply: the reply is the parent's. Before the fix the child
ended it in the shared database: the parent's live reply was marked ``INTERRUPTED`` (the
parent then failed with ``OwnershipLost``), and the reply the parent let go was ended twice
(its checkpoint's text doubled, ``'one one '``).

Real OpenAI SDK over a replaying transport; the child reports through a pipe and leaves by
``os._exit``.
"""

from __future__ import annotations

import _thread
import asyncio
import gc
import os
from pathlib import Path
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay
from test_fork import _in_child
from watching import until

import rxcontext
from rxcontext import ChunkKind, ContextWindow, ReplyState

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def window(store: Any, context: str) -> ContextWindow:
    replay = Replay(text_body("chat", ["one ", "two"]))
    return ContextWindow(store, model_for("chat", replay), context, retry=None)


def rows(store: Any, cw: ContextWindow) -> dict[str, Any]:
    return {
        "records": [r.content for r in store.records(cw.context_id)],
        "checkpoints": [(p.state.name, p.text) for p in cw.checkpoints()],
        "active": len(cw.active_replies()),
    }


async def hold_first_text(cw: ContextWindow, go: asyncio.Event, held: asyncio.Event) -> list[str]:
    got: list[str] = []
    async for chunk in cw.astream():
        got.append(chunk.text)
        if chunk.kind is ChunkKind.TEXT and len(got) == 1:
            held.set()
            await go.wait()
    return got


def test_a_child_forked_while_a_driver_is_let_go_uncollected_and_a_reply_is_live(
    tmp_path: Path,
) -> None:
    store = rxcontext.open(tmp_path / "db.sqlite")
    gone = window(store, "gone")  # its driver let go with its loop, not collected at the fork
    live = window(store, "live")  # its consumer holds a chunk, its loop open, at the fork
    gone.add_prompt("q")
    live.add_prompt("q")
    app: dict[str, Any] = {}
    enabled = gc.isenabled()
    gc.disable()
    loop = asyncio.new_event_loop()
    try:
        # The let-go driver: its loop closed while its consumer's task held a chunk.
        async def let_go() -> None:
            held = asyncio.Event()
            task = hold_first_text(gone, asyncio.Event(), held)
            app["gone"] = asyncio.get_running_loop().create_task(task)
            await held.wait()

        closed = asyncio.new_event_loop()
        closed.run_until_complete(let_go())
        closed.close()
        del closed
        app.pop("gone")  # cyclic garbage now, uncollected (the collector is off)

        async def start() -> None:
            app["go"], app["held"] = asyncio.Event(), asyncio.Event()
            app["live"] = loop.create_task(hold_first_text(live, app["go"], app["held"]))
            await app["held"].wait()

        loop.run_until_complete(start())
        before = {"gone": rows(store, gone), "live": rows(store, live)}
        assert before["gone"]["active"] == 1 and before["live"]["active"] == 1

        def child() -> dict[str, Any]:
            app.clear()  # the child lets go of what it inherited, as an after-fork reset does
            running = _thread._count()
            gc.collect()  # frees its copies of both drivers
            # An end started for one of them (in a thread of its own) is waited for.
            return {"ended": until(lambda: _thread._count() <= running)}

        assert _in_child(child) == {"ended": True}
        # The child wrote nothing for the parent's replies.
        assert {"gone": rows(store, gone), "live": rows(store, live)} == before

        async def finish() -> list[str]:
            app["go"].set()
            got: list[str] = await app["live"]
            return got

        # The parent's live reply ends as it would have: committed once, not taken from it.
        assert "".join(loop.run_until_complete(finish())) == "one two"
        assert rows(store, live) == {"records": ["q", "one two"], "checkpoints": [], "active": 0}
        # The driver the parent let go is ended by the parent's collector, once.
        gc.collect()
        assert until(lambda: rows(store, gone)["active"] == 0)
        assert until(lambda: gone.checkpoints() != [])
        assert [(p.state, p.text) for p in gone.checkpoints()] == [(ReplyState.INTERRUPTED, "one ")]
    finally:
        app.clear()
        loop.close()
        if enabled:
            gc.enable()
        gc.collect()
        store.close()
