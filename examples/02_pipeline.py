"""02 — a custom operator pipeline over one reply.

* a ``middleware`` that logs stream events (it runs inside the stream, before the persister);
* ``batch_text`` for UI updates: text joined per 50 ms window instead of per token;
* a ``scan`` that tracks tokens per second.

One model call feeds both consumers: ``publish()`` makes the cold stream a connectable one,
both subscribe, then ``connect()`` starts the single request.

    python examples/02_pipeline.py
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from reactivex import operators as ops

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext import operators as rxops
from rxcontext.providers.replay import ScriptedReply, replay_model
from rxcontext.tokens import estimate_tokens

ANSWER = (
    "Backpressure in a token stream is mostly a UI problem: a model sends tens of small "
    "deltas a second, and repainting a widget for each one wastes frames. Batching the "
    "deltas per display frame keeps the interface smooth while the persister still sees "
    "every single chunk."
)

_print_lock = threading.Lock()  # batch_text emits from timer threads


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


@dataclass(frozen=True)
class Rate:
    """Tokens so far and tokens per second since the first text chunk."""

    tokens: int = 0
    started: float | None = None
    per_second: float = 0.0


def track(rate: Rate, chunk: Chunk) -> Rate:
    now = time.monotonic()
    started = rate.started if rate.started is not None else now
    tokens = rate.tokens + estimate_tokens(chunk.text)
    return Rate(tokens, started, tokens / max(now - started, 1e-3))


def main() -> None:
    store = rxcontext.open(":memory:")
    model, _ = replay_model([ScriptedReply(ANSWER, usage=(30, 52))], delay=0.01)
    cw = ContextWindow(store, model, context="pipeline")
    cw.add_prompt("Why batch streamed tokens before drawing them?")

    log = rxops.middleware(
        on_start=lambda: say("[log] request sent"),
        on_chunk=lambda c: c.kind is ChunkKind.DONE and say(f"[log] done: {c.finish_reason}"),
        on_complete=lambda: say("[log] reply complete (already stored)"),
        on_error=lambda e: say(f"[log] error: {e}"),
    )
    reply = cw.stream(log).pipe(ops.publish())

    batches: list[str] = []
    reply.pipe(rxops.batch_text(0.05)).subscribe(
        on_next=lambda text: (batches.append(text), say(f"[ui] +{len(text):3d} chars: {text!r}"))
    )
    reply.pipe(
        ops.filter(lambda c: c.kind is ChunkKind.TEXT),
        ops.scan(track, Rate()),
        ops.last(),
    ).subscribe(on_next=lambda r: say(f"[rate] {r.tokens} tokens at {r.per_second:.0f} tokens/s"))

    reply.connect()  # one request; both pipelines see the same chunks

    assert "".join(batches) == ANSWER
    stored = cw.live_records()[-1]
    say(f"[ui] {len(batches)} repaints instead of {len(ANSWER.split())} words")
    say(
        f"stored: record {stored.id} ({stored.type.name}) equals the batches: "
        f"{stored.content == ''.join(batches)}"
    )
    store.close()


if __name__ == "__main__":
    main()
