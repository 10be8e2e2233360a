"""Time to first chunk with a long history: 10 vs 10,000 live records, on one run's clock.

Issue 14's target: with a 10,000-record history, the first chunk comes at most 10 ms later
than with a 10-record one, on both wires, for all four providers. Per provider and wire, two
contexts of a file-backed SQLite store (WAL) hold 10 and 10,000 records of the same
conversation (a system prompt, then turns of a ~120-character prompt and a ~480-character
reply with some non-ASCII text; every fourth turn a tool call and its output; every tenth
reply with a thinking block and a Gemini thought signature in its metadata: about 3 MB
of request body at 10,000 records). Each SDK's real client is fed a short stream by an
httpx2 ``MockTransport`` (benchmarks/_harness.py). Samples of the two sizes alternate, so
drift on a shared machine hits both alike; medians are reported, and the difference of the
medians is the result (CPU time, ``time.process_time``: all of this is CPU work here).

- **pipeline**: ``cw.stream()`` subscribed, to the first text chunk, as a user sees it: the
  store read of the live records, the request built from them, the SDK sending it. Each
  round first adds a prompt (not timed) and stores the reply (after the sample), so the
  conversation grows by two records a round, as a chat does.
- **request**: the provider alone, ``model.iter_chunks(Request(records))`` to the first text
  chunk, the records read from the store before the sample (new objects each time, as the
  store returns them). Its difference is the provider's share of the pipeline's.
- **request, same records**: the request sample with the same record objects every time
  (read once), as a store that re-reads only what changed would hand them over.
- **store read**: ``store.records(context, live_only=True)`` alone; the store's share.
- **first request**: the request sample with a model that has encoded nothing yet (each
  record's part of the request is encoded once and kept by the model: see
  rxcontext/providers/_history.py), at 10,000 records; a few samples.

Sizes and rounds come from the environment: ``RXCONTEXT_BENCH_HISTORY`` (default 10000),
``RXCONTEXT_BENCH_HISTORY_ROUNDS`` (default 15).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import _harness as h
import pytest
from _tables import PROVIDER_TITLES
from _wire import make_stream
from conftest import record

import rxcontext
from rxcontext import ChunkKind, ContextWindow
from rxcontext.providers.base import Request
from rxcontext.records import RecordType
from rxcontext.store import RecordDraft

LONG = int(os.environ.get("RXCONTEXT_BENCH_HISTORY", "10000"))
SHORT = 10
ROUNDS = int(os.environ.get("RXCONTEXT_BENCH_HISTORY_ROUNDS", "15"))
FIRST_REQUESTS = 3

_WORDS = ["stream", "reactive", "chunk", "café", "record", "naïve", "window", "—", "résumé"]


def _text(seed: int, chars: int) -> str:
    words: list[str] = []
    n = seed
    while sum(len(w) + 1 for w in words) < chars:
        n = (n * 1103515245 + 12345) % 2**31
        words.append(_WORDS[n % len(_WORDS)])
    return f"#{seed} " + " ".join(words)


def drafts(count: int) -> list[RecordDraft]:
    """The first ``count`` records of the benchmark's conversation."""
    out = [RecordDraft(RecordType.SYSTEM_PROMPT, "You are a helpful assistant. " * 4)]
    turn = 0
    while len(out) < count:
        turn += 1
        out.append(RecordDraft(RecordType.PROMPT, _text(turn, 120)))
        metadata: dict[str, Any] = {}
        if turn % 10 == 0:
            signature = "EjRvcGFxdWUtc2lnbmF0dXJl" * 8
            metadata = {
                "thinking_blocks": [
                    {"type": "thinking", "thinking": _text(-turn, 200), "signature": signature}
                ],
                "gemini_thought_signature": signature,
            }
        out.append(RecordDraft(RecordType.MODEL_RESP, _text(turn + 7, 480), metadata=metadata))
        if turn % 4 == 0:
            call = f"call_{turn}"
            out.append(
                RecordDraft(
                    RecordType.TOOL_CALL,
                    f'{{"city": "Paris {turn}"}}',
                    tool_call_id=call,
                    tool_name="weather",
                )
            )
            output = f"sunny, {turn} °C"
            out.append(
                RecordDraft(RecordType.TOOL_OUTPUT, output, tool_call_id=call, tool_name="weather")
            )
            out.append(RecordDraft(RecordType.MODEL_RESP, _text(turn + 9, 200)))
    return out[:count]


def history_window(store: rxcontext.Store, model: Any, name: str, count: int) -> ContextWindow:
    """A window on a new context holding the first ``count`` records of the conversation."""
    cw = ContextWindow(store, model, context=name)
    records = drafts(count)
    for start in range(0, len(records), 2000):
        store.commit_reply(cw.context_id, records[start : start + 2000])
    return cw


def first_text(chunks: Iterator[Any]) -> None:
    for chunk in chunks:
        if chunk.kind is ChunkKind.TEXT and chunk.text:
            return
    raise AssertionError("no text")


def pipeline_sample(cw: ContextWindow, turn: list[int]) -> Callable[[], float]:
    """Seconds to the first text chunk of ``cw.stream()``, after adding a prompt."""

    def run() -> float:
        turn[0] += 1
        cw.add_prompt(_text(10_000 + turn[0], 120))
        stamps: list[float] = []
        errors: list[Exception] = []

        def on_next(chunk: Any) -> None:
            if not stamps and chunk.kind is ChunkKind.TEXT and chunk.text:
                stamps.append(time.process_time())

        start = time.process_time()
        cw.stream().subscribe(on_next=on_next, on_error=errors.append)
        if errors:
            raise errors[0]
        return stamps[0] - start

    return run


def request_sample(cw: ContextWindow, model: Any) -> Callable[[], float]:
    """Seconds to the first text chunk of ``model.iter_chunks`` with the live records."""

    def run() -> float:
        request = Request(cw.live_records())
        start = time.process_time()
        chunks = model.iter_chunks(request)
        first_text(chunks)
        elapsed = time.process_time() - start
        chunks.close()
        return elapsed

    return run


def reused_sample(cw: ContextWindow, model: Any) -> Callable[[], float]:
    """:func:`request_sample` with the same record objects every time (read once), as a
    store that re-reads only what changed would return them."""
    records = cw.live_records()

    def run() -> float:
        request = Request(records)
        start = time.process_time()
        chunks = model.iter_chunks(request)
        first_text(chunks)
        elapsed = time.process_time() - start
        chunks.close()
        return elapsed

    return run


def store_sample(cw: ContextWindow) -> Callable[[], float]:
    def run() -> float:
        start = time.process_time()
        cw.live_records()
        return time.process_time() - start

    return run


def medians(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median milliseconds of each run, sampled in alternation after one warm-up round."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: statistics.median(v) * 1e3 for name, v in samples.items()}


_contexts = iter(range(10**9))


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("provider_name", list(h.BUILDERS))
def bench_long_history(benchmark: Any, store: Any, provider_name: str, wire: str) -> None:
    provider = h.BUILDERS[provider_name](make_stream(provider_name, 20))
    reason = h.wire_supported(provider.make_model, wire)
    if reason is not None:
        pytest.skip(reason)
    model = provider.model(wire)
    short = history_window(store, model, f"history-{next(_contexts)}", SHORT)
    long = history_window(store, model, f"history-{next(_contexts)}", LONG)
    pipeline = medians(
        {"short": pipeline_sample(short, [0]), "long": pipeline_sample(long, [0])}, ROUNDS
    )
    request = medians(
        {"short": request_sample(short, model), "long": request_sample(long, model)}, ROUNDS
    )
    reused = medians(
        {"short": reused_sample(short, model), "long": reused_sample(long, model)}, ROUNDS
    )
    reads = medians({"short": store_sample(short), "long": store_sample(long)}, ROUNDS)
    first = [request_sample(long, provider.model(wire))() * 1e3 for _ in range(FIRST_REQUESTS)]
    result = {
        "records": (SHORT, LONG),
        "rounds": ROUNDS,
        "pipeline_ms": (pipeline["short"], pipeline["long"]),
        "pipeline_added_ms": pipeline["long"] - pipeline["short"],
        "request_ms": (request["short"], request["long"]),
        "request_added_ms": request["long"] - request["short"],
        "reused_ms": (reused["short"], reused["long"]),
        "reused_added_ms": reused["long"] - reused["short"],
        "store_read_ms": (reads["short"], reads["long"]),
        "store_added_ms": reads["long"] - reads["short"],
        "first_request_ms": statistics.median(first),
    }
    record("history", f"{PROVIDER_TITLES[provider_name]} {wire}", result)
    benchmark.group = "long history"
    benchmark.extra_info.update(kind="history", provider=provider_name, path=wire, role="request")
    benchmark.extra_info.update(result)
    benchmark.pedantic(request_sample(long, model), rounds=1, iterations=1)
