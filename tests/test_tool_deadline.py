"""A reply's deadline bounds its tool rounds: a tool still running when it passes is left.

The reply (OpenAI's SDK on a recorded tool-call round) asks for a tool that blocks until
the test lets it go; the deadline passes while it runs. The call ends then, as any reply
past its deadline does (``StreamInterrupted`` from ``DeadlineExceeded``, the round's call
stored, a checkpoint of what was delivered), while the tool is still blocked. An async tool
is cancelled; a sync one cannot be, and what it returns later is dropped: the call is
answered by the next request's "interrupted" output, as any call left without an output.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from provider_rules import model_for
from replay import Replay, real_fixture
from stores import open_store

from rxcontext import ContextWindow, DeadlineExceeded, RecordType, StreamInterrupted, Tool
from rxcontext.history import INTERRUPTED_TOOL_OUTPUT

pytestmark = pytest.mark.usefixtures("both_stores")

ROUNDS = "openai_chat/tool_call_roundtrip_gpt4o_mini"
CALL_ID = "call_1EYWDzueHEp8OsB8jJSEp7WB"
MULTIPLY = Tool("multiply", "Multiply two numbers.").number("a").number("b")
GUARD = 5.0
"""How long a tool waits to be let go at most: only so the code before the fix (which
waited for the tool) fails instead of hanging; the fixed call returns long before."""


def window() -> tuple[ContextWindow, Replay]:
    replay = Replay(real_fixture(f"{ROUNDS}.1.sse"), real_fixture(f"{ROUNDS}.2.sse"))
    cw = ContextWindow(open_store(), model_for("chat", replay), "deadline")
    return cw, replay


class Blocked:
    """A sync tool that blocks until :attr:`release` is set."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, args: dict[str, Any]) -> str:
        self.thread = threading.current_thread()
        self.started.set()
        self.release.wait(GUARD)
        self.returned.set()
        return "2869461"


def check_cut(cut: StreamInterrupted, cw: ContextWindow, replay: Replay) -> None:
    """The reply ended like any past its deadline: its call stored, no output, one request."""
    assert isinstance(cut.__cause__, DeadlineExceeded)
    assert [c.id for c in cw.checkpoints()] == [cut.checkpoint.id]
    assert cut.checkpoint.text == ""  # the round delivered a tool call, no text
    assert [(r.type, r.tool_call_id) for r in cw.records()] == [
        (RecordType.PROMPT, None),
        (RecordType.TOOL_CALL, CALL_ID),
    ]
    assert len(replay.requests) == 1


def check_next_request(cw: ContextWindow, replay: Replay) -> None:
    """The late output was never stored: the next request answers the call as interrupted."""
    tool_messages = [m for m in replay.bodies[1]["messages"] if m["role"] == "tool"]
    assert tool_messages == [
        {"role": "tool", "tool_call_id": CALL_ID, "content": INTERRUPTED_TOOL_OUTPUT}
    ]
    outputs = [r.content for r in cw.records() if r.type is RecordType.TOOL_OUTPUT]
    assert outputs == [INTERRUPTED_TOOL_OUTPUT]


def test_a_sync_tool_past_the_deadline_is_left_running_and_the_call_ends() -> None:
    cw, replay = window()
    tool = Blocked()
    cw.add_tool(MULTIPLY, tool)
    cw.add_prompt("What is 1231 * 2331?")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call(deadline=1.0)
    assert tool.started.is_set() and not tool.returned.is_set()  # ended while it was blocked
    check_cut(cut.value, cw, replay)
    tool.release.set()
    assert tool.thread is not None
    tool.thread.join(GUARD)  # the tool returned and its thread is done with the result
    assert not tool.thread.is_alive() and tool.returned.is_set()
    assert [r.type for r in cw.records()][-1] is RecordType.TOOL_CALL  # nothing stored late
    cw.add_prompt("And?")
    cw.call()
    check_next_request(cw, replay)


async def test_a_sync_tool_on_asyncio_past_the_deadline_is_left_running_and_the_call_ends():
    cw, replay = window()
    tool = Blocked()
    cw.add_tool(MULTIPLY, tool)
    cw.add_prompt("What is 1231 * 2331?")
    with pytest.raises(StreamInterrupted) as cut:
        await cw.acall(deadline=1.0)
    assert tool.started.is_set() and not tool.returned.is_set()
    check_cut(cut.value, cw, replay)
    tool.release.set()
    assert tool.thread is not None
    await asyncio.to_thread(tool.thread.join, GUARD)
    assert not tool.thread.is_alive() and tool.returned.is_set()
    assert [r.type for r in cw.records()][-1] is RecordType.TOOL_CALL
    cw.add_prompt("And?")
    await cw.acall()
    check_next_request(cw, replay)


async def test_an_async_tool_past_the_deadline_is_cancelled_and_the_call_ends() -> None:
    cw, replay = window()
    started, release = asyncio.Event(), asyncio.Event()
    ended: list[str] = []

    async def tool(args: dict[str, Any]) -> str:
        started.set()
        try:
            async with asyncio.timeout(GUARD):
                await release.wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        ended.append("returned")
        return "2869461"

    cw.add_tool(MULTIPLY, tool)
    cw.add_prompt("What is 1231 * 2331?")
    with pytest.raises(StreamInterrupted) as cut:
        await cw.acall(deadline=1.0)
    assert started.is_set() and ended == ["cancelled"]
    check_cut(cut.value, cw, replay)
    release.set()
    assert ended == ["cancelled"]
    cw.add_prompt("And?")
    await cw.acall()
    check_next_request(cw, replay)


class Awaiting:
    """An async tool that waits for a future nobody sets (at most ``GUARD``), noting what
    became of it; ``side effect`` is what it does only if it is not cancelled first."""

    def __init__(self, swallow: bool = False) -> None:
        self.swallow = swallow
        self.started = threading.Event()
        self.ended: list[str] = []
        self.thread: threading.Thread | None = None

    async def __call__(self, args: dict[str, Any]) -> str:
        self.thread = threading.current_thread()
        self.started.set()
        try:
            async with asyncio.timeout(GUARD):
                await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            if not self.swallow:
                raise
            return "a late output"
        except TimeoutError:
            self.ended.append("not cancelled")
        self.ended.append("side effect")
        return "2869461"


@pytest.mark.parametrize("swallow", [False, True], ids=["unwinds", "returns-anyway"])
def test_an_async_tool_on_the_blocking_path_past_the_deadline_is_cancelled(swallow: bool) -> None:
    cw, replay = window()
    tool = Awaiting(swallow)
    cw.add_tool(MULTIPLY, tool)
    cw.add_prompt("What is 1231 * 2331?")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call(deadline=1.0)
    assert tool.started.is_set()
    assert tool.ended == ["cancelled"]  # it was cancelled, and unwound, before the call ended
    check_cut(cut.value, cw, replay)
    assert tool.thread is not None
    tool.thread.join(GUARD)  # its thread is done with it: nothing happens later
    assert not tool.thread.is_alive()
    assert tool.ended == ["cancelled"]
    assert [r.type for r in cw.records()][-1] is RecordType.TOOL_CALL  # nothing stored late
    cw.add_prompt("And?")
    cw.call()
    check_next_request(cw, replay)


def test_a_sync_tool_left_running_past_the_deadline_runs_its_sub_agents_async_tools() -> None:
    """What a sync tool of the round runs (a sub-agent with an async tool) is not the
    round's: the round's deadline cancels the round's own async tools only, as on asyncio."""
    cw, _ = window()
    release = threading.Event()
    out: dict[str, Any] = {}
    done = threading.Event()

    async def multiply(args: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return str(int(args["a"] * args["b"]))

    def delegate(args: dict[str, Any]) -> str:
        try:
            release.wait(GUARD)  # until the outer call has ended at its deadline
            sub, _ = window()
            sub.add_tool(MULTIPLY, multiply)
            sub.add_prompt("What is 1231 * 2331?")
            out["reply"] = sub.call().text
            out["outputs"] = [r.content for r in sub.records() if r.type is RecordType.TOOL_OUTPUT]
        except BaseException as error:  # what reached the tool: shown in the assertion
            out["error"] = repr(error)
        finally:
            done.set()
        return "2869461"

    cw.add_tool(MULTIPLY, delegate)
    cw.add_prompt("What is 1231 * 2331?")
    with pytest.raises(StreamInterrupted) as cut:
        cw.call(deadline=1.0)
    assert isinstance(cut.value.__cause__, DeadlineExceeded)
    release.set()
    assert done.wait(GUARD)
    assert "error" not in out, out
    assert out["outputs"] == ["2869461"] and out["reply"]
