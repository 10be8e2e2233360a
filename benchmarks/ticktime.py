"""CPU of one periodic checkpoint write, without contention: ``Checkpointer.tick()`` of N
open replies in a file-backed WAL SQLite store, each with new text.

    python benchmarks/ticktime.py --replies 5000 --ticks 5

Every reply gets ``--chunks`` text chunks between two ticks (``--usage``: and a usage
chunk, each reply's own counts, as a provider's stream reports them as it goes;
``--model``: the replies name a model, so each checkpoint carries its keys in its
metadata, as a window's do); each tick is timed with
``time.thread_time()`` (the tick runs on this thread), and so is the store's
``save_checkpoints`` inside it. Prints the medians per reply written, in microseconds, as
JSON. The checkpoint text is checked at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loopstall import hand_ticked

import rxcontext
from rxcontext import Chunk, ChunkKind, Usage


def run(
    replies: int, ticks: int, chunks: int, model: str | None = None, usage: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, rxcontext.open(Path(tmp) / "t.db") as store:
        timer, persisters = hand_ticked(store, replies, model)
        save = store.save_checkpoints
        saves: list[float] = []

        def timed_save(batch: Any) -> Any:
            start = time.thread_time()
            done = save(batch)
            saves.append(time.thread_time() - start)
            return done

        store.save_checkpoints = timed_save  # type: ignore[method-assign]
        chunk = Chunk(ChunkKind.TEXT, "word café ")
        totals: list[float] = []
        for tick in range(ticks):
            for i, p in enumerate(persisters):
                for _ in range(chunks):
                    p.add(chunk)
                if usage:
                    p.add(Chunk(ChunkKind.USAGE, usage=Usage.of(40 + i, chunks * (tick + 1))))
            start = time.thread_time()
            timer.tick()
            totals.append(time.thread_time() - start)
        assert persisters[0].ticket is not None
        text = store.get_checkpoint(persisters[0].ticket.checkpoint_id).text
        assert text == "word café " * chunks * ticks
    return {
        "replies": replies,
        "ticks": ticks,
        "chunks": chunks,
        "model": model,
        "usage": usage,
        "tick_us_per_write": statistics.median(totals) / replies * 1e6,
        "save_us_per_write": statistics.median(saves) / replies * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=5000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--model", default=None, help="a model name the replies carry")
    parser.add_argument("--usage", action="store_true", help="a usage chunk a tick a reply")
    args = parser.parse_args()
    print(json.dumps(run(args.replies, args.ticks, args.chunks, args.model, args.usage)))


if __name__ == "__main__":
    main()
