"""Operators alone: µs per chunk through a ``Subject``, for each rxcontext operator.

``subject`` is the bare Subject (the baseline the others are shown net of). ``accumulate``
builds a full ``Reply`` snapshot per chunk, so its per-chunk cost grows with the reply: it
is measured at two lengths to show that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from _wire import deltas
from reactivex import operators as ops
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from rxcontext import Chunk, ChunkKind, Usage
from rxcontext import operators as rxops

N = 2000


def chunks(n: int) -> list[Chunk]:
    out = [Chunk(ChunkKind.TEXT, t) for t in deltas(n - 1)]
    out.append(Chunk(ChunkKind.DONE, usage=Usage.of(10, n), finish_reason="stop"))
    return out


def _noop(_: Any) -> None:
    pass


OPERATORS: dict[str, tuple[str, Callable[[], Any] | None, int]] = {
    # role: (label, operator factory, chunks)
    "subject": ("bare Subject (baseline)", None, N),
    "middleware": ("middleware(on_chunk=...)", lambda: rxops.middleware(on_chunk=_noop), N),
    "text": ("text()", rxops.text, N),
    "batch_text": (
        "batch_text(0.05) (virtual-time scheduler)",
        lambda: rxops.batch_text(0.05, scheduler=HistoricalScheduler()),
        N,
    ),
    "reduce_reply": ("reduce_reply()", rxops.reduce_reply, N),
    "accumulate_500": (
        "accumulate() over a 500-chunk reply",
        rxops.accumulate,
        500,
    ),
    "accumulate": (f"accumulate() over a {N}-chunk reply", rxops.accumulate, N),
    "three": (
        "middleware + text + map (a three-operator pipe)",
        lambda: (
            lambda src: src.pipe(rxops.middleware(on_chunk=_noop), rxops.text(), ops.map(str.upper))
        ),
        N,
    ),
}


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("role", list(OPERATORS))
def bench_operator(benchmark: Any, role: str) -> None:
    label, factory, n = OPERATORS[role]
    data = chunks(n)
    benchmark.group = "operators"
    # Net costs are shown against the baseline's per-chunk time, so every role reports
    # "chunks" for its own length.
    benchmark.extra_info.update(kind="operator", role=role, label=label, chunks=n)
    received: list[Any] = []

    def run() -> int:
        received.clear()
        subject: Subject[Chunk] = Subject()
        source = subject if factory is None else subject.pipe(factory())
        source.subscribe(received.append)
        on_next = subject.on_next
        for chunk in data:
            on_next(chunk)
        subject.on_completed()
        return len(received)

    count = benchmark.pedantic(run, rounds=30, warmup_rounds=2, iterations=1)
    assert count > 0
