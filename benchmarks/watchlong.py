"""What watching a long reply costs the watcher: CPU per chunk as the reply grows.

    python benchmarks/watchlong.py --chunks 2000 20000 100000

A reply of N ten-character text chunks is generated and committed through ``cw.call()`` on
an in-memory SQLite store with ``fanout="memory"`` (its live log is kept after the end);
then ``cw.watch(reply_id)`` replays it from that log and reconciles with the stored record,
as a watcher that joins at the end does. Measured: ``time.process_time()`` of the watch
alone (one process, the best of ``--rounds``), divided by N. A watch whose cost per chunk
grows with N is quadratic in the reply's length.
"""

from __future__ import annotations

import argparse
import time

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel


def watch_cost(n: int) -> tuple[float, bool]:
    """CPU seconds to watch a committed reply of ``n`` chunks, and whether the text matched."""
    store = rxcontext.open(":memory:", fanout="memory")
    try:
        script = [Chunk(ChunkKind.TEXT, f"{i % 10**9:09d} ") for i in range(n)]
        model = ScriptedModel([[*script, Chunk(ChunkKind.DONE, finish_reason="stop")]])
        cw = ContextWindow(store, model, "long", retry=None, checkpoint_every=None)
        cw.add_prompt("go")
        expected = cw.call(reply_id="r").text
        got: list[str] = []
        t0 = time.process_time()
        cw.watch("r").subscribe(lambda c: got.append(c.text))
        cpu = time.process_time() - t0
        return cpu, "".join(got) == expected
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[2_000, 20_000, 100_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| chunks | watch CPU | µs per chunk | text equal |")
    print("| ---: | ---: | ---: | --- |")
    for n in args.chunks:
        runs = [watch_cost(n) for _ in range(args.rounds)]
        cpu = min(c for c, _ in runs)
        print(f"| {n:,} | {cpu:.3f} s | {cpu / n * 1e6:.1f} | {all(ok for _, ok in runs)} |")


if __name__ == "__main__":
    main()
