"""An ``astream`` cut short never ends later as if its reply had been stored.

A consumer may go on advancing a stream after an ``anext`` ended in an error: the README's
``asyncio.wait_for(anext(stream), 30)`` is the usual case, in a keep-alive loop that sends a
heartbeat when the model is slower than the timeout and then asks again. The timeout's
cancel cuts the reply (its checkpoint saved); the next ``anext`` must say so with
:class:`~rxcontext.StreamInterrupted` carrying that checkpoint, never ``StopAsyncIteration``,
which ends the loop normally with a truncated text that nothing stored as a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx2
import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import pieces

from rxcontext import (
    Budget,
    BudgetExceeded,
    Chunk,
    ChunkKind,
    ContextWindow,
    RecordType,
    ReplyState,
    RxContextError,
    StreamInterrupted,
    Tool,
    Usage,
)
from rxcontext.providers import ScriptedModel

WAIT = 10.0  # the longest any step may take on a loaded machine before the test fails
KEEP_ALIVE = 0.05  # the keep-alive period: the model below stays silent far longer


@pytest.fixture
def store(make_store: Callable[..., Any]) -> Any:
    return make_store()


class SilentAfter:
    """An async transport whose response sends the first ``n`` events of ``body``, then
    nothing (the model thinking) until the client closes it."""

    def __init__(self, body: bytes, n: int) -> None:
        self.closed = 0
        parts = pieces(body)[:n]
        transport = self

        class Body(httpx2.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                for part in parts:
                    yield part
                await asyncio.Event().wait()  # silent until cancelled

            async def aclose(self) -> None:
                transport.closed += 1

        def handle(request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, stream=Body()
            )

        self.transport = httpx2.MockTransport(handle)

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=self.transport)

    def async_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self.transport)


async def keep_alive_loop(stream: AsyncIterator[Chunk], got: list[str]) -> list[str]:
    """The README's idiom in a keep-alive loop: advance with a timeout, send a heartbeat
    when it fires, ask again; what happened at each step. (The timeout is short only once
    the model went silent: the chunks before come as slowly as a loaded machine likes.)"""
    steps: list[str] = []
    while len(steps) < 10:
        try:
            chunk = await asyncio.wait_for(anext(stream), KEEP_ALIVE if len(got) >= 2 else WAIT)
        except TimeoutError:
            steps.append("keep-alive")
            continue
        except StopAsyncIteration:
            steps.append("end")
            break
        if chunk.kind is ChunkKind.TEXT:
            got.append(chunk.text)
        steps.append("chunk")
    return steps


@pytest.mark.parametrize("kind", ["chat", "anthropic"])
def test_a_keep_alive_loop_gets_the_checkpoint_after_its_timeout_cut_the_reply(
    store: Any, kind: str
) -> None:
    """Through the real SDK: the model sends "one two " and falls silent; the keep-alive
    timeout fires (its cancel cuts the reply: the checkpoint is "one two "); the loop asks
    again and must get StreamInterrupted with that checkpoint, every time it asks."""
    silent = SilentAfter(text_body(kind, ["one ", "two ", "three"]), 3 if kind == "chat" else 4)
    cw = ContextWindow(store, model_for(kind, silent), "c", checkpoint_every=None)
    cw.add_prompt("hi")
    got: list[str] = []

    async def main() -> tuple[list[str], list[BaseException]]:
        stream = cw.astream(reply_id="r")
        try:
            steps = await keep_alive_loop(stream, got)
        except StreamInterrupted as error:
            errors: list[BaseException] = [error]
            try:
                await anext(stream)  # and again: the stream stays cut
            except BaseException as again:  # what it raised is checked
                errors.append(again)
            await stream.aclose()
            return [], errors
        return steps, []

    steps, errors = asyncio.run(asyncio.wait_for(main(), WAIT * 3))
    assert got == ["one ", "two "]
    assert errors, f"the loop ended normally after {steps}: the reply looked complete"
    first, again = errors
    assert isinstance(first, StreamInterrupted) and isinstance(again, StreamInterrupted)
    assert first.checkpoint.text == again.checkpoint.text == "one two "
    assert first.checkpoint.state is ReplyState.INTERRUPTED
    assert [c.id for c in cw.checkpoints()] == [first.checkpoint.id] == [again.checkpoint.id]
    assert [r.type for r in cw.live_records()] == [RecordType.PROMPT]  # no reply stored
    assert silent.closed == 1


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def test_a_stream_advanced_after_its_error_raises_it_again_not_the_end(store: Any) -> None:
    """ScriptedModel: the model fails after two chunks; the consumer gets StreamInterrupted
    and (a loop that logs errors and goes on) asks again: StreamInterrupted with the same
    checkpoint, not StopAsyncIteration."""
    model = ScriptedModel([[T("one "), T("two "), ConnectionResetError("cut")]])
    cw = ContextWindow(store, model, "c", checkpoint_every=None, retry=None)
    cw.add_prompt("hi")

    async def main() -> list[BaseException]:
        stream = cw.astream()
        raised: list[BaseException] = []
        for _ in range(5):
            try:
                await anext(stream)
            except BaseException as error:  # what it raised is checked
                raised.append(error)
        return raised

    raised = asyncio.run(main())
    assert len(raised) == 3, raised
    assert all(isinstance(e, StreamInterrupted) for e in raised), raised
    ids = {e.checkpoint.id for e in raised if isinstance(e, StreamInterrupted)}
    assert ids == {cw.checkpoints()[0].id}
    assert isinstance(raised[0].__cause__, ConnectionResetError)


def test_a_timeout_while_a_tool_runs_cuts_the_reply_for_good(store: Any) -> None:
    """ScriptedModel with a tool: the keep-alive timeout fires while the (slow) tool runs,
    after the round that asked for it was committed. The next ``anext`` raises
    StreamInterrupted: the reply is not over (a committed round is not a completed reply)."""
    model = ScriptedModel(
        [
            [
                Chunk(ChunkKind.TOOL_CALL, '{"q": "x"}', index=0, id="c1", name="slow"),
                Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
            ],
            [T("never")],
        ]
    )
    cw = ContextWindow(store, model, "c", checkpoint_every=None)
    started = asyncio.Event()

    async def slow(_: dict[str, Any]) -> str:
        started.set()
        await asyncio.Event().wait()  # far slower than the keep-alive period
        return "never"

    cw.add_tool(Tool("slow", "a slow tool").string("q", "q"), slow)
    cw.add_prompt("hi")

    async def main() -> tuple[list[str], BaseException | None]:
        stream = cw.astream()
        kinds: list[str] = []
        while True:
            step = asyncio.ensure_future(anext(stream))
            if "DONE" in kinds and not started.is_set():
                # This anext runs the tool: let it start before the keep-alive period counts.
                tool = asyncio.ensure_future(started.wait())
                await asyncio.wait({step, tool}, timeout=WAIT, return_when="FIRST_COMPLETED")
                tool.cancel()
            try:
                chunk = await asyncio.wait_for(step, KEEP_ALIVE if started.is_set() else WAIT)
            except TimeoutError:
                kinds.append("keep-alive")
                continue
            except StopAsyncIteration:
                return kinds, None
            except StreamInterrupted as error:
                return kinds, error
            kinds.append(chunk.kind.name)

    kinds, error = asyncio.run(asyncio.wait_for(main(), WAIT * 3))
    assert "keep-alive" in kinds
    assert isinstance(error, StreamInterrupted), f"the loop ended normally: {kinds}"
    assert error.checkpoint.state is ReplyState.INTERRUPTED
    assert [c.id for c in cw.checkpoints()] == [error.checkpoint.id]


def test_a_completed_or_closed_stream_still_just_ends(store: Any) -> None:
    """What is unchanged: a reply that completed ends with StopAsyncIteration, again and
    again; a stream closed early by its consumer (``aclose()``) ends so too; the stream is
    an async generator (``contextlib.aclosing`` works on it)."""
    model = ScriptedModel([[T("one "), T("two ")], [T("three "), T("four ")]])
    cw = ContextWindow(store, model, "c", checkpoint_every=None)
    cw.add_prompt("hi")

    async def main() -> tuple[list[str], list[str], list[str]]:
        done = cw.astream()
        assert isinstance(done, AsyncGenerator)
        whole = [c.text async for c in done]
        ends = []
        for _ in range(2):
            try:
                await anext(done)
            except StopAsyncIteration:
                ends.append("end")
        async with contextlib.aclosing(cw.astream()) as left:
            first = await anext(left)
            await left.aclose()
            with contextlib.suppress(StopAsyncIteration):
                await anext(left)
                ends.append("went on")
        return whole, ends, [first.text]

    whole, ends, first = asyncio.run(main())
    assert "".join(whole) == "one two " and ends == ["end", "end"] and first == ["three "]
    assert [c.text for c in cw.checkpoints()] == ["three "]


def test_a_stream_refused_before_its_reply_began_does_not_end_either(store: Any) -> None:
    """An error before the reply began (the budget refuses the request): nothing was cut,
    but nothing was stored either; asked again, the stream says it cannot go on."""
    usage = Chunk(ChunkKind.USAGE, usage=Usage.of(988, 10))
    model = ScriptedModel([[T("a"), usage], [T("b")]])
    cw = ContextWindow(store, model, "c", budget=Budget(max_tokens=1000))
    cw.add_prompt("first")
    cw.call()  # spends 998 of 1000
    cw.add_prompt("second")

    async def main() -> list[BaseException]:
        stream = cw.astream()
        raised: list[BaseException] = []
        for _ in range(2):
            try:
                await anext(stream)
            except BaseException as error:  # what it raised is checked
                raised.append(error)
        return raised

    refused, again = asyncio.run(main())
    assert isinstance(refused, BudgetExceeded)
    assert isinstance(again, RxContextError) and "cannot go on" in str(again), again
    assert cw.checkpoints() == []
