"""Commit latency and throughput: PostgreSQL beside SQLite, 1, 4 and 16 writer processes.

    python benchmarks/bench_pg_commit.py [--out docs/benchmarks-postgres.md] [--url URL]

Method. Each writer is a separate process with its own store; all start together (a
barrier), run ``WARMUP`` commits, then time ``N`` calls of ``commit_reply`` (a reply of two
records plus usage: the completion transaction of a tool-free reply), each with
``time.perf_counter_ns``. "Separate contexts": each writer has its own context; "one
context": all writers append to the same context (PostgreSQL serialises them on the
context's row lock; SQLite on its single writer lock). Latency is over all timed calls of
all writers; throughput is all timed calls divided by the wall time from the first timed
call to the last. PostgreSQL is the machine's server (127.0.0.1, fsync on, a fresh database
per run), SQLite a WAL file in a temporary folder; both durable for completed replies
(``synchronous_commit=on`` / ``synchronous=FULL``). Everything shares the same 2 cores, so
16 writers measure contention, not capacity. Not run by the unit tests.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _pgdb import database

WARMUP = 10
N = {1: 300, 4: 120, 16: 40}


def _writer(target: str, name: str, n: int, barrier: Any, queue: Any) -> None:
    import rxcontext
    from rxcontext import RecordType, Usage
    from rxcontext.store import RecordDraft

    store = rxcontext.open(target)
    ctx = store.get_or_create_context(name)
    drafts = [
        RecordDraft(RecordType.MODEL_RESP, "x" * 800, streamed=True, response_id="r"),
        RecordDraft(RecordType.TOOL_CALL, '{"a": 1}', tool_call_id="c", tool_name="f"),
    ]
    barrier.wait()
    for _ in range(WARMUP):
        store.commit_reply(ctx.id, drafts, usage=Usage.of(10, 20))
    times = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        store.commit_reply(ctx.id, drafts, usage=Usage.of(10, 20))
        times.append(time.perf_counter_ns() - t0)
    end = time.perf_counter()
    store.close()
    queue.put((start, end, times))


def run(target: str, writers: int, shared: bool) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(writers), ctx.Queue()
    n = N[writers]
    procs = [
        ctx.Process(
            target=_writer,
            args=(target, "hot" if shared else f"w{k}", n, barrier, queue),
        )
        for k in range(writers)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    times = sorted(t for _, _, ts in results for t in ts)
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    return {
        "p50_ms": statistics.median(times) / 1e6,
        "p99_ms": times[int(len(times) * 0.99) - 1] / 1e6,
        "per_s": len(times) / wall,
        "calls": len(times),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for writers in (1, 4, 16):
            for shared in (False, True):
                if writers == 1 and shared:
                    continue  # the same as separate contexts
                for kind in ("sqlite", "postgres"):
                    if kind == "postgres":
                        target, cleanup = database(args.url)
                    else:
                        target, cleanup = f"{tmp}/{writers}-{shared}.db", lambda: None
                    try:
                        res = run(target, writers, shared)
                    finally:
                        cleanup()
                    where = "one context" if shared else "separate contexts"
                    rows.append((kind, writers, where, res))
                    print(
                        f"{kind:8} {writers:2} writers, {where:17}: p50 {res['p50_ms']:6.2f} ms"
                        f"  p99 {res['p99_ms']:7.2f} ms  {res['per_s']:6.0f} commits/s",
                        flush=True,
                    )
    if args.out:
        lines = [
            "# Commit latency and throughput: PostgreSQL beside SQLite",
            "",
            f"Measured by `benchmarks/bench_pg_commit.py` on {time.strftime('%Y-%m-%d')}"
            f" ({os.cpu_count()} cores, Python {sys.version.split()[0]}).",
            "",
            "Method: " + " ".join(__doc__.split("Method.", 1)[1].split()),
            "",
            "| store | writers | contexts | p50 ms | p99 ms | commits/s | PG/SQLite p50 |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for kind, writers, where, res in rows:
            lite = next(r for k, w, c, r in rows if k == "sqlite" and w == writers and c == where)
            ratio = res["p50_ms"] / lite["p50_ms"]
            lines.append(
                f"| {kind} | {writers} | {where} | {res['p50_ms']:.2f} | {res['p99_ms']:.2f}"
                f" | {res['per_s']:.0f} | {ratio:.2f}x |"
            )
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
