"""A sync tool that runs a sub-agent to its end never waits for a tool thread it holds.

A round of as many parallel calls as the cap on sync tools (``SHARED_WORKERS``) fills every
tool thread with a sync tool that runs a sub-agent (``acall``, OpenAI's SDK on crafted
rounds) and waits for it; the sub-agent's own sync tool needs a thread too. The sub-agent
runs the three ways a sync tool may: ``asyncio.run`` on the tool's thread, ``asyncio.run``
on a thread of an executor of the tool's own, or on the caller's loop
(``run_coroutine_threadsafe``). Each sub-agent ends and its text is the tool's output.

A barrier holds the outer tools until all of them run at once (the cap is full), so the
sub-agents' tools are asked for while no thread of the cap is free. Every wait is bounded
(``GUARD``): a sub-agent that cannot get a thread is given up after it, its tool's output is
an error and the test fails, instead of hanging (and of leaving the process's tool threads
stuck for the tests after it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay, sse

import rxcontext
from rxcontext import ContextWindow, RecordType, Tool
from rxcontext._toolthreads import SHARED_WORKERS

N = SHARED_WORKERS
"""A round that fills the cap."""
GUARD = 10.0
"""How long any wait of the test lasts at most: only so a deadlock fails the test."""
LOOKUP = Tool("lookup", "Look up.").string("q")
DELEGATE = Tool("delegate", "Ask a sub-agent.").string("q")


def tool_round(name: str, n: int) -> bytes:
    """An OpenAI chat stream asking for ``n`` calls of tool ``name`` at once (``q``: i)."""
    base = {"id": "chatcmpl-nested", "object": "chat.completion.chunk", "created": 1}
    base["model"] = "gpt-test"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events: list[Any] = [chunk({"role": "assistant", "content": None})]
    for i in range(n):
        function = {"name": name, "arguments": f'{{"q": "{i}"}}'}
        call = {"index": i, "id": f"call_{i}", "type": "function", "function": function}
        events.append(chunk({"tool_calls": [call]}))
    events.append(chunk({}, "tool_calls"))
    usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    events += [{**base, "choices": [], "usage": usage}, "[DONE]"]
    return sse(*events)


def sub_agent(q: str) -> ContextWindow:
    """A window whose reply calls its sync tool ``lookup`` once, then says ``sub <q>``.
    (Its own SQLite in memory: the tool threads are under test, not the store.)"""
    replay = Replay(tool_round("lookup", 1), text_body("chat", [f"sub {q}"]))
    sub = ContextWindow(rxcontext.open(":memory:"), model_for("chat", replay), f"sub-{q}")
    sub.add_tool(LOOKUP, lambda args: "found")
    sub.add_prompt(q)
    return sub


def on_this_thread(sub: ContextWindow, loop: asyncio.AbstractEventLoop) -> str:
    return asyncio.run(asyncio.wait_for(sub.acall(), GUARD)).text


def on_an_executor(sub: ContextWindow, loop: asyncio.AbstractEventLoop) -> str:
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(on_this_thread, sub, loop).result()


def on_the_callers_loop(sub: ContextWindow, loop: asyncio.AbstractEventLoop) -> str:
    reply = asyncio.run_coroutine_threadsafe(sub.acall(), loop)
    try:
        return reply.result(GUARD).text
    finally:
        reply.cancel()  # given up: its queued tool never starts


Way = Callable[[ContextWindow, asyncio.AbstractEventLoop], str]


class Delegate:
    """A sync tool that waits until all ``N`` of its calls run at once, then runs a
    sub-agent ``way`` and returns its text."""

    def __init__(self, way: Way, loop: asyncio.AbstractEventLoop) -> None:
        self.way = way
        self.loop = loop
        self.together = threading.Barrier(N, timeout=GUARD)

    def __call__(self, args: dict[str, Any]) -> str:
        self.together.wait()
        return self.way(sub_agent(args["q"]), self.loop)


@pytest.mark.parametrize("way", [on_this_thread, on_an_executor, on_the_callers_loop])
async def test_sub_agents_run_by_sync_tools_that_fill_the_cap_end(way: Way) -> None:
    replay = Replay(tool_round("delegate", N), text_body("chat", ["all done"]))
    cw = ContextWindow(rxcontext.open(":memory:"), model_for("chat", replay), "outer")
    cw.add_tool(DELEGATE, Delegate(way, asyncio.get_running_loop()))
    cw.add_prompt("Ask them all.")
    reply = await asyncio.wait_for(cw.acall(), 3 * GUARD)
    assert reply.text == "all done"
    outputs = [
        (r.tool_call_id, r.content) for r in cw.records() if r.type is RecordType.TOOL_OUTPUT
    ]
    assert outputs == [(f"call_{i}", f"sub {i}") for i in range(N)]
