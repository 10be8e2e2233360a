"""RetryPolicy, retries before the first chunk, first-chunk and idle timeouts — on virtual time.

Every wait runs on a ``TestScheduler`` (``faultmodels.Clock``): the sync driver schedules
its retries there (or sleeps it, for ``call()``), the async driver awaits it. Nothing here
sleeps for real, and times are asserted on the virtual clock only.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from faultmodels import Clock, Stall, TimedModel, Wait

import rxcontext
from rxcontext import (
    NO_RETRY,
    Chunk,
    ChunkKind,
    ContextWindow,
    DeadlineExceeded,
    FirstChunkTimeout,
    IdleTimeout,
    ProviderError,
    RecordType,
    RetryPolicy,
    StreamInterrupted,
    Timeouts,
)
from rxcontext.retry import is_retryable


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


def err(status: int | None = 503, retry_after: float | None = None, **kw: object) -> ProviderError:
    retryable = kw.pop("retryable", status is None or status == 429 or status >= 500)
    return ProviderError(
        f"HTTP {status}",
        provider="test",
        status_code=status,
        retryable=bool(retryable),
        retry_after=retry_after,
    )


# Deterministic backoff: 1 s, 2 s, 4 s ... (no jitter).
STEADY = RetryPolicy(max_attempts=4, initial_delay=1.0, multiplier=2.0, jitter=0.0)


def window(
    *scripts: list, retry: RetryPolicy | None = STEADY, timeouts: Timeouts | None = None
) -> tuple[ContextWindow, TimedModel, Clock]:
    clock = Clock()
    model = TimedModel(list(scripts), clock)
    cw = ContextWindow(
        rxcontext.open(":memory:"), model, "r", retry=retry, timeouts=timeouts, scheduler=clock
    )
    cw.add_prompt("hi")
    return cw, model, clock


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


class Seen:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.error: Exception | None = None
        self.completed = False

    def on_error(self, e: Exception) -> None:
        self.error = e

    def on_completed(self) -> None:
        self.completed = True

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks if c.kind is ChunkKind.TEXT)


def subscribe(cw: ContextWindow, clock: Clock) -> Seen:
    seen = Seen()
    cw.stream().subscribe(seen.chunks.append, seen.on_error, seen.on_completed, scheduler=clock)
    return seen


# -- the policy -------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens():
    policy = RetryPolicy(max_attempts=10, initial_delay=0.5, max_delay=3.0, random=lambda: 0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    low = RetryPolicy(initial_delay=2.0, jitter=0.5, random=lambda: 1.0)
    assert low.backoff(1) == 1.0  # at most half of the wait is taken off


def test_retry_after_is_the_wait_exactly_unless_too_long():
    policy = RetryPolicy(max_retry_after=30.0, random=lambda: 0.0)
    assert policy.delay(err(429, retry_after=7.0), 1) == 7.0
    assert policy.delay(err(429, retry_after=0.0), 1) == 0.0
    assert policy.delay(err(429, retry_after=31.0), 1) is None


def test_attempts_and_error_kinds_limit_retries():
    policy = RetryPolicy(max_attempts=3, random=lambda: 0.0)
    assert policy.delay(err(503), 1) is not None
    assert policy.delay(err(503), 2) is not None
    assert policy.delay(err(503), 3) is None  # the third try was the last
    assert policy.delay(err(401), 1) is None
    assert policy.delay(ValueError("bug"), 1) is None
    assert NO_RETRY.delay(err(503), 1) is None


def test_what_is_retryable():
    assert is_retryable(err(500)) and is_retryable(err(429)) and is_retryable(err(None))
    assert not is_retryable(err(400)) and not is_retryable(err(401))
    assert is_retryable(ConnectionError("reset")) and is_retryable(TimeoutError())
    assert is_retryable(FirstChunkTimeout("slow", seconds=1))
    assert not is_retryable(IdleTimeout("quiet", seconds=1))  # text was delivered
    assert not is_retryable(RuntimeError("boom"))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial_delay": -1}, {"multiplier": 0.5}, {"jitter": 1.5}],
)
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("kwargs", [{"first_chunk": 0}, {"idle": -1.0}])
def test_bad_timeouts_are_refused(kwargs):
    with pytest.raises(ValueError):
        Timeouts(**kwargs)


# -- retries on the sync path (subscription on the virtual clock) --------------------------


def test_retryable_errors_before_the_first_chunk_are_retried_with_backoff():
    cw, model, clock = window([err(503)], [err(502)], [T("ok"), DONE])
    seen = subscribe(cw, clock)
    assert model.at == []  # scheduled, not yet run
    clock.advance_to(0.5)
    assert model.at == [0.0]  # sent, failed, waiting
    clock.advance_to(0.999)
    assert model.at == [0.0]
    clock.advance_to(1.0)
    assert model.at == [0.0, 1.0]
    clock.start()
    assert model.at == [0.0, 1.0, 3.0]  # waits of 1 s then 2 s
    assert seen.completed and seen.text == "ok"
    assert replies(cw) == ["ok"]
    assert cw.checkpoints() == []


def test_retry_after_from_the_server_is_honoured_on_the_clock():
    cw, model, clock = window([err(429, retry_after=7.0)], [T("ok"), DONE])
    seen = subscribe(cw, clock)
    clock.start()
    assert model.at == [0.0, 7.0]
    assert seen.completed


def test_no_retry_once_a_chunk_was_delivered():
    cw, model, clock = window([T("par"), err(503)], [T("never"), DONE])
    seen = subscribe(cw, clock)
    clock.start()
    assert len(model.requests) == 1
    assert isinstance(seen.error, StreamInterrupted)
    assert seen.error.checkpoint.text == "par" == seen.text
    assert replies(cw) == []


def test_non_retryable_errors_fail_at_once():
    cause = err(401)
    cw, model, clock = window([cause], [T("never"), DONE])
    seen = subscribe(cw, clock)
    clock.advance_to(100.0)
    assert len(model.requests) == 1 and clock.timers == []
    assert isinstance(seen.error, StreamInterrupted) and seen.error.__cause__ is cause


def test_giving_up_after_max_attempts_chains_the_last_error():
    errors = [err(500), err(502), err(503), err(504)]
    cw, model, clock = window(*[[e] for e in errors], [T("never"), DONE])
    seen = subscribe(cw, clock)
    clock.start()
    assert model.at == [0.0, 1.0, 3.0, 7.0]
    assert isinstance(seen.error, StreamInterrupted)
    assert seen.error.__cause__ is errors[-1]
    assert seen.error.checkpoint.text == ""


def test_retry_none_disables_retries():
    cw, model, clock = window([err(503)], [T("never"), DONE], retry=None)
    seen = subscribe(cw, clock)
    clock.start()
    assert len(model.requests) == 1 and isinstance(seen.error, StreamInterrupted)


def test_disposing_during_the_wait_checkpoints_and_sends_nothing_more():
    cw, model, clock = window([err(503)], [T("never"), DONE])
    sub = cw.stream().subscribe(scheduler=clock)
    clock.advance_to(0.5)
    sub.dispose()
    clock.start()
    assert len(model.requests) == 1
    (cp,) = cw.checkpoints()
    assert cp.text == "" and cp.error == "cancelled"


def test_disposing_a_resume_during_its_wait_releases_the_checkpoint():
    cw, model, clock = window([T("a"), RuntimeError("cut")], [err(503)], [T("b"), DONE])
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    cp_id = info.value.checkpoint.id
    sub = cw.resume(cp_id).subscribe(scheduler=clock)
    clock.advance_to(0.5)
    sub.dispose()  # while waiting to send the continuation again
    assert len(model.requests) == 2
    assert cw.resume_call(cp_id).text == "ab"  # the claim was given back


def test_a_tool_round_is_retried_too():
    call = Chunk(ChunkKind.TOOL_CALL, '{"city": "Oslo"}', id="c1", name="weather")
    cw, model, clock = window([call, DONE], [err(503)], [T("sunny"), DONE])
    cw.add_tool(rxcontext.Tool("weather", "w").string("city", "c"), lambda a: "sun")
    seen = subscribe(cw, clock)
    clock.start()
    assert model.at == [0.0, 0.0, 1.0]
    assert seen.completed and seen.text == "sunny"


def test_call_waits_on_the_windows_virtual_clock():
    cw, model, _clock = window([err(429, retry_after=30.0)], [T("ok"), DONE])
    assert cw.call().text == "ok"
    assert model.at == [0.0, 30.0]


def test_non_streaming_calls_are_retried():
    cw, model, _clock = window([err(503)], [T("ok"), DONE])
    assert cw.call(stream=False).text == "ok"
    assert model.at == [0.0, 1.0]


def test_the_default_trampoline_waits_on_this_thread(monkeypatch):
    # With no scheduler anywhere the wait blocks the subscribing thread: a zero wait here.
    model = rxcontext.providers.ScriptedModel([[err(429, retry_after=0.0)], [T("ok"), DONE]])
    cw = ContextWindow(rxcontext.open(":memory:"), model, "z")
    cw.add_prompt("hi")
    got: list[str] = []
    cw.stream().subscribe(lambda c: got.append(c.text))
    assert got == ["ok", ""]
    assert len(model.requests) == 2


# -- timeouts on the sync path --------------------------------------------------------------


def test_a_late_first_chunk_times_out_and_is_retried():
    cw, model, clock = window(
        [Wait(10.0), T("late")], [T("ok"), DONE], timeouts=Timeouts(first_chunk=5.0)
    )
    seen = subscribe(cw, clock)
    clock.start()
    assert seen.text == "ok" and seen.completed  # "late" was never delivered
    assert model.closed == 1  # the stalled stream was closed
    assert model.at == [0.0, 11.0]  # the read returned at 10 s, then the 1 s backoff


def test_idle_timeout_ends_with_a_checkpoint_of_what_was_delivered():
    cw, model, clock = window(
        [T("a"), Wait(1.0), T("b"), Wait(9.0), T("c"), DONE], timeouts=Timeouts(idle=5.0)
    )
    seen = subscribe(cw, clock)
    clock.start()
    assert isinstance(seen.error, StreamInterrupted)
    cause = seen.error.__cause__
    assert isinstance(cause, IdleTimeout) and cause.seconds == 5.0
    assert "Timeouts.idle" in str(cause)
    assert seen.error.checkpoint.text == "ab" == seen.text
    assert model.closed == 1 and len(model.requests) == 1
    assert replies(cw) == []


def test_time_spent_by_subscribers_does_not_count_as_idle():
    cw, _model, clock = window([T("a"), T("b"), DONE], timeouts=Timeouts(idle=1.0))
    seen = Seen()
    cw.stream().subscribe(
        lambda c: (seen.chunks.append(c), clock.sleep(5.0)),
        seen.on_error,
        seen.on_completed,
        scheduler=clock,
    )
    clock.start()
    assert seen.completed and seen.text == "ab"


# -- asyncio ----------------------------------------------------------------------------


async def test_async_retries_wait_on_the_scheduler():
    cw, model, clock = window([err(503)], [err(429, retry_after=5.0)], [T("ok"), DONE])
    task = asyncio.create_task(cw.acall())
    await clock.armed(1)
    assert model.at == [0.0]
    clock.advance_by(1.0)
    await clock.armed(2)
    assert model.at == [0.0, 1.0]
    clock.advance_by(5.0)
    reply = await task
    assert reply.text == "ok" and model.at == [0.0, 1.0, 6.0]
    assert replies(cw) == ["ok"]


async def test_async_no_retry_after_a_chunk_and_non_retryable_fail_at_once():
    cw, model, _ = window([T("a"), err(503)], [err(401)], [T("never"), DONE])
    with pytest.raises(StreamInterrupted) as info:
        await cw.acall()
    assert info.value.checkpoint.text == "a" and len(model.requests) == 1
    with pytest.raises(StreamInterrupted) as info:
        await cw.acall()
    assert info.value.__cause__.status_code == 401 and len(model.requests) == 2


async def test_async_idle_timeout_cancels_and_closes_a_stalled_stream():
    cw, model, clock = window([T("a"), T("b"), Stall()], timeouts=Timeouts(idle=5.0))
    got: list[str] = []

    async def consume() -> None:
        async for chunk in cw.astream():
            got.append(chunk.text)

    task = asyncio.create_task(consume())
    await clock.armed(2)  # one idle timer per read after the first: the read of "b", the stall
    assert got == ["a", "b"]
    clock.advance_by(5.0)
    with pytest.raises(StreamInterrupted) as info:
        await task
    assert isinstance(info.value.__cause__, IdleTimeout)
    assert info.value.checkpoint.text == "ab"
    assert model.closed == 1


async def test_async_first_chunk_timeout_is_retried():
    cw, model, clock = window([Stall()], [T("ok"), DONE], timeouts=Timeouts(first_chunk=3.0))
    task = asyncio.create_task(cw.acall())
    await clock.armed(1)
    clock.advance_by(3.0)  # the timeout fires; then the 1 s backoff is armed
    await clock.armed(2)
    clock.advance_by(1.0)
    assert (await task).text == "ok"
    assert model.at == [0.0, 4.0] and model.closed == 1


async def test_async_chunk_in_time_disarms_the_timer():
    cw, _model, clock = window(
        [T("a"), Wait(2.0), T("b"), DONE], timeouts=Timeouts(first_chunk=3.0, idle=3.0)
    )
    task = asyncio.create_task(cw.acall())
    await clock.armed(3)  # first-chunk timer, idle timer, the model's own 2 s read
    clock.advance_by(2.5)
    await clock.armed(4)  # the idle timer for the read after "b"
    assert (await task).text == "ab"
    clock.advance_by(10.0)  # the old timers were disposed: nothing fires into the window
    assert replies(cw) == ["ab"]


async def test_async_cancel_during_the_retry_wait_checkpoints():
    cw, model, clock = window([err(503)], [T("never"), DONE])
    task = asyncio.create_task(cw.acall())
    await clock.armed(1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(model.requests) == 1
    (cp,) = cw.checkpoints()
    assert cp.error.startswith("CancelledError")


async def test_the_event_loop_clock_path_closes_a_stalled_stream_too():
    # No scheduler: asyncio.timeout on the loop's own clock. A limit of a nanosecond expires
    # on the loop's next turn, so nothing waits for real.
    model = TimedModel([[T("a"), Stall()]], Clock())
    cw = ContextWindow(
        rxcontext.open(":memory:"), model, "loop", timeouts=Timeouts(idle=1e-9), retry=None
    )
    cw.add_prompt("hi")
    with pytest.raises(StreamInterrupted) as info:
        await cw.acall()
    assert isinstance(info.value.__cause__, IdleTimeout)
    assert info.value.checkpoint.text == "a"
    assert model.closed == 1


async def test_a_timeout_error_raised_by_the_model_is_not_mistaken_for_ours():
    cw, _, _ = window([T("a"), TimeoutError("sdk read timeout")], timeouts=Timeouts(idle=5.0))
    with pytest.raises(StreamInterrupted) as info:
        await cw.acall()
    assert type(info.value.__cause__) is TimeoutError


@pytest.mark.parametrize(
    "timeouts", [Timeouts(idle=5.0), Timeouts(deadline=10.0)], ids=["idle", "deadline"]
)
async def test_an_end_of_stream_late_after_done_completes_on_both_paths(timeouts):
    """Every chunk, DONE included, comes in time; only the model's iterator ends late (its
    read after DONE outlasts the idle time or the deadline). The sync driver cannot cut a
    blocking read short and takes the late end as the end; the asyncio driver, which can,
    must do the same: the reply is complete at DONE (it used to be interrupted)."""
    script = [T("a"), T("b"), DONE, Wait(20.0)]
    cw, _model, clock = window(list(script), timeouts=timeouts)
    seen = subscribe(cw, clock)
    clock.start()
    assert seen.completed and seen.text == "ab" and replies(cw) == ["ab"]

    cw, model, clock = window(list(script), timeouts=timeouts)
    task = asyncio.create_task(cw.acall())
    while not any(due - at == 20.0 for at, due in clock.timers):  # the model's late end
        await clock.armed(len(clock.timers) + 1)
    clock.advance_by(20.0)
    reply = await task
    assert reply.text == "ab" and replies(cw) == ["ab"]
    assert model.closed == 1 and cw.checkpoints() == []


@pytest.mark.parametrize("held", [ChunkKind.DONE, ChunkKind.TEXT])
async def test_a_deadline_passing_while_the_consumer_holds_done_leaves_the_reply_whole(held):
    """Every chunk came in time; the consumer then holds one past the deadline (its handler
    moves the clock on). Held on DONE, the reply is whole and nothing is left to cut: both
    drivers complete and store it (asyncio used to end it as DeadlineExceeded). Held on
    text, the deadline cuts the reply on both paths."""
    script = [T("a"), T("b"), DONE]

    def hold(chunk: Chunk, clock: Clock, held_once: list[bool]) -> None:
        if chunk.kind is held and not held_once:
            held_once.append(True)
            clock.sleep(20.0)  # the consumer's hold outlasts the 10 s deadline

    cw, _model, clock = window(list(script), timeouts=Timeouts(deadline=10.0), retry=None)
    seen, once = Seen(), []

    def on_next(chunk: Chunk) -> None:
        seen.chunks.append(chunk)
        hold(chunk, clock, once)

    cw.stream().subscribe(on_next, seen.on_error, seen.on_completed, scheduler=clock)
    clock.start()

    acw, _amodel, aclock = window(list(script), timeouts=Timeouts(deadline=10.0), retry=None)
    got: list[Chunk] = []
    aonce: list[bool] = []
    error: Exception | None = None
    try:
        async for chunk in acw.astream():
            got.append(chunk)
            hold(chunk, aclock, aonce)
    except StreamInterrupted as interrupted:
        error = interrupted

    if held is ChunkKind.DONE:
        assert seen.error is None and seen.completed and replies(cw) == ["ab"]
        assert error is None and replies(acw) == ["ab"] and acw.checkpoints() == []
    else:
        assert isinstance(seen.error, StreamInterrupted) and replies(cw) == []
        assert isinstance(seen.error.__cause__, DeadlineExceeded)
        assert isinstance(error, StreamInterrupted) and replies(acw) == []
        assert isinstance(error.__cause__, DeadlineExceeded)
        assert error.checkpoint.text == seen.error.checkpoint.text == "a"
