"""rxops.partial_objects() delivers each partial value while the reply streams: in the
``on_next`` of the text delta that made it, not queued on the trampoline until the stream
ends. So a cut reply delivers its partial values before the error, ``take(n)`` stops the
stream early, and an error of the subscriber's reaches the producer as through ``map``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.testing import ReactiveTest, TestScheduler

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, StreamInterrupted
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error
subscribe = ReactiveTest.subscribe


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


PIECES = ['{"name": "Pa', 'ris", "popu', 'lation": 2102650, "riv', 'ers": ["Sei', 'ne"]}']
PARTIALS = [
    {"name": "Pa"},
    {"name": "Paris"},
    {"name": "Paris", "population": 2102650},
    {"name": "Paris", "population": 2102650, "rivers": ["Sei"]},
    {"name": "Paris", "population": 2102650, "rivers": ["Seine"]},
]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "population": {"type": "integer"},
        "rivers": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "population", "rivers"],
    "additionalProperties": False,
}


class Boom(Exception):
    pass


# -- virtual time ----------------------------------------------------------------------------


def test_each_partial_arrives_at_its_deltas_time() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(
        *(on_next(210 + 10 * n, T(piece)) for n, piece in enumerate(PIECES)),
        on_completed(300),
    )
    results = scheduler.start(lambda: xs.pipe(rxops.partial_objects()))
    assert results.messages == [
        *(on_next(210 + 10 * n, value) for n, value in enumerate(PARTIALS)),
        on_completed(300),
    ]
    assert xs.subscriptions == [subscribe(200, 300)]


def test_a_cold_stream_cut_gives_its_partials_before_the_error() -> None:
    scheduler = TestScheduler()
    error = Boom("cut")
    xs = scheduler.create_cold_observable(
        on_next(10, T(PIECES[0])), on_next(20, T(PIECES[1])), on_error(30, error)
    )
    results = scheduler.start(lambda: xs.pipe(rxops.partial_objects()))
    assert results.messages == [
        on_next(210, PARTIALS[0]),
        on_next(220, PARTIALS[1]),
        on_error(230, error),
    ]


def test_take_one_unsubscribes_the_source_at_the_first_partial() -> None:
    scheduler = TestScheduler()
    ys = scheduler.create_hot_observable(
        on_next(210, T(" ")),  # nothing parsed yet: no value
        on_next(220, T(PIECES[0])),
        on_next(230, T(PIECES[1])),
        on_completed(300),
    )
    results = scheduler.start(lambda: ys.pipe(rxops.partial_objects(), ops.take(1)))
    assert results.messages == [on_next(220, {"name": "Pa"}), on_completed(220)]
    assert ys.subscriptions == [subscribe(200, 220)]


def test_disposal_reaches_the_source() -> None:
    scheduler = TestScheduler()
    xs = scheduler.create_hot_observable(on_next(210, T(PIECES[0])), on_next(400, T(PIECES[1])))
    results = scheduler.start(lambda: xs.pipe(rxops.partial_objects()), disposed=300)
    assert results.messages == [on_next(210, PARTIALS[0])]
    assert xs.subscriptions == [subscribe(200, 300)]


# -- on the current thread's trampoline --------------------------------------------------------


def test_a_partial_arrives_before_the_next_delta_is_produced() -> None:
    events: list[Any] = []

    def produce() -> Iterator[Chunk]:
        for piece in PIECES:
            events.append(("produced", piece))
            yield T(piece)

    reactivex.from_iterable(produce()).pipe(rxops.partial_objects()).subscribe(events.append)
    assert events == [
        e for pair in zip(PIECES, PARTIALS, strict=True) for e in (("produced", pair[0]), pair[1])
    ]


def test_an_error_of_the_subscriber_reaches_the_source_as_through_map() -> None:
    """Plain RxPY: an ``on_next`` that raises raises in whoever called ``on_next``."""
    for operator in (ops.map(lambda chunk: chunk.text), rxops.partial_objects()):
        source = reactivex.subject.Subject[Chunk]()
        seen: list[Any] = []
        errors: list[Exception] = []

        def fail(value: Any, seen: list[Any] = seen) -> None:
            seen.append(value)
            raise Boom(value)

        source.pipe(operator).subscribe(fail, errors.append)
        with pytest.raises(Boom):
            source.on_next(T(PIECES[0]))
        assert len(seen) == 1 and errors == []


# -- through cw.stream() -------------------------------------------------------------------------


def window(*scripts: list[Chunk | BaseException]) -> tuple[ContextWindow, ScriptedModel]:
    model = ScriptedModel(list(scripts))
    cw = ContextWindow(rxcontext.open(":memory:"), model, "x", retry=None)
    cw.add_prompt("The largest city of France, as JSON.")
    return cw, model


def test_stream_gives_each_partial_before_the_next_chunk_is_produced() -> None:
    cw, _ = window([T(p) for p in PIECES])
    events: list[Any] = []
    hooks = rxops.middleware(on_chunk=lambda chunk: events.append(("chunk", chunk.text)))
    done: list[bool] = []
    cw.stream(hooks, schema=SCHEMA).pipe(rxops.partial_objects()).subscribe(
        events.append, on_completed=lambda: done.append(True)
    )
    assert events == [
        e for pair in zip(PIECES, PARTIALS, strict=True) for e in (("chunk", pair[0]), pair[1])
    ]
    assert done == [True]


def test_a_cut_reply_gives_its_partials_before_the_error() -> None:
    cw, _ = window([*(T(p) for p in PIECES[:4]), ConnectionError("cut")])
    events: list[Any] = []
    cw.stream(schema=SCHEMA).pipe(rxops.partial_objects()).subscribe(events.append, events.append)
    *partials, error = events
    assert partials == PARTIALS[:4]
    assert isinstance(error, StreamInterrupted)
    (checkpoint,) = cw.checkpoints()
    assert checkpoint.text == "".join(PIECES[:4]) and checkpoint.state is ReplyState.INTERRUPTED


def test_take_one_stops_the_reply_as_any_early_dispose() -> None:
    """README: a dispose (``take(n)``) saves the checkpoint with the text received, and
    nothing more reaches the subscriber; the model's stream is closed."""
    cw, model = window([T(p) for p in PIECES])
    events: list[Any] = []
    cw.stream(schema=SCHEMA).pipe(rxops.partial_objects(), ops.take(1)).subscribe(
        events.append, events.append, lambda: events.append("completed")
    )
    assert events == [PARTIALS[0], "completed"]
    assert model.closed == 1
    (checkpoint,) = cw.checkpoints()
    assert checkpoint.text == PIECES[0] and checkpoint.state is ReplyState.INTERRUPTED
    assert [r.type.name for r in cw.live_records()] == ["PROMPT"]


def test_a_subscriber_that_raises_stops_the_reply_as_through_map() -> None:
    for operator in (ops.map(lambda chunk: chunk.text), rxops.partial_objects()):
        cw, model = window([T(p) for p in PIECES])
        errors: list[Exception] = []

        def fail(value: Any) -> None:
            raise Boom(value)

        with pytest.raises(Boom):
            cw.stream(schema=SCHEMA).pipe(operator).subscribe(fail, errors.append)
        assert errors == [] and model.closed == 1
        (checkpoint,) = cw.checkpoints()
        assert checkpoint.text == PIECES[0] and checkpoint.state is ReplyState.INTERRUPTED
