"""What a context has spent includes what its unsettled replies were billed.

Anthropic bills a request's input as its stream starts (``message_start`` says so), so an
attempt that fails after it was paid for though nothing was delivered. A reply whose retry
the budget refused is left interrupted, its checkpoint carrying what its attempts were
billed; the context's totals count that only once the reply is settled (kept, discarded,
resumed to completion). The budget counts it from the moment it was billed: the same
prompt sent again by a new call, or the reply resumed, is refused unsent, as the refused
retry was. Real SDKs over recorded wire bytes (tests/replay.py).
"""

from __future__ import annotations

import asyncio

import anthropic
import pytest
from replay import Replay, real_fixture, sse
from stores import open_store

from rxcontext import (
    Budget,
    BudgetExceeded,
    ContextWindow,
    RecordType,
    RetryPolicy,
    StreamInterrupted,
    Usage,
)
from rxcontext.providers import AnthropicModel

KEY = "sk-ant-test-0123456789"
RECORDED = "anthropic/text_basic_sonnet45.sse"
BILLED = 1000
"""Input tokens each failed attempt is billed (and 1 output token)."""


def billed_then_overloaded(input_tokens: int = BILLED) -> bytes:
    """Anthropic's stream opening with message_start (the input is billed), then an
    overloaded_error: retryable, since nothing but usage was delivered."""
    recording = real_fixture(RECORDED).read_bytes()
    start = recording.split(b"\n\n")[0] + b"\n\n"
    assert b'"input_tokens":17' in start
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return start.replace(b'"input_tokens":17', b'"input_tokens":%d' % input_tokens) + sse(
        overloaded, event_names=["error"]
    )


def model(replay: Replay) -> AnthropicModel:
    return AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )


def window(replay: Replay, budget: Budget | None = None) -> ContextWindow:
    retry = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)
    cw = ContextWindow(open_store(), model(replay), retry=retry, budget=budget)
    cw.add_prompt("Hello")
    return cw


def call(cw: ContextWindow, path: str) -> object:
    return cw.call() if path == "sync" else asyncio.run(cw.acall())


def resume(cw: ContextWindow, checkpoint_id: int, path: str) -> object:
    if path == "sync":
        return cw.resume_call(checkpoint_id)

    async def resumed() -> None:
        async for _ in cw.aresume(checkpoint_id):
            pass

    return asyncio.run(resumed())


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("then", ["call", "resume"])
def test_what_a_refused_retry_left_billed_refuses_the_next_request(path: str, then: str) -> None:
    """The retry that would go over is refused (two attempts billed 2,002 tokens against
    1,500); the reply stays interrupted, unsettled. The next call of the same context, and
    a resume of that reply, are refused before they are sent: spent is what was billed,
    settled or not. Before, they were checked against the context's totals (0) and each
    sent two more billed attempts."""
    replay = Replay(*[billed_then_overloaded()] * 4, real_fixture(RECORDED))
    cw = window(replay, Budget(max_tokens=1500))
    with pytest.raises(StreamInterrupted) as cut:
        call(cw, path)
    assert isinstance(cut.value.__cause__, BudgetExceeded)
    cp = cut.value.checkpoint
    assert cp.usage is not None and cp.usage.total_tokens == 2 * (BILLED + 1)
    assert cw.stats().usage.total_tokens == 0  # unsettled: the totals do not count it yet
    assert len(replay.requests) == 2
    with pytest.raises(BudgetExceeded) as refused:
        call(cw, path) if then == "call" else resume(cw, cp.id, path)
    assert refused.value.spent == 2 * (BILLED + 1)
    assert "2002 spent (2002 of it by replies not settled yet)" in str(refused.value)
    assert len(replay.requests) == 2  # refused unsent
    assert cw.checkpoints() == [cp]  # and the reply is as it was, still to be settled
    cw.discard(cp.id)  # settled: in the totals now, and counted once
    with pytest.raises(BudgetExceeded) as again:
        call(cw, path)
    assert again.value.spent == 2 * (BILLED + 1)
    assert len(replay.requests) == 2


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_resume_counts_the_usage_its_checkpoint_carries_once(path: str) -> None:
    """A reply cut after one billed attempt (no retries) carries 1,001 tokens. With a budget
    of 1,001 + the request's estimate - 1 its resume would go over: refused unsent. With
    one token more it fits and is sent, its checkpoint counted once (not again as the
    reply's own row while it resumes): the completed reply counts its cut attempt once."""
    replay = Replay(billed_then_overloaded(), real_fixture(RECORDED))
    cw = window(replay)
    cw.retry = None
    with pytest.raises(StreamInterrupted) as cut:
        call(cw, path)
    cp = cut.value.checkpoint
    assert cp.usage is not None and cp.usage.total_tokens == BILLED + 1
    estimate = cw.live_tokens()
    cw.budget = Budget(max_tokens=BILLED + 1 + estimate - 1)
    with pytest.raises(BudgetExceeded) as refused:
        resume(cw, cp.id, path)
    assert (refused.value.spent, refused.value.estimate) == (BILLED + 1, estimate)
    assert len(replay.requests) == 1
    cw.budget = Budget(max_tokens=BILLED + 1 + estimate)
    resume(cw, cp.id, path)
    assert len(replay.requests) == 2
    [reply] = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert reply.metadata["usage"]["total_tokens"] == cw.stats().usage.total_tokens
    assert cw.stats().usage.total_tokens == BILLED + 1 + 27


def test_interrupted_replies_of_other_contexts_are_not_this_ones_spending() -> None:
    """The budget is a context's: an interrupted reply in another context of the same store
    does not count against it."""
    replay = Replay(*[billed_then_overloaded()] * 2, real_fixture(RECORDED))
    cw = window(replay, Budget(max_tokens=1500))
    with pytest.raises(StreamInterrupted):
        cw.call()
    cw.switch_context("other")
    cw.add_prompt("Hello")
    reply = cw.call()
    assert reply.usage == Usage(input_tokens=17, output_tokens=10, total_tokens=27)
