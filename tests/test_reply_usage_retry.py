"""A subscriber's reply counts the usage the store counts, after a retry and on a resume.

Anthropic bills a request's input as its stream starts (``message_start``): an attempt that
fails after it (an overloaded error, retried since nothing but usage was delivered) was
paid for, and the reply's record, the context's totals and a watcher count it with the
retry's. The chunks a subscriber gets say so too: each USAGE chunk of the retry (or of a
resume's stream) carries what the reply was billed before it, so ``reduce_reply()``,
``accumulate()`` and a ``ReplyBuilder`` fold of ``astream()`` show the stored usage, once,
sync and asyncio, with or without a fan-out, on the timed path too. Real SDK over recorded
wire bytes (tests/replay.py).
"""

from __future__ import annotations

import asyncio

import anthropic
import pytest
from replay import Replay, real_fixture, sse

import rxcontext
from rxcontext import (
    Chunk,
    ContextWindow,
    RecordType,
    Reply,
    RetryPolicy,
    StreamInterrupted,
    Timeouts,
)
from rxcontext import operators as rxops
from rxcontext.chunks import ReplyBuilder
from rxcontext.providers import AnthropicModel

KEY = "sk-ant-test-0123456789"
RECORDED = "anthropic/text_basic_sonnet45.sse"
BILLED = 1000
WHOLE = BILLED + 1 + 27
"""The failed attempt's 1,000 in and 1 out, and the recorded reply's 17 in and 10 out."""


def billed_then_overloaded() -> bytes:
    recording = real_fixture(RECORDED).read_bytes()
    start = recording.split(b"\n\n")[0] + b"\n\n"
    assert b'"input_tokens":17' in start
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return start.replace(b'"input_tokens":17', b'"input_tokens":%d' % BILLED) + sse(
        overloaded, event_names=["error"]
    )


def window(fanout: bool, timed: bool, retry: bool = True) -> tuple[ContextWindow, Replay]:
    replay = Replay(billed_then_overloaded(), real_fixture(RECORDED))
    model = AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    store = rxcontext.open(":memory:", fanout="memory") if fanout else rxcontext.open(":memory:")
    cw = ContextWindow(
        store,
        model,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0) if retry else None,
        timeouts=Timeouts(idle=600.0) if timed else Timeouts(),
    )
    cw.add_prompt("Hello")
    return cw, replay


def stored_usage(cw: ContextWindow) -> int:
    [reply] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    total = reply.metadata["usage"]["total_tokens"]
    assert total == cw.stats().usage.total_tokens
    return int(total)


def folded(chunks: list[Chunk]) -> Reply:
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.build()


async def gathered(source: object) -> list[Chunk]:
    return [chunk async for chunk in source]  # type: ignore[attr-defined]


@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
@pytest.mark.parametrize("fanout", [False, True], ids=["plain", "fanout"])
@pytest.mark.parametrize("path", ["reduce_reply", "accumulate", "astream"])
def test_a_subscriber_counts_the_failed_attempts_usage(path: str, fanout: bool, timed: bool):
    """Reported 27 (the retry's own) where the store counts 1,028."""
    cw, replay = window(fanout, timed)
    if path == "astream":
        reply = folded(asyncio.run(gathered(cw.astream())))
    else:
        got: list[Reply] = []
        operator = rxops.reduce_reply() if path == "reduce_reply" else rxops.accumulate()
        cw.stream().pipe(operator).subscribe(got.append)
        reply = got[-1]
    assert len(replay.requests) == 2  # the attempt billed and failed, then its retry
    assert reply.text and reply.usage is not None
    assert reply.usage.total_tokens == stored_usage(cw) == WHOLE


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_resumes_subscriber_counts_what_its_checkpoint_carries(path: str) -> None:
    """A reply cut after its billed attempt (no retries) carries 1,001 tokens; its resume's
    subscriber folds the usage the resumed record is stored with (1,028), not its stream's
    own (27)."""
    cw, replay = window(fanout=False, timed=False, retry=False)
    with pytest.raises(StreamInterrupted) as cut:
        cw.call() if path == "sync" else asyncio.run(cw.acall())
    cp = cut.value.checkpoint
    if path == "sync":
        final: list[Reply] = []
        cw.resume(cp.id).pipe(rxops.reduce_reply()).subscribe(final.append)
        [reply] = final
    else:
        reply = folded(asyncio.run(gathered(cw.aresume(cp.id))))
    assert len(replay.requests) == 2
    assert reply.usage is not None and reply.usage.total_tokens == stored_usage(cw) == WHOLE
