"""A summary that fails after its request was billed keeps what it was billed.

The summariser's stream may report usage (Anthropic bills the input at ``message_start``)
and then fail: a provider error in the stream, a connection cut, an ``on_chunk`` that
raises, or an answer with no text. Whatever the summary's outcome, what it was billed is
spent: a dead ``summarizer: true`` MODEL_RESP carries the usage (and the text it delivered),
the context's totals count it, and budgets then count it. The error the caller gets is the
one that ended the summary, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import pytest
from replay import Replay, real_fixture, sse
from replay import Reply as Served
from stores import open_store

from rxcontext import (
    Budget,
    BudgetExceeded,
    Chunk,
    ChunkKind,
    ContextWindow,
    ProviderError,
    Record,
    RecordType,
    Usage,
)
from rxcontext.providers import AnthropicModel, ScriptedModel

KEY = "sk-ant-test-summary-0123456789"
RECORDED = "anthropic/text_basic_sonnet45.sse"
BILLED = 150_000
"""The input tokens the summariser's ``message_start`` says were billed."""


def summarize(cw: ContextWindow, path: str, **kwargs: Any) -> Any:
    return cw.summarize(**kwargs) if path == "sync" else asyncio.run(cw.asummarize(**kwargs))


def summarizer_records(cw: ContextWindow) -> list[Record]:
    return [r for r in cw.records() if r.metadata.get("summarizer")]


def billed_then(rest: bytes) -> bytes:
    """The recorded stream's ``message_start`` (its input billed at ``BILLED`` tokens) and
    a text block's start with the delta "The user", then ``rest``."""
    start = real_fixture(RECORDED).read_bytes().split(b"\n\n")[0] + b"\n\n"
    assert b"message_start" in start and b'"input_tokens":17' in start
    text = {"type": "text", "text": ""}
    block = {"type": "content_block_start", "index": 0, "content_block": text}
    said = {"type": "text_delta", "text": "The user"}
    delta = {"type": "content_block_delta", "index": 0, "delta": said}
    return (
        start.replace(b'"input_tokens":17', b'"input_tokens":%d' % BILLED)
        + sse(block, delta, event_names=["content_block_start", "content_block_delta"])
        + rest
    )


OVERLOADED = sse(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    event_names=["error"],
)


def anthropic_window(summariser_reply: Served | bytes) -> ContextWindow:
    """A context with one stored reply (the recorded one), whose summariser is the real
    Anthropic SDK on the replay transport, answering ``summariser_reply``."""
    recorded = real_fixture(RECORDED)
    replay = Replay(recorded, summariser_reply, recorded)
    model = AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    cw = ContextWindow(open_store(), model, "c", retry=None)
    cw.add_prompt("hi")
    cw.call()
    return cw


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("end", ["overloaded", "connection cut"])
def test_a_summary_cut_after_its_input_was_billed_keeps_that_usage(path: str, end: str) -> None:
    """Anthropic's summariser stream bills 150,000 input tokens, delivers "The user", then
    fails: the caller gets that failure, and the 150,000 tokens are spent (a dead
    summariser record with the usage and the text, the totals, the next request's budget)."""
    served: Served | bytes = (
        billed_then(OVERLOADED)
        if end == "overloaded"
        else Served(billed_then(b""), cut_after=3, error=httpx2.ReadError("connection reset"))
    )
    cw = anthropic_window(served)
    before = cw.stats().usage
    live = cw.live_records()
    with pytest.raises(ProviderError) as failed:
        summarize(cw, path)
    if end == "overloaded":
        assert "overloaded_error" in str(failed.value) and failed.value.retryable
    else:
        assert isinstance(failed.value.__cause__, httpx2.ReadError)
    (dead,) = summarizer_records(cw)
    assert dead.type is RecordType.MODEL_RESP and not dead.live
    assert dead.content == "The user"
    assert dead.metadata["usage"]["input_tokens"] == BILLED
    assert dead.metadata["model"] == "claude-sonnet-4-5"
    after = cw.stats().usage
    assert after.input_tokens == before.input_tokens + BILLED
    assert cw.live_records() == live  # the conversation is as it was
    cw.budget = Budget(max_tokens=100_000)
    cw.add_prompt("next")
    with pytest.raises(BudgetExceeded):
        cw.call()


U = Usage.of(90_000, 10)

FAILURES: dict[str, tuple[list[Chunk | BaseException], type[BaseException], str]] = {
    "no text": ([Chunk(ChunkKind.USAGE, usage=U)], ValueError, ""),
    "whitespace only": (
        [Chunk(ChunkKind.TEXT, "  \n"), Chunk(ChunkKind.USAGE, usage=U)],
        ValueError,
        "",
    ),
    "error after usage": (
        [Chunk(ChunkKind.USAGE, usage=U), Chunk(ChunkKind.TEXT, "part"), ConnectionError("cut")],
        ConnectionError,
        "part",
    ),
}


def scripted_window(script: list[Chunk | BaseException]) -> ContextWindow:
    said = [Chunk(ChunkKind.TEXT, "ok"), Chunk(ChunkKind.USAGE, usage=Usage.of(100, 5))]
    model = ScriptedModel([said, said], name="openai:gpt-4o-mini")
    summarizer = ScriptedModel([script], name="openai:gpt-4o-mini")
    cw = ContextWindow(open_store(), model, "c", summarizer=summarizer, retry=None)
    cw.add_prompt("hello")
    cw.call()
    return cw


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failed_summary_that_was_billed_is_spent(path: str, case: str) -> None:
    script, raised, text = FAILURES[case]
    cw = scripted_window(script)
    before = cw.stats().usage.total_tokens
    with pytest.raises(raised) as failed:
        summarize(cw, path)
    if raised is ValueError:
        assert "returned no text" in str(failed.value)
    (dead,) = summarizer_records(cw)
    assert not dead.live and dead.content == text
    assert dead.metadata["usage"]["input_tokens"] == U.input_tokens
    assert dead.metadata["provider"] == "openai"
    assert cw.stats().usage.total_tokens == before + U.total_tokens
    cw.budget = Budget(max_tokens=50_000)
    cw.add_prompt("next")
    with pytest.raises(BudgetExceeded):
        cw.call()


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_an_on_chunk_that_raises_after_the_usage_came_gets_its_own_error_back(path: str) -> None:
    """``on_chunk`` is the caller's code: its exception comes back as it was raised, and
    what the request was billed up to then is spent."""
    script: list[Chunk | BaseException] = [
        Chunk(ChunkKind.USAGE, usage=U),
        Chunk(ChunkKind.TEXT, "Greet"),
        Chunk(ChunkKind.TEXT, "ings."),
    ]
    cw = scripted_window(script)
    mine = RuntimeError("on_chunk gave up")

    def on_chunk(chunk: Chunk) -> None:
        if chunk.text == "Greet":
            raise mine

    async def aon_chunk(chunk: Chunk) -> None:
        on_chunk(chunk)

    handler: Callable[[Chunk], Any] = on_chunk if path == "sync" else aon_chunk
    with pytest.raises(RuntimeError) as failed:
        summarize(cw, path, on_chunk=handler)
    assert failed.value is mine
    (dead,) = summarizer_records(cw)
    assert dead.content == "Greet" and dead.metadata["usage"]["input_tokens"] == U.input_tokens


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_summary_that_failed_before_anything_was_billed_stores_nothing(path: str) -> None:
    cw = scripted_window([ConnectionError("refused")])
    before = cw.stats().usage
    with pytest.raises(ConnectionError):
        summarize(cw, path)
    assert summarizer_records(cw) == []
    assert cw.stats().usage == before
