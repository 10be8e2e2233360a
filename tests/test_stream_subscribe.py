"""``cw.stream()`` subscribed straight from a thread with no trampoline running wires its
subscription itself and runs the producer as the trampoline's only item: what a subscriber
sees is what RxPY's own ``subscribe`` gives (order of events, the trampoline still running
around ``on_next``, work scheduled there running after the reply, an observer object or
callbacks, errors from the user's code, dispose after the end), and every other way of
subscribing goes through RxPY's ``subscribe`` as before."""

from __future__ import annotations

from typing import Any

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.observer import Observer
from reactivex.scheduler import CurrentThreadScheduler, ImmediateScheduler

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, StreamInterrupted
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

TEXTS = ["a", "b", "c", "d"]


def window(tmp_path: Any, **kwargs: Any) -> ContextWindow:
    store = rxcontext.open(tmp_path / "s.db")
    chunks = [Chunk(ChunkKind.TEXT, t) for t in TEXTS] + [Chunk(ChunkKind.DONE)]
    model = ScriptedModel([chunks], repeat_last=True)
    cw = ContextWindow(store, model, context="c", checkpoint_every=None, **kwargs)
    cw.add_prompt("hi")
    return cw


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, Chunk) and e.kind is ChunkKind.TEXT]


def test_events_in_order_and_the_trampoline_runs_around_them(tmp_path: Any) -> None:
    cw = window(tmp_path)
    trampoline = CurrentThreadScheduler.singleton()
    events: list[Any] = []

    def on_next(chunk: Chunk) -> None:
        events.append(chunk)
        if chunk.text == "a":
            # Scheduled from inside the producer: queued, it runs once the reply ended.
            assert not trampoline.schedule_required()
            trampoline.schedule(lambda *_: events.append("scheduled"))

    done = cw.stream().subscribe(on_next, events.append, lambda: events.append("completed"))
    assert texts(events) == TEXTS
    assert events[-2:] == ["completed", "scheduled"]
    assert trampoline.schedule_required()  # idle again
    done.dispose()  # after the end: nothing happens
    assert [r.content for r in cw.live_records()] == ["hi", "abcd"]
    assert cw.checkpoints() == []


def test_an_observer_object_gets_the_same(tmp_path: Any) -> None:
    cw = window(tmp_path)
    events: list[Any] = []
    observer: Observer[Chunk] = Observer(
        events.append, events.append, lambda: events.append("completed")
    )
    cw.stream(rxops.middleware(on_chunk=lambda c: None)).subscribe(observer)
    assert texts(events) == TEXTS and events[-1] == "completed"

    class Plain:  # not an ObserverBase: an object with callable on_next
        def __init__(self) -> None:
            self.seen: list[str] = []
            self.done = False

        def on_next(self, chunk: Chunk) -> None:
            self.seen.append(chunk.text)

        def on_error(self, error: Exception) -> None:
            raise error

        def on_completed(self) -> None:
            self.done = True

    plain = Plain()
    cw.stream().subscribe(plain)
    assert "".join(plain.seen) == "abcd" and plain.done


def test_the_users_error_reaches_them_with_a_checkpoint_of_what_was_delivered(
    tmp_path: Any,
) -> None:
    cw = window(tmp_path)

    def on_next(chunk: Chunk) -> None:
        if chunk.text == "b":
            raise ValueError("mine")

    with pytest.raises(ValueError, match="mine"):
        cw.stream().subscribe(on_next)
    assert CurrentThreadScheduler.singleton().schedule_required()
    [checkpoint] = cw.checkpoints()
    assert checkpoint.text == "ab"


def test_a_failing_run_reaches_on_error(tmp_path: Any) -> None:
    cw = window(tmp_path)
    errors: list[Exception] = []
    cw.stream(rxops.middleware(on_chunk=lambda c: 1 / 0 if c.text == "c" else None)).subscribe(
        on_error=errors.append
    )
    [error] = errors
    assert isinstance(error, StreamInterrupted) and error.checkpoint.text == "ab"


@pytest.mark.parametrize("how", ["take", "nested", "scheduler", "immediate"])
def test_other_subscriptions_as_before(tmp_path: Any, how: str) -> None:
    cw = window(tmp_path)
    got: list[str] = []
    if how == "take":  # an operator's subscription, inside the trampoline its own opened
        cw.stream().pipe(ops.take(2)).subscribe(lambda c: got.append(c.text))
        assert got == ["a", "b"]
        [checkpoint] = cw.checkpoints()
        assert checkpoint.text == "ab"
        return
    if how == "nested":  # subscribed from another source's on_next
        reactivex.of(1).subscribe(lambda _: cw.stream().subscribe(lambda c: got.append(c.text)))
    elif how == "scheduler":
        cw.stream().subscribe(
            lambda c: got.append(c.text), scheduler=CurrentThreadScheduler.singleton()
        )
    else:
        cw.stream().subscribe(lambda c: got.append(c.text), scheduler=ImmediateScheduler())
    assert "".join(got) == "abcd"
    assert cw.checkpoints() == []


def test_subscribing_twice_makes_two_replies(tmp_path: Any) -> None:
    cw = window(tmp_path)
    obs = cw.stream()
    obs.subscribe()
    cw.add_prompt("again")
    obs.subscribe()
    assert [r.content for r in cw.live_records()] == ["hi", "abcd", "again", "abcd"]
