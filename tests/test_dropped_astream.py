"""An ``astream()`` left with ``break`` and dropped (no ``aclosing``) during a tool loop: the
next request in its context is the one the blocking twin sends.

The dropped generator is closed by the event loop's async-generator finaliser a few loop
turns later; a request built before that must not leave the reply out as still streaming
(and have its tool round reappear in the request after, before the prompt it answered):
a new asyncio request first lets this process's dropped replies of its context settle.
Real OpenAI SDK over a replaying transport; both stores.
"""

from __future__ import annotations

from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from reactivex import operators as ops
from replay import Replay, real_fixture
from stores import open_store

from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, Tool

pytestmark = pytest.mark.usefixtures("both_stores")

ROUNDS = "openai_chat/tool_call_roundtrip_gpt4o_mini"


def window() -> tuple[ContextWindow, Replay]:
    replay = Replay(
        real_fixture(f"{ROUNDS}.1.sse"),
        real_fixture(f"{ROUNDS}.2.sse"),
        text_body("chat", ["and more"]),
    )
    cw = ContextWindow(open_store(), model_for("chat", replay), "drop", retry=None)
    cw.add_tool(Tool("multiply", "Multiply two numbers.").number("a").number("b"), lambda _: "6")
    cw.add_prompt("What is 2 * 3?")
    return cw, replay


def is_result(chunk: Chunk) -> bool:
    return chunk.kind is ChunkKind.TOOL_RESULT


def then_two_calls_sync(cw: ContextWindow) -> None:
    cw.add_prompt("next")
    cw.call()
    cw.add_prompt("more")
    cw.call()


async def then_two_calls(cw: ContextWindow) -> None:
    cw.add_prompt("next")
    await cw.acall()
    cw.add_prompt("more")
    await cw.acall()


def sent(replay: Replay) -> list[list[Any]]:
    return [body["messages"] for body in replay.bodies]


def sync_twin() -> list[list[Any]]:
    cw, replay = window()
    cw.stream().pipe(ops.take_while(lambda c: not is_result(c), inclusive=True)).subscribe(
        lambda _: None
    )
    then_two_calls_sync(cw)
    assert [c.state for c in cw.checkpoints()] == [ReplyState.INTERRUPTED]
    return sent(replay)


async def test_a_dropped_astream_in_a_tool_loop_sends_what_the_sync_twin_sends() -> None:
    cw, replay = window()
    async for chunk in cw.astream():
        if is_result(chunk):
            break  # the stream is dropped here, unclosed
    await then_two_calls(cw)
    assert [c.state for c in cw.checkpoints()] == [ReplyState.INTERRUPTED]
    requests = sent(replay)
    roles = [[m["role"] + ("+calls" if m.get("tool_calls") else "") for m in r] for r in requests]
    assert roles[1] == ["user", "assistant+calls", "tool", "user"]
    assert roles[2] == ["user", "assistant+calls", "tool", "user", "assistant", "user"]
    assert requests == sync_twin()


async def test_the_next_astream_waits_for_the_dropped_one_too() -> None:
    cw, replay = window()
    async for chunk in cw.astream():
        if is_result(chunk):
            break
    cw.add_prompt("next")
    async for _ in cw.astream():
        pass
    cw.add_prompt("more")
    await cw.acall()
    assert sent(replay) == sync_twin()


def one_reply() -> tuple[ContextWindow, Replay]:
    replay = Replay(text_body("chat", ["one ", "two"]), text_body("chat", ["and more"]))
    cw = ContextWindow(open_store(), model_for("chat", replay), "drop", retry=None)
    cw.add_prompt("count")
    return cw, replay


async def test_a_stream_dropped_holding_the_final_done_is_in_the_next_request() -> None:
    """Dropped holding DONE, the reply is committed (as ``first(DONE)`` has it on the blocking
    path); the next request, made at once, carries it."""
    cw, replay = one_reply()
    async for chunk in cw.astream():
        if chunk.kind is ChunkKind.DONE:
            break
    cw.add_prompt("and then?")
    assert (await cw.acall()).text == "and more"
    assert cw.checkpoints() == []
    assert [(m["role"], m["content"]) for m in replay.bodies[1]["messages"]] == [
        ("user", "count"),
        ("assistant", "one two"),
        ("user", "and then?"),
    ]


async def test_a_stream_still_held_is_not_waited_for() -> None:
    """A stream its consumer still holds may go on: the next reply does not wait for it
    (it is left out of the request as busy, as a concurrent reply is)."""
    cw, replay = one_reply()
    held = cw.astream()
    first = await anext(held)
    assert first.kind is ChunkKind.TEXT
    cw.add_prompt("meanwhile")
    assert (await cw.acall()).text == "and more"
    assert [(m["role"], m["content"]) for m in replay.bodies[1]["messages"]] == [
        ("user", "count"),
        ("user", "meanwhile"),
    ]
    await held.aclose()
    assert [c.state for c in cw.checkpoints()] == [ReplyState.INTERRUPTED]
