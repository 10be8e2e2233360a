"""Partial objects of a streamed structured reply: incremental parsing against re-parsing.

One JSON document (a list of 200 small objects, about 17 KB) arrives in 4-character
chunks, as a model streams it. Three ways to follow it, timed on the same bytes:

* ``incremental``: one :class:`~rxcontext.jsonstream.JsonStream` fed each chunk, its
  ``partial()`` read after every chunk that changed it (what ``rxops.partial_objects()``
  does);
* ``reparse``: the same parser made afresh and fed the whole text so far at every chunk
  (what following a stream by re-parsing the prefix costs: O(n²));
* ``loads_once``: ``json.loads`` of the finished text, once (the floor: no partials at all).

The ratios printed at the end are of medians in this run (``python -m pytest
benchmarks/bench_jsonstream.py``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import record

from rxcontext.jsonstream import JsonStream

DOC = json.dumps(
    {
        "items": [
            {"id": i, "name": f"item number {i}", "tags": ["a", "b"], "ok": True}
            for i in range(200)
        ]
    }
)
CHUNKS = [DOC[i : i + 4] for i in range(0, len(DOC), 4)]
MEDIANS: dict[str, float] = {}


def incremental() -> Any:
    parser = JsonStream()
    for piece in CHUNKS:
        if parser.feed(piece):
            parser.partial()
    return parser.close()


def reparse() -> Any:
    text = ""
    value = None
    for piece in CHUNKS:
        text += piece
        parser = JsonStream()
        parser.feed(text)
        value = parser.partial()
    return value


def loads_once() -> Any:
    return json.loads("".join(CHUNKS))


WAYS = {"incremental": incremental, "reparse": reparse, "loads_once": loads_once}


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("way", list(WAYS))
def bench_partial_objects(benchmark: Any, way: str) -> None:
    benchmark.group = "jsonstream"
    fn = WAYS[way]
    rounds = 3 if way == "reparse" else 30
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    assert result == json.loads(DOC)
    MEDIANS[way] = benchmark.stats.stats.median
    if len(MEDIANS) == len(WAYS):
        ratios = {
            "reparse / incremental": MEDIANS["reparse"] / MEDIANS["incremental"],
            "incremental / loads_once": MEDIANS["incremental"] / MEDIANS["loads_once"],
            "chunks": len(CHUNKS),
            "bytes": len(DOC),
        }
        record("jsonstream", "ratios", ratios)
        print(
            f"\njsonstream ({len(DOC)} bytes, {len(CHUNKS)} chunks): "
            + ", ".join(
                f"{k} {v:.1f}x" if isinstance(v, float) else f"{k} {v}" for k, v in ratios.items()
            )
        )
