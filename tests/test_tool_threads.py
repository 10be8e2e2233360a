"""Sync tools on asyncio run on a bounded number of threads, shared by the whole process.

A round of many parallel calls, or many replies at once each running a tool, queues its
sync tools for the process's tool threads: at most ``SHARED_WORKERS`` run at once, and the
rest start as those return, rather than one new thread per call. The replies (OpenAI's SDK
on crafted rounds of tool calls) still complete with every output stored.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay, sse
from stores import open_store

from rxcontext import ContextWindow, RecordType, Tool
from rxcontext._toolthreads import SHARED_WORKERS

pytestmark = pytest.mark.usefixtures("both_stores")

N = 50
"""More calls than the cap on any machine (it is at most 32)."""
MULTIPLY = Tool("multiply", "Multiply two numbers.").number("a").number("b")
GUARD = 10.0
"""How long the test waits for the tools to fill the cap, and they to be let go, at most:
only so a failure ends instead of hanging."""


def tool_round(n: int) -> bytes:
    """An OpenAI chat stream asking for ``n`` multiply calls at once (call ``i``: ``i * 2``)."""
    base = {"id": "chatcmpl-threads", "object": "chat.completion.chunk", "created": 1}
    base["model"] = "gpt-test"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events: list[Any] = [chunk({"role": "assistant", "content": None})]
    for i in range(n):
        function = {"name": "multiply", "arguments": f'{{"a": {i}, "b": 2}}'}
        call = {"index": i, "id": f"call_{i}", "type": "function", "function": function}
        events.append(chunk({"tool_calls": [call]}))
    events.append(chunk({}, "tool_calls"))
    usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    events += [{**base, "choices": [], "usage": usage}, "[DONE]"]
    return sse(*events)


class Gauge:
    """A sync tool that counts how many of its calls run at once, and holds them all until
    :attr:`release` is set; :attr:`full` is set once ``cap`` of them run together."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.threads: set[threading.Thread] = set()
        self.full = threading.Event()
        self.release = threading.Event()

    def __call__(self, args: dict[str, Any]) -> str:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread())
            if self.running == self.cap:
                self.full.set()
        try:
            self.release.wait(GUARD)
            return str(int(args["a"] * args["b"]))
        finally:
            with self.lock:
                self.running -= 1


def outputs(cw: ContextWindow) -> list[tuple[str | None, str]]:
    return [(r.tool_call_id, r.content) for r in cw.records() if r.type is RecordType.TOOL_OUTPUT]


async def test_a_round_of_many_parallel_sync_calls_runs_at_most_the_cap_at_once() -> None:
    replay = Replay(tool_round(N), text_body("chat", ["done"]))
    cw = ContextWindow(open_store(), model_for("chat", replay), "threads")
    gauge = Gauge(SHARED_WORKERS)
    cw.add_tool(MULTIPLY, gauge)
    cw.add_prompt("Double 0 to 49.")
    reply = asyncio.ensure_future(cw.acall())
    # Every call of the round was handed over in one step of the loop, before this wakes.
    assert await asyncio.to_thread(gauge.full.wait, GUARD)
    gauge.release.set()
    assert (await reply).text == "done"
    assert gauge.most == SHARED_WORKERS  # the cap was used, never passed
    assert len(gauge.threads) <= SHARED_WORKERS  # its threads took the queued calls
    expected = [(f"call_{i}", str(i * 2)) for i in range(N)]
    assert outputs(cw) == expected
    tool_messages = [m for m in replay.bodies[1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages] == expected


async def test_many_replies_at_once_share_the_cap() -> None:
    store = open_store()
    gauge = Gauge(SHARED_WORKERS)
    windows: list[ContextWindow] = []
    for i in range(N):
        replay = Replay(tool_round(1), text_body("chat", [f"done {i}"]))
        cw = ContextWindow(store, model_for("chat", replay), f"reply-{i}")
        cw.add_tool(MULTIPLY, gauge)
        cw.add_prompt("Double 0.")
        windows.append(cw)
    replies = asyncio.gather(*(cw.acall() for cw in windows))
    assert await asyncio.to_thread(gauge.full.wait, GUARD)
    gauge.release.set()
    assert [r.text for r in await replies] == [f"done {i}" for i in range(N)]
    assert gauge.most == SHARED_WORKERS
    assert all(outputs(cw) == [("call_0", "0")] for cw in windows)
