"""Middleware hooks through the real ``openai`` SDK on the replay transport: async hooks are
awaited on asyncio (and refused, before anything is sent, on the blocking path), and a hook's
own exception is never a reason to send the request again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from provider_rules import model_for
from replay import Replay, real_fixture

import rxcontext
from rxcontext import (
    Chunk,
    ChunkKind,
    ContextWindow,
    RecordType,
    ReplyStopped,
    RetryPolicy,
    StreamInterrupted,
    Timeouts,
    Tool,
)
from rxcontext import operators as rxops
from tests.test_heartbeat import WAIT, in_thread, rounds

RECORDED = "openai_chat/azure_prompt_filter_results.sse"
ROUND_TRIP = (
    "openai_chat/tool_call_roundtrip_gpt4o_mini.1.sse",
    "openai_chat/tool_call_roundtrip_gpt4o_mini.2.sse",
)
# Three tries, no waiting to speak of: a retry, if one were made, would show as a request.
RETRIES = RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0.0)


def window(store: Any, replay: Replay, **kw: Any) -> ContextWindow:
    cw = ContextWindow(store, model_for("chat", replay), "hooks", retry=RETRIES, **kw)
    cw.add_prompt("hello")
    return cw


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


def consume(cw: ContextWindow, path: str, *hooks: rxops.Middleware) -> list[Chunk]:
    """Run one reply on ``path``; the chunks the consumer got (raises what it raised)."""
    got: list[Chunk] = []
    if path == "call":
        cw.call(*hooks)
    elif path == "stream":
        errors: list[Exception] = []
        cw.stream(*hooks).subscribe(got.append, errors.append)
        if errors:
            raise errors[0]
    elif path == "acall":
        asyncio.run(cw.acall(*hooks))
    else:

        async def iterate() -> None:
            async for chunk in cw.astream(*hooks):
                got.append(chunk)

        asyncio.run(iterate())
    return got


# -- async hooks on asyncio -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["astream", "acall"])
def test_async_hooks_are_awaited_on_asyncio(make_store: Callable[..., Any], path: str) -> None:
    replay = Replay(*(real_fixture(f) for f in ROUND_TRIP))
    cw = window(make_store(), replay)
    cw.add_tool(Tool("multiply", "a*b").number("a", "a").number("b", "b"), lambda a: "2869461")
    seen: list[str] = []

    async def on_start() -> None:
        await asyncio.sleep(0)
        seen.append("start")

    async def on_chunk(chunk: Chunk) -> None:
        await asyncio.sleep(0)
        if chunk.text and chunk.kind is ChunkKind.TEXT:
            seen.append(chunk.text)

    async def on_tool_call(chunk: Chunk) -> None:
        await asyncio.sleep(0)
        seen.append(f"call {chunk.name}")

    async def on_tool_result(chunk: Chunk) -> None:
        await asyncio.sleep(0)
        seen.append(f"result {chunk.text}")

    async def on_complete() -> None:
        await asyncio.sleep(0)
        seen.append("complete")

    hooks = rxops.middleware(
        on_start, on_chunk, on_complete, on_tool_call=on_tool_call, on_tool_result=on_tool_result
    )
    consume(cw, path, hooks)
    assert seen[:3] == ["start", "call multiply", "result 2869461"] and seen[-1] == "complete"
    deltas = seen[3:-1]  # the second round's text, as the hook saw it
    assert len(deltas) > 1 and "".join(deltas) == replies(cw)[-1]


@pytest.mark.parametrize("path", ["astream", "acall"])
def test_an_async_chunk_hook_that_raises_stops_the_reply_as_a_sync_one_does(
    make_store: Callable[..., Any], path: str
) -> None:
    replay = Replay(real_fixture(RECORDED))
    cw = window(make_store(), replay)
    policy = RuntimeError("stop this reply: policy violation")
    passed: list[str] = []
    errors: list[BaseException] = []

    async def on_chunk(chunk: Chunk) -> None:
        await asyncio.sleep(0)
        if len(passed) == 3:
            raise policy
        passed.append(chunk.text)

    async def on_error(error: BaseException) -> None:
        await asyncio.sleep(0)
        errors.append(error)

    with pytest.raises(StreamInterrupted) as info:
        consume(cw, path, rxops.middleware(on_chunk=on_chunk, on_error=on_error))
    assert info.value.__cause__ is policy
    assert errors == [policy]
    assert info.value.checkpoint.text == "".join(passed)
    assert replies(cw) == []
    assert len(replay.requests) == 1


def test_a_stop_while_an_async_hook_awaits_lets_it_finish(make_store: Callable[..., Any]) -> None:
    """``cw.stop`` while an async chunk hook awaits (asks a person, say) waits for the hook,
    as for the tool-approval hook, rather than cancelling it under its feet: the consumer
    gets StreamInterrupted caused by the stop, not a CancelledError."""
    store = make_store(lease_ttl=0.6)
    cw = window(store, Replay(real_fixture(RECORDED)), checkpoint_every=None)
    holding = threading.Event()
    person: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    finished: list[str] = []
    got: list[str] = []
    outcome: list[BaseException] = []

    async def on_chunk(chunk: Chunk) -> None:
        if chunk.text and not person:
            person.append((asyncio.get_running_loop(), asyncio.Event()))
            holding.set()
            await asyncio.wait_for(person[0][1].wait(), WAIT)
            finished.append(chunk.text)

    def consume() -> None:
        async def main() -> None:
            async for chunk in cw.astream(rxops.middleware(on_chunk=on_chunk), reply_id="r"):
                got.append(chunk.text)

        try:
            asyncio.run(main())
        except BaseException as error:
            outcome.append(error)

    consumer = in_thread(consume)
    assert holding.wait(WAIT)
    assert cw.stop("r") is True
    rounds(store, 2)  # the heartbeat handed the stop to the driver's loop
    loop, decided = person[0]
    loop.call_soon_threadsafe(decided.set)
    consumer.join(WAIT)
    assert not consumer.is_alive()
    (error,) = outcome
    assert isinstance(error, StreamInterrupted) and isinstance(error.__cause__, ReplyStopped)
    assert len(finished) == 1
    assert error.checkpoint.text == "".join(got)


def test_asummarize_awaits_an_async_chunk_hook() -> None:
    replay = Replay(real_fixture(RECORDED))
    cw = window(rxcontext.open(":memory:"), replay)
    cw.add_prompt("and another")
    stop = RuntimeError("enough")
    seen: list[str] = []

    async def on_chunk(chunk: Chunk) -> None:
        await asyncio.sleep(0)
        seen.append(chunk.text)
        if len(seen) == 2:
            raise stop

    with pytest.raises(RuntimeError) as info:
        asyncio.run(cw.asummarize(on_chunk=on_chunk))
    assert info.value is stop and len(seen) == 2
    assert replay.closed == 1


# -- async hooks on the blocking path ----------------------------------------------------------


async def _async_hook(*_: Any) -> None:
    pass


@pytest.mark.parametrize("path", ["call", "stream"])
@pytest.mark.parametrize(
    "hook", ["on_start", "on_chunk", "on_complete", "on_error", "on_tool_call", "on_tool_result"]
)
def test_an_async_hook_on_the_blocking_path_is_refused_before_anything_is_sent(
    make_store: Callable[..., Any], path: str, hook: str
) -> None:
    replay = Replay(real_fixture(RECORDED))
    cw = window(make_store(), replay)
    with pytest.raises(TypeError) as info:
        consume(cw, path, rxops.middleware(**{hook: _async_hook}))
    message = str(info.value)
    assert hook in message and "astream()" in message and "acall()" in message
    assert replay.requests == []
    assert replies(cw) == [] and cw.active_replies() == []
    assert cw.store.checkpoints(cw.context_id, include_resolved=True) == []


def test_an_async_hook_given_to_the_window_is_refused_on_the_blocking_path() -> None:
    replay = Replay(real_fixture(RECORDED))
    cw = window(
        rxcontext.open(":memory:"), replay, middleware=[rxops.middleware(on_chunk=_async_hook)]
    )
    with pytest.raises(TypeError, match="acall"):
        cw.call()
    assert replay.requests == []


def test_an_async_hook_piped_as_an_operator_is_refused() -> None:
    cw = window(rxcontext.open(":memory:"), Replay(real_fixture(RECORDED)))
    with pytest.raises(TypeError, match="on_chunk"):
        cw.stream().pipe(rxops.middleware(on_chunk=_async_hook))


def test_summarize_refuses_an_async_chunk_hook_before_asking_the_model() -> None:
    replay = Replay(real_fixture(RECORDED))
    cw = window(rxcontext.open(":memory:"), replay)
    with pytest.raises(TypeError, match="asummarize"):
        cw.summarize(on_chunk=_async_hook)
    assert replay.requests == []


# -- a hook's exception is not the provider's -------------------------------------------------


@pytest.mark.parametrize("path", ["call", "stream", "acall", "astream"])
@pytest.mark.parametrize("error", [ConnectionRefusedError, TimeoutError])
@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
def test_a_hook_raising_a_connection_error_is_not_retried(
    make_store: Callable[..., Any], path: str, error: type[Exception], timed: bool
) -> None:
    replay = Replay(*[real_fixture(RECORDED)] * 3)
    cw = window(make_store(), replay, timeouts=Timeouts(idle=600) if timed else None)
    webhook = error("my audit webhook is down")
    calls: list[Chunk] = []

    def on_chunk(chunk: Chunk) -> None:
        calls.append(chunk)
        raise webhook

    with pytest.raises(StreamInterrupted) as info:
        consume(cw, path, rxops.middleware(on_chunk=on_chunk))
    assert info.value.__cause__ is webhook
    assert len(replay.requests) == 1 and len(calls) == 1
    assert info.value.checkpoint.text == ""  # the hook raised before its chunk was delivered
    assert replies(cw) == []


@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
def test_a_subscriber_raising_a_connection_error_is_not_retried(
    make_store: Callable[..., Any], timed: bool
) -> None:
    replay = Replay(*[real_fixture(RECORDED)] * 3)
    cw = window(make_store(), replay, timeouts=Timeouts(idle=600) if timed else None)
    refused = ConnectionRefusedError("my UI's socket is gone")
    got: list[Chunk] = []

    def on_next(chunk: Chunk) -> None:
        got.append(chunk)
        raise refused

    with pytest.raises(ConnectionRefusedError) as info:
        cw.stream().subscribe(on_next)
    assert info.value is refused
    assert len(replay.requests) == 1 and len(got) == 1
    [checkpoint] = cw.checkpoints()
    assert checkpoint.text == got[0].text


@pytest.mark.parametrize("path", ["stream", "call"])
def test_a_tool_hook_set_by_on_chunk_runs_for_that_chunk(
    make_store: Callable[..., Any], path: str
) -> None:
    # The sync driver calls a lone on_chunk directly; a tool hook it sets still runs for
    # the chunk that set it, as Middleware.chunk runs it.
    replay = Replay(*(real_fixture(f) for f in ROUND_TRIP))
    cw = window(make_store(), replay)
    cw.add_tool(Tool("multiply", "a*b").number("a", "a").number("b", "b"), lambda a: "2869461")
    seen: list[str] = []
    hooks = rxops.middleware()

    def on_chunk(chunk: Chunk) -> None:
        if chunk.kind is ChunkKind.TOOL_CALL and chunk.name and hooks.on_tool_call is None:
            hooks.on_tool_call = lambda c: seen.append(f"call {c.name}")
        if chunk.kind is ChunkKind.TOOL_RESULT:
            hooks.on_chunk = None  # and one unset meanwhile is not called again
            hooks.on_tool_result = lambda c: seen.append(f"result {c.text}")

    hooks.on_chunk = on_chunk
    consume(cw, path, hooks)
    assert seen == ["call multiply", "result 2869461"]
    assert hooks.only_on_chunk is None


def test_only_on_chunk_follows_the_hooks_set() -> None:
    def on_chunk(chunk: Chunk) -> None:
        pass

    hooks = rxops.middleware(on_chunk=on_chunk)
    assert hooks.only_on_chunk is on_chunk
    hooks.on_tool_result = on_chunk
    assert hooks.only_on_chunk is None
    hooks.on_tool_result = None
    assert hooks.only_on_chunk is on_chunk

    class Own(rxops.Middleware):
        def chunk(self, chunk: Chunk) -> None:
            pass

    assert Own(on_chunk=on_chunk).only_on_chunk is None


@pytest.mark.parametrize("deadline", [None, 60.0])
def test_a_wrapped_chunk_runs_for_every_chunk(deadline: float | None) -> None:
    """A spy on ``Middleware.chunk`` (``mock.patch.object``) or a wrapper set on a subclass
    instance runs for every chunk, on the untimed per-chunk path as on the timed one: the
    driver's shortcut to ``on_chunk`` is taken only for a plain, unwrapped ``Middleware``."""
    from unittest import mock

    from rxcontext.providers import ScriptedModel

    script = [Chunk(ChunkKind.TEXT, t) for t in ("a", "b", "c")]

    def window(mw: rxops.Middleware) -> ContextWindow:
        cw = ContextWindow(
            rxcontext.open(":memory:"), ScriptedModel([script]), "c", middleware=[mw]
        )
        cw.add_prompt("q")
        return cw

    spied: list[str] = []
    plain = rxops.middleware(on_chunk=lambda c: None)
    real = rxops.Middleware.chunk

    def spy(self: rxops.Middleware, chunk: Chunk) -> None:
        spied.append(chunk.text)
        real(self, chunk)

    with mock.patch.object(rxops.Middleware, "chunk", autospec=True, side_effect=spy):
        assert window(plain).call(deadline=deadline).text == "abc"
    assert [t for t in spied if t] == ["a", "b", "c"]

    class Tagged(rxops.Middleware):
        pass

    ran: list[str] = []
    tagged = Tagged(on_chunk=lambda c: ran.append("on_chunk"))
    inner = tagged.chunk

    def wrapper(chunk: Chunk) -> None:
        ran.append("wrapper")
        inner(chunk)

    tagged.chunk = wrapper  # type: ignore[method-assign]
    assert window(tagged).call(deadline=deadline).text == "abc"
    assert ran.count("wrapper") == ran.count("on_chunk") >= 3
