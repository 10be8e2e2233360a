"""One long reply in a fresh process: its peak RSS and what its periodic checkpoints cost.

Run by ``bench_longreply.py`` (one subprocess per case, so each peak is the case's own), or
by hand::

    python benchmarks/longreply.py --mb 100 --kind text --charset ascii

prints one JSON object. A model streams a reply of ``--mb`` million UTF-8 bytes in
10-character deltas (fresh ``str`` slices, as an adapter makes them) as text, or as one
Anthropic-style thinking block (its signature at the end, then a short text); the reply goes
through ``cw.call()`` into a file-backed WAL SQLite store with the default
``checkpoint_every=1.0`` (or ``--every``).

- **Peak RSS** is the kernel's: the process's high-water mark (``VmHWM``) is reset through
  ``/proc/self/clear_refs`` after the source text is built (and the heap's free pages handed
  back with ``malloc_trim``, so the start counts only live memory), and the peak above the
  resident size at that moment is divided by the reply's UTF-8 size (``ru_maxrss`` when the reset is
  not available; then the source text's own build counts as the baseline).
- **Checkpoints**: wall time inside the checkpointer's ticks (copying each reply's new text
  and writing it in one transaction, on the checkpointer's thread) summed over the reply,
  divided by the reply's wall time; and the ticks' thread CPU time divided by the process's
  CPU time over the reply (steadier on a shared machine). The stored reply is checked
  against the source (tests/test_checkpoint_marks.py checks checkpoint text exactness).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, Reply
from rxcontext._memory import TRIM_AT, let_go
from rxcontext.checkpointer import Checkpointer
from rxcontext.providers.base import Request, reply_from_chunks

DELTA = 10
MB = 1_000_000
_ASCII = ["reactive", "streams", "of", "tokens", "persisted", "into", "sqlite", "resume"]
_OTHER = ["reactive", "café", "naïve", "—", "résumé", "日本語", "streams", "Größe"]


def source_text(size: int, charset: str) -> str:
    """About ``size`` UTF-8 bytes of words, built without a transient copy of the whole."""
    words = [w + " " for w in (_ASCII if charset == "ascii" else _OTHER)]
    unit = "".join(words)
    reps = max(1, size // len(unit.encode()))
    return unit * reps


class Generated:
    """A model streaming ``text`` as text or thinking deltas of ``DELTA`` characters."""

    name = "generated"

    def __init__(self, text: str, kind: str) -> None:
        self.text = text
        self.kind = kind

    def iter_chunks(self, request: Request) -> Iterator[Chunk]:
        text = self.text
        kind = ChunkKind.THINKING if self.kind == "thinking" else ChunkKind.TEXT
        for i in range(0, len(text), DELTA):
            yield Chunk(kind, text[i : i + DELTA])
        if self.kind == "thinking":
            yield Chunk(ChunkKind.THINKING, "", metadata={"signature": "c2lnbmF0dXJl"})
            yield Chunk(ChunkKind.TEXT, "done", 1)
        yield Chunk(ChunkKind.DONE, finish_reason="stop")

    async def aiter_chunks(self, request: Request) -> AsyncIterator[Chunk]:
        for chunk in self.iter_chunks(request):
            yield chunk

    def complete(self, request: Request) -> Reply:
        return reply_from_chunks(self.iter_chunks(request))

    async def acomplete(self, request: Request) -> Reply:
        return self.complete(request)


def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run(mb: int, kind: str, charset: str, every: float | None) -> dict[str, Any]:
    text = source_text(mb * MB, charset)
    size = len(text.encode())
    model = Generated(text, kind)
    ticks: list[float] = []
    tick_cpu: list[float] = []
    tick = Checkpointer.tick

    def timed_tick(self: Checkpointer) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            tick(self)
        finally:
            ticks.append(time.perf_counter() - t0)
            tick_cpu.append(time.thread_time() - c0)

    Checkpointer.tick = timed_tick  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp, rxcontext.open(Path(tmp) / "r.db") as store:
        cw = ContextWindow(store, model, context="long", checkpoint_every=every)
        cw.add_prompt("Write at length.")
        import gc

        gc.collect()
        # The start is what is live: free heap memory the allocator kept from building the
        # source text would otherwise count in it, and the reply could reuse it unseen.
        let_go(TRIM_AT)
        exact = _reset_peak()
        base = _status("VmRSS") if exact else None
        if base is None:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0, c0 = time.perf_counter(), time.process_time()
        reply = cw.call()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = _status("VmHWM") if exact else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        got = reply.thinking if kind == "thinking" else reply.text
        stored = [r for r in cw.records() if r.type.name == "MODEL_RESP"][-1]
        kept = stored.metadata.get("thinking") if kind == "thinking" else stored.content
        ok = got == text and kept == text
        del reply, got, stored
    return {
        "mb": mb,
        "kind": kind,
        "charset": charset,
        "every": every,
        "reply_bytes": size,
        "chars": len(text),
        "peak_bytes": peak - base,
        "peak_ratio": (peak - base) / size,
        "peak_method": "VmHWM reset" if exact else "ru_maxrss",
        "wall_s": wall,
        "ticks": len(ticks),
        "checkpoint_s": sum(ticks),
        "checkpoint_share": sum(ticks) / wall,
        "cpu_s": cpu,
        "checkpoint_cpu_s": sum(tick_cpu),
        "checkpoint_cpu_share": sum(tick_cpu) / cpu,
        "longest_tick_s": max(ticks, default=0.0),
        "exact": ok,
        "pid": os.getpid(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=10)
    parser.add_argument("--kind", choices=["text", "thinking"], default="text")
    parser.add_argument("--charset", choices=["ascii", "other"], default="ascii")
    parser.add_argument("--every", type=float, default=1.0, help="checkpoint_every; 0: off")
    args = parser.parse_args()
    print(json.dumps(run(args.mb, args.kind, args.charset, args.every or None)))


if __name__ == "__main__":
    main()
