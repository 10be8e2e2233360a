"""rxcontext.operators on reactivex's TestScheduler: virtual time, marble-style expectations."""

from __future__ import annotations

from typing import Any

import pytest
import reactivex
from reactivex import Observable
from reactivex import operators as ops
from reactivex.testing import ReactiveTest, TestScheduler

from rxcontext import Chunk, ChunkKind, Reply, Usage
from rxcontext import operators as rxops

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error
subscribe = ReactiveTest.subscribe

# TestScheduler.start: created at 100, subscribed at 200, disposed at 1000.


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


def K(text: str) -> Chunk:
    return Chunk(ChunkKind.THINKING, text)


DONE = Chunk(ChunkKind.DONE, finish_reason="stop", response_id="r1")


class Boom(Exception):
    pass


@pytest.fixture
def scheduler() -> TestScheduler:
    return TestScheduler()


def is_(error: BaseException) -> Any:
    """``on_error(t, is_(e))`` matches exactly ``e``.

    A plain function is a predicate to ReactiveTest. It only works on the left of ``==``
    (``expected == results.messages``): the recorded side compares errors by ``str``.
    """

    def same(e: BaseException) -> bool:
        return e is error

    return same


# -- accumulate / reduce_reply -------------------------------------------------------------


def test_accumulate_emits_a_snapshot_per_chunk(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(
        on_next(150, T("ignored: before subscription")),
        on_next(210, T("He")),
        on_next(220, K("hmm")),
        on_next(230, T("llo")),
        on_next(240, DONE),
        on_completed(250),
    )
    results = scheduler.start(lambda: xs.pipe(rxops.accumulate()))
    assert results.messages == [
        on_next(210, Reply("He")),
        on_next(220, Reply("He", "hmm")),
        on_next(230, Reply("Hello", "hmm")),
        on_next(240, Reply("Hello", "hmm", finish_reason="stop", response_id="r1")),
        on_completed(250),
    ]
    assert xs.subscriptions == [subscribe(200, 250)]


def test_accumulate_passes_errors_through(scheduler: TestScheduler):
    boom = Boom("upstream")
    xs = scheduler.create_hot_observable(on_next(210, T("a")), on_error(220, boom))
    results = scheduler.start(lambda: xs.pipe(rxops.accumulate()))
    assert [on_next(210, Reply("a")), on_error(220, is_(boom))] == results.messages


def test_two_subscriptions_do_not_share_an_accumulator(scheduler: TestScheduler):
    xs = scheduler.create_cold_observable(
        on_next(10, T("a")), on_next(20, T("b")), on_completed(30)
    )
    replies = xs.pipe(rxops.accumulate())
    first = scheduler.create_observer()
    second = scheduler.create_observer()
    scheduler.schedule_absolute(200, lambda *_: replies.subscribe(first))
    scheduler.schedule_absolute(215, lambda *_: replies.subscribe(second))
    scheduler.start()
    expected = [Reply("a"), Reply("ab")]
    assert first.messages == [
        on_next(210, expected[0]),
        on_next(220, expected[1]),
        on_completed(230),
    ]
    assert second.messages == [
        on_next(225, expected[0]),
        on_next(235, expected[1]),
        on_completed(245),
    ]


def test_reduce_reply_emits_only_the_final_reply_on_completion(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(
        on_next(210, T("He")),
        on_next(220, Chunk(ChunkKind.USAGE, usage=Usage.of(3, 1))),
        on_next(230, T("llo")),
        on_next(235, Chunk(ChunkKind.USAGE, usage=Usage.of(3, 2))),
        on_next(240, DONE),
        on_completed(250),
    )
    results = scheduler.start(lambda: xs.pipe(rxops.reduce_reply()))
    final = Reply("Hello", usage=Usage(3, 2, 5), finish_reason="stop", response_id="r1")
    assert results.messages == [on_next(250, final), on_completed(250)]


def test_reduce_reply_of_an_empty_stream_is_an_empty_reply(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(on_completed(250))
    results = scheduler.start(lambda: xs.pipe(rxops.reduce_reply()))
    assert results.messages == [on_next(250, Reply()), on_completed(250)]


def test_reduce_reply_errors_without_a_reply(scheduler: TestScheduler):
    boom = Boom("cut")
    xs = scheduler.create_hot_observable(on_next(210, T("partial")), on_error(220, boom))
    results = scheduler.start(lambda: xs.pipe(rxops.reduce_reply()))
    assert [on_error(220, is_(boom))] == results.messages


def test_reduce_reply_resubscribed_starts_afresh():
    replies = reactivex.from_iterable([T("x"), T("y")]).pipe(rxops.reduce_reply())
    got: list[Reply] = []
    replies.subscribe(got.append)
    replies.subscribe(got.append)
    assert got == [Reply("xy"), Reply("xy")]


# -- text / thinking / tool_calls ----------------------------------------------------------


def test_text_keeps_non_empty_text_deltas_only(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(
        on_next(210, T("He")),
        on_next(220, K("hmm")),
        on_next(230, T("")),
        on_next(240, T("llo")),
        on_next(250, DONE),
        on_completed(260),
    )
    results = scheduler.start(lambda: xs.pipe(rxops.text()))
    assert results.messages == [on_next(210, "He"), on_next(240, "llo"), on_completed(260)]


def test_thinking_keeps_reasoning_deltas_only(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(
        on_next(210, K("let")),
        on_next(220, T("answer")),
        on_next(230, Chunk(ChunkKind.THINKING, "", metadata={"signature": "s"})),
        on_next(240, K(" me")),
        on_completed(250),
    )
    results = scheduler.start(lambda: xs.pipe(rxops.thinking()))
    assert results.messages == [on_next(210, "let"), on_next(240, " me"), on_completed(250)]


def test_tool_calls_keeps_call_fragments_and_results(scheduler: TestScheduler):
    call = Chunk(ChunkKind.TOOL_CALL, "{}", id="c", name="f")
    result = Chunk(ChunkKind.TOOL_RESULT, "out", id="c", name="f")
    xs = scheduler.create_hot_observable(
        on_next(210, T("a")), on_next(220, call), on_next(230, result), on_completed(240)
    )
    results = scheduler.start(lambda: xs.pipe(rxops.tool_calls()))
    assert results.messages == [on_next(220, call), on_next(230, result), on_completed(240)]


# -- batch_text ----------------------------------------------------------------------------


def test_batch_text_joins_per_window_and_drops_empty_windows(scheduler: TestScheduler):
    # Windows of 30 ticks from the subscription at 200: [200,230) [230,260) [260,290) ...
    xs = scheduler.create_hot_observable(
        on_next(205, T("a")),
        on_next(210, K("not text")),
        on_next(215, T("b")),
        on_next(220, T("")),
        on_next(225, T("c")),
        # 230-290: nothing -> two empty windows, dropped
        on_next(295, T("d")),
        on_next(300, DONE),
        on_next(305, T("e")),
        on_completed(310),
    )
    results = scheduler.start(lambda: xs.pipe(rxops.batch_text(30, scheduler=scheduler)))
    assert results.messages == [
        on_next(230, "abc"),
        on_next(310, "de"),
        on_completed(310),
    ]


def test_batch_text_flushes_the_last_window_on_completion(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(on_next(201, T("x")), on_completed(202))
    results = scheduler.start(lambda: xs.pipe(rxops.batch_text(1000, scheduler=scheduler)))
    assert results.messages == [on_next(202, "x"), on_completed(202)]


def test_batch_text_of_a_silent_stream_emits_nothing(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(on_next(210, DONE), on_completed(500))
    results = scheduler.start(lambda: xs.pipe(rxops.batch_text(10, scheduler=scheduler)))
    assert results.messages == [on_completed(500)]


def test_batch_text_passes_errors_through(scheduler: TestScheduler):
    boom = Boom("x")
    xs = scheduler.create_hot_observable(on_next(210, T("a")), on_error(220, boom))
    results = scheduler.start(lambda: xs.pipe(rxops.batch_text(100, scheduler=scheduler)))
    assert [on_error(220, is_(boom))] == results.messages


def test_batch_text_after_text_batches_the_strings(scheduler: TestScheduler):
    # The composition people write first: the text deltas, then batches of them.
    xs = scheduler.create_hot_observable(
        on_next(205, T("a")),
        on_next(210, K("not text")),
        on_next(215, T("b")),
        on_next(240, T("c")),
        on_completed(250),
    )
    results = scheduler.start(
        lambda: xs.pipe(rxops.text(), rxops.batch_text(30, scheduler=scheduler))
    )
    assert results.messages == [on_next(230, "ab"), on_next(250, "c"), on_completed(250)]


def test_batch_text_takes_strings_and_chunks_alike(scheduler: TestScheduler):
    # Text chunks and plain strings join in order; other chunks and empty strings add nothing.
    xs = scheduler.create_hot_observable(
        on_next(205, "a"),
        on_next(210, T("b")),
        on_next(215, ""),
        on_next(220, DONE),
        on_next(225, "c"),
        on_completed(226),
    )
    results = scheduler.start(lambda: xs.pipe(rxops.batch_text(30, scheduler=scheduler)))
    assert results.messages == [on_next(226, "abc"), on_completed(226)]


# -- middleware ----------------------------------------------------------------------------


class Log:
    """Records hook calls with the virtual time they happened at."""

    def __init__(
        self, scheduler: TestScheduler, fail: str | None = None, error: Exception | None = None
    ):
        self.scheduler = scheduler
        self.calls: list[tuple[int, str, Any]] = []
        self.fail = fail
        self.error = error or Boom(f"{fail} hook failed")

    def _now(self) -> int:
        return int(self.scheduler.clock)

    def _hook(self, name: str, value: Any = None) -> None:
        self.calls.append((self._now(), name, value))
        if name == self.fail:
            raise self.error

    def start(self) -> None:
        self._hook("start")

    def chunk(self, chunk: Chunk) -> None:
        self._hook("chunk", chunk.text)
        if self.fail == f"chunk:{chunk.text}":
            raise self.error

    def complete(self) -> None:
        self._hook("complete")

    def on_error(self, error: BaseException) -> None:
        self._hook("error", error)

    def hooks(self) -> rxops.Middleware:
        return rxops.middleware(self.start, self.chunk, self.complete, self.on_error)


def test_middleware_calls_hooks_in_order_and_passes_chunks_through(scheduler: TestScheduler):
    log = Log(scheduler)
    xs = scheduler.create_hot_observable(
        on_next(210, T("a")), on_next(220, T("b")), on_completed(230)
    )
    results = scheduler.start(lambda: xs.pipe(log.hooks()))
    assert results.messages == [on_next(210, T("a")), on_next(220, T("b")), on_completed(230)]
    assert log.calls == [
        (200, "start", None),
        (210, "chunk", "a"),
        (220, "chunk", "b"),
        (230, "complete", None),
    ]
    assert xs.subscriptions == [subscribe(200, 230)]


def test_middleware_sees_upstream_errors(scheduler: TestScheduler):
    log = Log(scheduler)
    boom = Boom("upstream")
    xs = scheduler.create_hot_observable(on_next(210, T("a")), on_error(220, boom))
    results = scheduler.start(lambda: xs.pipe(log.hooks()))
    assert [on_next(210, T("a")), on_error(220, is_(boom))] == results.messages
    assert log.calls == [(200, "start", None), (210, "chunk", "a"), (220, "error", boom)]


def test_a_raising_chunk_hook_ends_the_stream_and_unsubscribes(scheduler: TestScheduler):
    log = Log(scheduler, fail="chunk:b")
    xs = scheduler.create_hot_observable(
        on_next(210, T("a")), on_next(220, T("b")), on_next(230, T("c")), on_completed(240)
    )
    results = scheduler.start(lambda: xs.pipe(log.hooks()))
    # The failing chunk is not delivered; the error is the hook's own exception.
    assert [on_next(210, T("a")), on_error(220, is_(log.error))] == results.messages
    assert xs.subscriptions == [subscribe(200, 220)]
    assert log.calls == [
        (200, "start", None),
        (210, "chunk", "a"),
        (220, "chunk", "b"),
        (220, "error", log.error),
    ]


def test_a_raising_start_hook_never_subscribes_the_source(scheduler: TestScheduler):
    log = Log(scheduler, fail="start")
    xs = scheduler.create_hot_observable(on_next(210, T("a")), on_completed(240))
    results = scheduler.start(lambda: xs.pipe(log.hooks()))
    assert [on_error(200, is_(log.error))] == results.messages
    assert xs.subscriptions == []
    assert log.calls == [(200, "start", None), (200, "error", log.error)]


def test_a_raising_complete_hook_turns_completion_into_that_error(scheduler: TestScheduler):
    log = Log(scheduler, fail="complete")
    xs = scheduler.create_hot_observable(on_next(210, T("a")), on_completed(240))
    results = scheduler.start(lambda: xs.pipe(log.hooks()))
    assert [on_next(210, T("a")), on_error(240, is_(log.error))] == results.messages
    assert log.calls[-2:] == [(240, "complete", None), (240, "error", log.error)]


def test_a_raising_error_hook_replaces_the_error_and_chains_it(scheduler: TestScheduler):
    upstream = Boom("upstream")
    log = Log(scheduler, fail="error", error=Boom("error hook"))
    xs = scheduler.create_hot_observable(on_error(210, upstream))
    results = scheduler.start(lambda: xs.pipe(log.hooks()))
    assert [on_error(210, is_(log.error))] == results.messages
    assert log.error.__context__ is upstream


def test_middleware_disposal_unsubscribes_the_source(scheduler: TestScheduler):
    log = Log(scheduler)
    xs = scheduler.create_hot_observable(on_next(210, T("a")), on_next(400, T("late")))
    results = scheduler.start(lambda: xs.pipe(log.hooks()), disposed=300)
    assert results.messages == [on_next(210, T("a"))]
    assert xs.subscriptions == [subscribe(200, 300)]
    assert [name for _, name, _ in log.calls] == ["start", "chunk"]


def test_middleware_without_hooks_is_transparent(scheduler: TestScheduler):
    xs = scheduler.create_hot_observable(on_next(210, T("a")), on_completed(220))
    results = scheduler.start(lambda: xs.pipe(rxops.middleware()))
    assert results.messages == [on_next(210, T("a")), on_completed(220)]


def test_middleware_tool_hooks_see_first_fragments_and_results(scheduler: TestScheduler):
    calls: list[Chunk] = []
    results_seen: list[Chunk] = []
    first = Chunk(ChunkKind.TOOL_CALL, "", id="c", name="f")
    piece = Chunk(ChunkKind.TOOL_CALL, "{}")
    result = Chunk(ChunkKind.TOOL_RESULT, "out", id="c", name="f")
    xs = scheduler.create_hot_observable(
        on_next(210, first), on_next(220, piece), on_next(230, result), on_completed(240)
    )
    hooks = rxops.middleware(on_tool_call=calls.append, on_tool_result=results_seen.append)
    results = scheduler.start(lambda: xs.pipe(hooks))
    assert len(results.messages) == 4
    assert calls == [first] and results_seen == [result]


def test_middleware_on_a_synchronous_source_stops_at_the_failing_chunk():
    seen: list[str] = []
    produced: list[str] = []

    def chunk(c: Chunk) -> None:
        if c.text == "2":
            raise Boom("stop")

    source: Observable[Chunk] = reactivex.from_iterable(["1", "2", "3"]).pipe(
        ops.do_action(produced.append), ops.map(T)
    )
    errors: list[BaseException] = []
    source.pipe(rxops.middleware(on_chunk=chunk)).subscribe(
        lambda c: seen.append(c.text), errors.append
    )
    assert seen == ["1"]
    assert [str(e) for e in errors] == ["stop"]


def test_every_subscription_runs_its_own_hooks(scheduler: TestScheduler):
    starts: list[int] = []
    hooks = rxops.middleware(on_start=lambda: starts.append(int(scheduler.clock)))
    xs = scheduler.create_cold_observable(on_next(10, T("a")), on_completed(20))
    piped = xs.pipe(hooks)
    scheduler.schedule_absolute(200, lambda *_: piped.subscribe(scheduler.create_observer()))
    scheduler.schedule_absolute(250, lambda *_: piped.subscribe(scheduler.create_observer()))
    scheduler.start()
    assert starts == [200, 250]


def test_operators_compose_in_one_pipe(scheduler: TestScheduler):
    seen: list[str] = []
    xs = scheduler.create_hot_observable(
        on_next(205, T("a")), on_next(215, T("b")), on_next(235, T("c")), on_completed(240)
    )
    results = scheduler.start(
        lambda: xs.pipe(
            rxops.middleware(on_chunk=lambda c: seen.append(c.text)),
            rxops.batch_text(20, scheduler=scheduler),
        )
    )
    assert results.messages == [on_next(220, "ab"), on_next(240, "c"), on_completed(240)]
    assert seen == ["a", "b", "c"]
