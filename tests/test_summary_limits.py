"""A summary's request is bounded by the window's Timeouts and retried by its RetryPolicy,
as a reply's is: the same typed timeout errors, retries only before anything but usage came,
waits and limits on the window's scheduler, a budget check before each retry.

Timing runs on a virtual clock (``faultmodels.Clock``, a TestScheduler, as the window's
scheduler); the real SDKs on the replay transport and against a local silent server.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anthropic
import pytest
from crafted_text import text_body
from faultmodels import Clock, Stall, TimedModel, Wait
from localserver import silent_server
from replay import Replay, pieces, real_fixture, sse

import rxcontext
from rxcontext import (
    Budget,
    BudgetExceeded,
    Chunk,
    ChunkKind,
    ContextWindow,
    DeadlineExceeded,
    FirstChunkTimeout,
    IdleTimeout,
    ProviderError,
    RetryPolicy,
    Timeouts,
    Usage,
)
from rxcontext.providers import AnthropicModel, ScriptedModel

KEY = "sk-ant-test-limits-0123456789"
STEADY = RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=2.0, jitter=0.0)
"""Waits of 1 s, then 2 s."""


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def err(status: int) -> ProviderError:
    return ProviderError(
        f"HTTP {status}", provider="test", status_code=status, retryable=status >= 500
    )


def window(
    *scripts: list[Any], timeouts: Timeouts | None = None, retry: RetryPolicy | None = STEADY
) -> tuple[ContextWindow, TimedModel, Clock]:
    """A context with one reply, whose summariser plays ``scripts`` on a virtual clock."""
    clock = Clock()
    summarizer = TimedModel(list(scripts), clock)
    model = ScriptedModel([[T("hello back")]])
    cw = ContextWindow(
        rxcontext.open(":memory:"),
        model,
        "s",
        summarizer=summarizer,
        retry=retry,
        timeouts=timeouts,
        scheduler=clock,
    )
    cw.add_prompt("hello")
    cw.call()
    return cw, summarizer, clock


# -- sync: a blocking read advances the virtual clock; a late chunk is refused -------------


def test_a_quiet_summary_stream_ends_at_the_idle_limit() -> None:
    cw, summarizer, _ = window([T("a"), Wait(9.0), T("b")], timeouts=Timeouts(idle=5.0))
    with pytest.raises(IdleTimeout) as info:
        cw.summarize()
    assert info.value.seconds == 5.0
    assert len(summarizer.requests) == 1 and summarizer.closed == 1  # never retried


def test_a_summary_ends_at_its_deadline() -> None:
    cw, summarizer, _ = window(
        [T("a"), Wait(3.0), T("b"), Wait(3.0), T("c")], timeouts=Timeouts(deadline=5.0)
    )
    with pytest.raises(DeadlineExceeded):
        cw.summarize()
    assert summarizer.closed == 1


def test_a_late_first_chunk_times_out_and_the_summary_is_asked_again() -> None:
    cw, summarizer, _ = window(
        [Wait(10.0), T("late")], [T("Greetings.")], timeouts=Timeouts(first_chunk=5.0)
    )
    assert cw.summarize().text == "Greetings."
    assert summarizer.at == [0.0, 11.0]  # the 10 s read, refused; 1 s wait


def test_without_retries_a_late_first_chunk_is_a_first_chunk_timeout() -> None:
    cw, summarizer, _ = window(
        [Wait(10.0), T("late")], timeouts=Timeouts(first_chunk=5.0), retry=None
    )
    with pytest.raises(FirstChunkTimeout) as info:
        cw.summarize()
    assert info.value.seconds == 5.0 and summarizer.closed == 1


def test_a_retryable_error_before_the_first_chunk_is_retried_with_backoff() -> None:
    cw, summarizer, _ = window([err(503)], [err(502)], [T("Greetings.")])
    assert cw.summarize().text == "Greetings."
    assert summarizer.at == [0.0, 1.0, 3.0]


def test_no_retry_once_text_came_nor_for_errors_that_are_not_retryable() -> None:
    cw, summarizer, _ = window([T("par"), err(503)], [err(401)], [T("never")])
    with pytest.raises(ProviderError) as info:
        cw.summarize()
    assert info.value.status_code == 503 and len(summarizer.requests) == 1
    with pytest.raises(ProviderError) as info:
        cw.summarize()
    assert info.value.status_code == 401 and len(summarizer.requests) == 2


def test_no_retry_whose_wait_would_end_past_the_deadline() -> None:
    cw, summarizer, _ = window([Wait(4.0), err(503)], [T("never")], timeouts=Timeouts(deadline=4.5))
    with pytest.raises(ProviderError):
        cw.summarize()
    assert len(summarizer.requests) == 1


# -- asyncio: the limits cancel the read; waits run on the window's clock -------------------


async def test_async_a_stalled_summary_stream_is_cancelled_at_the_idle_limit() -> None:
    cw, summarizer, clock = window([T("a"), Stall()], timeouts=Timeouts(idle=5.0))
    task = asyncio.create_task(cw.asummarize())
    await clock.armed(1)  # the idle timer of the read after "a" (the first read has none)
    clock.advance_by(5.0)
    with pytest.raises(IdleTimeout):
        await task
    assert summarizer.closed == 1


async def test_async_a_summary_ends_at_its_deadline() -> None:
    cw, summarizer, clock = window([T("a"), Stall()], timeouts=Timeouts(deadline=5.0))
    task = asyncio.create_task(cw.asummarize())
    await clock.armed(2)
    clock.advance_by(5.0)
    with pytest.raises(DeadlineExceeded):
        await task
    assert summarizer.closed == 1


async def test_async_first_chunk_timeout_and_errors_are_retried_on_the_clock() -> None:
    cw, summarizer, clock = window(
        [Stall()], [err(503)], [T("Greetings.")], timeouts=Timeouts(first_chunk=3.0)
    )
    task = asyncio.create_task(cw.asummarize())
    await clock.armed(1)
    clock.advance_by(3.0)  # the first-chunk timeout; then the 1 s wait
    await clock.armed(2)
    clock.advance_by(1.0)
    await clock.armed(4)  # the second attempt's first-chunk timer, then the 2 s wait
    clock.advance_by(2.0)
    assert (await task).text == "Greetings."
    assert summarizer.at == [0.0, 4.0, 6.0]


@pytest.mark.parametrize("held", [ChunkKind.DONE, ChunkKind.TEXT])
async def test_a_deadline_passing_while_on_chunk_holds_done_leaves_the_summary_whole(
    held: ChunkKind,
) -> None:
    """Every chunk came in time; ``on_chunk`` then holds one past the deadline (it moves the
    clock on). Held on DONE, the summary is whole: ``summarize`` and ``asummarize`` both
    propose it (asyncio used to raise DeadlineExceeded). Held on text, both raise."""
    script = [T("Greet"), T("ings."), Chunk(ChunkKind.DONE, finish_reason="stop")]
    outcomes: list[str] = []
    for path in ("sync", "async"):
        cw, summarizer, clock = window(list(script), timeouts=Timeouts(deadline=5.0))
        once: list[bool] = []

        def hold(chunk: Chunk, clock: Clock = clock, once: list[bool] = once) -> None:
            if chunk.kind is held and not once:
                once.append(True)
                clock.sleep(10.0)  # on_chunk's hold outlasts the 5 s deadline

        async def ahold(chunk: Chunk, hold: Any = hold) -> None:
            hold(chunk)

        try:
            if path == "sync":
                proposal = cw.summarize(on_chunk=hold)
            else:
                proposal = await cw.asummarize(on_chunk=ahold)
            outcomes.append(proposal.text)
        except DeadlineExceeded:
            outcomes.append("DeadlineExceeded")
        assert len(summarizer.requests) == 1
    expected = "Greetings." if held is ChunkKind.DONE else "DeadlineExceeded"
    assert outcomes == [expected, expected]


# -- the real SDK: a retry after message_start, its usage spent, the budget checked ---------

BILLED = 1000


def billed_then_overloaded() -> bytes:
    """Anthropic's stream opening with message_start (``BILLED`` input tokens), then an
    overloaded_error: retryable, nothing but usage was delivered."""
    start = real_fixture("anthropic/text_basic_sonnet45.sse").read_bytes().split(b"\n\n")[0]
    assert b"message_start" in start and b'"input_tokens":17' in start
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    billed = start.replace(b'"input_tokens":17', b'"input_tokens":%d' % BILLED)
    return billed + b"\n\n" + sse(overloaded, event_names=["error"])


def anthropic_window(*answers: Any, retry: RetryPolicy | None) -> tuple[ContextWindow, Replay]:
    replay = Replay(*answers)
    summarizer = AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )
    model = ScriptedModel([[T("hello back"), Chunk(ChunkKind.USAGE, usage=Usage.of(10, 2))]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "a", summarizer=summarizer, retry=retry)
    cw.add_prompt("hello")
    cw.call()
    return cw, replay


NOW = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)
"""Retries with no wait (nothing here is about the wait)."""


@pytest.mark.parametrize("path", ["sync", "async"])
def test_an_overloaded_summariser_is_asked_again_and_both_attempts_are_spent(path: str) -> None:
    recorded = real_fixture("anthropic/text_basic_sonnet45.sse")
    cw, replay = anthropic_window(billed_then_overloaded(), recorded, retry=NOW)
    before = cw.stats().usage.total_tokens
    proposal = cw.summarize() if path == "sync" else asyncio.run(cw.asummarize())
    assert proposal.text and len(replay.requests) == 2
    usage = proposal.reply.usage
    assert usage is not None and usage.input_tokens == BILLED + 17  # both attempts
    (dead,) = [r for r in cw.records() if r.metadata.get("summarizer")]
    assert dead.metadata["usage"]["input_tokens"] == BILLED + 17
    assert cw.stats().usage.total_tokens == before + usage.total_tokens


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_summary_retry_that_would_go_over_the_budget_is_refused_unsent(path: str) -> None:
    """Each attempt bills its input: before asking again, what the earlier attempts were
    billed counts as spent. One retry fits the budget, a second does not."""
    cw, replay = anthropic_window(*[billed_then_overloaded()] * 3, retry=NOW)
    spent = cw.stats().usage.total_tokens
    estimate = cw.live_tokens()
    cw.budget = Budget(max_tokens=spent + (BILLED + 1) + estimate + BILLED // 2)
    with pytest.raises(BudgetExceeded) as refused:
        cw.summarize() if path == "sync" else asyncio.run(cw.asummarize())
    assert refused.value.spent == spent + 2 * (BILLED + 1)
    assert len(replay.requests) == 2
    (dead,) = [r for r in cw.records() if r.metadata.get("summarizer")]
    assert dead.metadata["usage"]["input_tokens"] == 2 * BILLED  # spent, though refused
    assert cw.stats().usage.total_tokens == spent + 2 * (BILLED + 1)


# -- a real socket: the limit breaks a read the server leaves waiting ----------------------

BOUND = 30.0
"""How long the test waits for the summary (the SDK's own read timeout is 600 s)."""


def first_events() -> bytes:
    """Anthropic's events up to the text "Hello" (message_start: 12 input tokens)."""
    out = b""
    for piece in pieces(text_body("anthropic", ["Hello", " never sent"])):
        out += piece
        if b'"Hello"' in piece:
            return out
    raise AssertionError("no Hello event")


@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("limit", ["idle", "deadline"])
def test_a_silent_summariser_cannot_hold_a_summary_past_its_limit(
    tmp_path: Any, path: str, limit: str
) -> None:
    with silent_server(first_events()) as server:
        summarizer = AnthropicModel(
            "claude-test",
            client=anthropic.Anthropic(api_key=KEY, base_url=server.url, max_retries=0),
            async_client=anthropic.AsyncAnthropic(api_key=KEY, base_url=server.url, max_retries=0),
        )
        timeouts = Timeouts(idle=0.5) if limit == "idle" else Timeouts(deadline=0.5)
        model = ScriptedModel([[T("hello back")]])
        store = rxcontext.open(str(tmp_path / "chat.db"))
        cw = ContextWindow(store, model, "q", summarizer=summarizer, timeouts=timeouts)
        cw.add_prompt("hello")
        cw.call()
        outcome: list[BaseException] = []

        def summarize() -> None:
            try:
                cw.summarize() if path == "sync" else asyncio.run(cw.asummarize())
            except BaseException as error:
                outcome.append(error)

        thread = threading.Thread(target=summarize, daemon=True)
        thread.start()
        thread.join(BOUND)
        blocked = thread.is_alive()
        closed = not blocked and server.gone.wait(BOUND)
    thread.join(BOUND)
    assert not blocked, f"the summary was still reading after {BOUND} s"
    assert closed, "the HTTP response was left open"
    (error,) = outcome
    assert isinstance(error, IdleTimeout if limit == "idle" else DeadlineExceeded), repr(error)
    (dead,) = [r for r in cw.records() if r.metadata.get("summarizer")]
    assert dead.content == "Hello" and dead.metadata["usage"]["input_tokens"] == 12
    store.close()
