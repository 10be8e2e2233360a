"""A subscriber that has received the final DONE and then lets go keeps its reply.

``first(DONE)``, ``take_while(..., inclusive=True)``, a dispose from another thread after
DONE, ``break`` on DONE in ``astream()``, a task cancelled while it holds DONE: the user has
every chunk, so the reply is committed as it would be at the end of the stream (a MODEL_RESP,
no checkpoint) and the next request carries it. A DONE that ends a tool round (calls still to
run) is not the end of the reply: letting go there interrupts it, as any dispose does.
Real OpenAI SDK over a replaying transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from reactivex import operators as ops
from reactivex.scheduler import NewThreadScheduler
from replay import Replay, real_fixture

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, ReplyState, Tool

BOUND = 10.0
"""How long a test waits for a thread at most (it fails instead of hanging)."""

TEXT = ["one ", "two ", "three"]


def is_done(chunk: Chunk) -> bool:
    return chunk.kind is ChunkKind.DONE


def window() -> tuple[ContextWindow, Replay]:
    replay = Replay(text_body("chat", TEXT), text_body("chat", ["and more"]))
    cw = ContextWindow(rxcontext.open(":memory:"), model_for("chat", replay), "done", retry=None)
    cw.add_prompt("count")
    return cw, replay


def check_whole(cw: ContextWindow, replay: Replay) -> None:
    """The reply is stored whole, nothing is left to resume, and the next request has it."""
    assert cw.checkpoints() == []
    assert cw.active_replies() == []
    assert [(r.type, r.content) for r in cw.records()] == [
        (RecordType.PROMPT, "count"),
        (RecordType.MODEL_RESP, "".join(TEXT)),
    ]
    cw.add_prompt("and then?")
    assert cw.call().text == "and more"
    roles = [(m["role"], m["content"]) for m in replay.bodies[1]["messages"]]
    assert roles == [("user", "count"), ("assistant", "".join(TEXT)), ("user", "and then?")]


@pytest.mark.parametrize(
    "operator",
    [ops.first(is_done), ops.take_while(lambda c: not is_done(c), inclusive=True)],
    ids=["first", "take_while_inclusive"],
)
def test_letting_go_on_the_producers_thread_after_done_keeps_the_reply(operator: Any) -> None:
    cw, replay = window()
    got: list[Any] = []
    cw.stream().pipe(operator).subscribe(got.append, got.append, lambda: got.append("completed"))
    assert got[-2:] == [got[-2], "completed"] and is_done(got[-2])
    check_whole(cw, replay)


def test_a_dispose_from_another_thread_after_done_keeps_the_reply() -> None:
    cw, replay = window()
    threads: list[threading.Thread] = []

    def factory(target: Any, **_: Any) -> threading.Thread:
        thread = threading.Thread(target=target, daemon=True)
        threads.append(thread)
        return thread

    has_done, disposed = threading.Event(), threading.Event()

    def on_next(chunk: Chunk) -> None:
        if is_done(chunk):
            has_done.set()
            disposed.wait(BOUND)  # the dispose comes while the subscriber holds DONE

    sub = cw.stream().pipe(ops.subscribe_on(NewThreadScheduler(factory))).subscribe(on_next)
    assert has_done.wait(BOUND)
    sub.dispose()
    disposed.set()
    threads[0].join(BOUND)
    assert not threads[0].is_alive()
    check_whole(cw, replay)


async def test_break_on_done_in_astream_keeps_the_reply() -> None:
    cw, replay = window()
    async with contextlib.aclosing(cw.astream()) as stream:
        async for chunk in stream:
            if is_done(chunk):
                break
    check_whole(cw, replay)


async def test_a_task_cancelled_while_it_holds_done_keeps_the_reply() -> None:
    cw, replay = window()
    stream = cw.astream()
    has_done = asyncio.Event()

    async def consume() -> None:
        async for chunk in stream:
            if is_done(chunk):
                has_done.set()
                await asyncio.Event().wait()  # holds DONE until cancelled

    task = asyncio.create_task(consume())
    await asyncio.wait_for(has_done.wait(), BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()  # waits for what the task's end wrote
    check_whole(cw, replay)


ROUNDS = "openai_chat/tool_call_roundtrip_gpt4o_mini"


@pytest.mark.parametrize("path", ["sync", "asyncio"])
def test_letting_go_at_a_tool_rounds_done_interrupts_the_reply(path: str) -> None:
    replay = Replay(real_fixture(f"{ROUNDS}.1.sse"), real_fixture(f"{ROUNDS}.2.sse"))
    cw = ContextWindow(rxcontext.open(":memory:"), model_for("chat", replay), "tools")
    ran: list[Any] = []
    cw.add_tool(
        Tool("multiply", "Multiply two numbers.").number("a").number("b"),
        lambda args: ran.append(args) or "2869461",
    )
    cw.add_prompt("What is 1231 * 2331?")
    if path == "sync":
        cw.stream().pipe(ops.first(is_done)).subscribe(lambda _: None)
    else:

        async def consume() -> None:
            async with contextlib.aclosing(cw.astream()) as stream:
                async for chunk in stream:
                    if is_done(chunk):
                        break

        asyncio.run(consume())
    assert ran == []
    assert len(replay.requests) == 1
    assert [c.state for c in cw.checkpoints()] == [ReplyState.INTERRUPTED]
    assert RecordType.MODEL_RESP not in [r.type for r in cw.records()]


class UIError(Exception):
    """The user's own code failing after it had every chunk (a UI refresh, say)."""


def raise_on_done(error: BaseException) -> Any:
    def show(chunk: Chunk) -> None:
        if is_done(chunk):
            raise error

    return show


async def consume_raising(stream: Any, error: BaseException, *, closing: bool) -> None:
    show = raise_on_done(error)
    if closing:
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                show(chunk)
    else:
        async for chunk in stream:
            show(chunk)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("sync", UIError("UI refresh failed")),
        ("sync", KeyboardInterrupt()),
        ("sync_timed", UIError("UI refresh failed")),
        ("asyncio_aclosing", UIError("UI refresh failed")),
        ("asyncio_dropped", UIError("UI refresh failed")),
        ("asyncio_aclosing", KeyboardInterrupt()),
    ],
    ids=["sync", "sync_ctrl_c", "sync_timed", "aclosing", "dropped", "aclosing_ctrl_c"],
)
def test_the_users_code_raising_on_done_keeps_the_reply(path: str, error: BaseException) -> None:
    """The subscriber had every chunk when its own code raised: the reply is committed, sync
    and asyncio alike, and the user gets their exception as plain RxPY (or the loop) gives
    it, never as the stream's error."""
    cw, replay = window()
    if path == "sync_timed":
        cw.timeouts = rxcontext.Timeouts(idle=BOUND)
    errors: list[Exception] = []
    with pytest.raises(type(error)) as raised:
        if path.startswith("sync"):
            cw.stream().subscribe(raise_on_done(error), errors.append)
        else:
            asyncio.run(consume_raising(cw.astream(), error, closing=path == "asyncio_aclosing"))
    assert raised.value is error
    assert errors == []
    check_whole(cw, replay)


@pytest.mark.parametrize("path", ["sync", "asyncio"])
def test_the_users_code_raising_at_a_tool_rounds_done_interrupts_the_reply(path: str) -> None:
    replay = Replay(real_fixture(f"{ROUNDS}.1.sse"), real_fixture(f"{ROUNDS}.2.sse"))
    cw = ContextWindow(rxcontext.open(":memory:"), model_for("chat", replay), "tools")
    ran: list[Any] = []
    cw.add_tool(
        Tool("multiply", "Multiply two numbers.").number("a").number("b"),
        lambda args: ran.append(args) or "2869461",
    )
    cw.add_prompt("What is 1231 * 2331?")
    error = UIError("UI refresh failed")
    with pytest.raises(UIError):
        if path == "sync":
            cw.stream().subscribe(raise_on_done(error))
        else:
            asyncio.run(consume_raising(cw.astream(), error, closing=True))
    assert ran == []
    assert [c.state for c in cw.checkpoints()] == [ReplyState.INTERRUPTED]
    assert RecordType.MODEL_RESP not in [r.type for r in cw.records()]
