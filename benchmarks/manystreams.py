"""Thousands of concurrent asyncio streams into one SQLite file, default checkpoints on.

Run by ``bench_manystreams.py`` (one subprocess per case), or by hand::

    python benchmarks/manystreams.py --streams 1000 --mode cpu
    python benchmarks/manystreams.py --streams 5000 --mode paced --every 0

prints one JSON object. Every stream is a ``ScriptedModel`` reply of ``--events`` text
chunks (a distinct text per stream) through ``cw.acall()`` with a middleware hook, stored
in a file-backed WAL SQLite store with ``checkpoint_every=--every`` (default 1.0; 0: off).

- ``--mode cpu``: the streams replay as fast as the loop runs them (each chunk after
  ``asyncio.sleep(0)``). Process CPU time (``time.process_time``: the loop, the
  checkpointer's thread and the executor's threads) of all streams at once, against the
  same number of streams run one at a time on the same loop (the mean of ``--single``
  runs, after five to warm up). Replayed streams are CPU-bound, so side by side each
  lasts the whole run and the default interval writes checkpoints a lone stream never does.
- ``--mode paced``: each chunk comes ``--gap`` seconds after the last (default: the
  streams together deliver 20,000 chunks a second), as live models do; a 1 ms ticker task
  on the same loop records how late each of its wake-ups is. Its p99 and maximum, with
  checkpoints on (``ticker_*``) against off (``ticker_off_*``, with ``--versus-off``),
  show what the store's writes cost the loop.

Both modes check that every context holds its prompt and exactly its reply, with no
checkpoint left, and count the periodic checkpoint writes (and their transactions).

``--rounds N`` runs the concurrent case N times, each after and before a one-at-a-time
sample of ``--single`` streams (default 200: a sample of 40, ~80 ms of CPU, moved the ratio
by ±0.25 between runs; each round's ratio is against the mean of the two around it; medians
are printed, with ``ratio_range``, the samples' own ``single_spread`` (largest ÷ smallest)
and ``ratio_vs_all_singles``), so a change of the machine's load moves both sides.

Where the CPU goes, per stream, for each run (``per_stream_cpu_us_by_part``) and as
concurrent ÷ one at a time (``ratio_by_part``) and concurrent − one at a time
(``excess_us_a_stream_by_part``): the event loop's thread (``time.thread_time``), the
other threads (process CPU minus the loop's: store calls in the executor, checkpoint ticks,
lease renewals and stop polls), and the cyclic collector's passes (``gc.callbacks``, the
collecting thread's CPU, by generation, with their counts); ``ratio_without_gc`` is the
ratio with the collector's time taken out of both sides. ``--shared-chunks``: every stream
plays the same word ``Chunk`` objects, so the benchmark's own scripts (200 tracked objects a
stream, 1,000,000 at 5,000 streams, kept for the check at the end) are not in the heap
every full collection walks. ``--versus-off`` runs each
round again with checkpoints off (``on_vs_off``: what the periodic writes cost). Each run's
user and system CPU and voluntary context switches per stream are printed too.
``--lease-ttl``: the store's lease (default 5 s, the library's); a process starved that
long by other jobs on the machine fences its own replies, by design, and the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, Usage
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

WORDS = ["reactive ", "streams ", "of ", "tokens ", "into ", "sqlite, ", "café ", "resumed "]


SHARED_WORDS = [Chunk(ChunkKind.TEXT, w) for w in WORDS]


def script(i: int, events: int, shared: bool = False) -> tuple[list[Chunk], str]:
    body = [Chunk(ChunkKind.TEXT, f"[{i}] ")]
    if shared:  # chunks are frozen values: every stream can play the same word objects
        body += [SHARED_WORDS[(i + k) % len(WORDS)] for k in range(events - 2)]
    else:
        body += [Chunk(ChunkKind.TEXT, WORDS[(i + k) % len(WORDS)]) for k in range(events - 2)]
    text = "".join(c.text for c in body)
    body.append(Chunk(ChunkKind.DONE, usage=Usage.of(40, events), finish_reason="stop"))
    return body, text


def run(
    streams: int,
    events: int,
    mode: str,
    every: float | None,
    single: int,
    gap: float,
    rounds: int = 1,
    versus_off: bool = False,
    lease_ttl: float = 5.0,
    shared: bool = False,
):
    delay = 0.0 if mode == "cpu" else gap
    writes = {"drafts": 0, "transactions": 0}
    with (
        tempfile.TemporaryDirectory() as tmp,
        rxcontext.open(Path(tmp) / "s.db", lease_ttl=lease_ttl) as store,
    ):
        save = store.save_checkpoints

        def counting(batch: Any) -> Any:
            writes["transactions"] += 1
            writes["drafts"] += len(batch)
            return save(batch)

        store.save_checkpoints = counting
        windows: list[tuple[ContextWindow, str]] = []

        def window(i: int, every: float | None = every) -> ContextWindow:
            # Set up before the clock starts: the prompt is a durable write of its own.
            chunks, text = script(i, events, shared)
            model = ScriptedModel([chunks], delay=delay)
            cw = ContextWindow(store, model, context=f"s{i}", checkpoint_every=every)
            cw.add_prompt("Write.")
            windows.append((cw, text))
            return cw

        async def one(cw: ContextWindow) -> None:
            await cw.acall(rxops.middleware(on_chunk=lambda c: None))

        # Each kind of run its own samples: with --versus-off, one list for both hid the
        # on-against-off difference the ticker is there to show.
        lateness: dict[str, list[float]] = {"together": [], "together_off": []}
        running = True

        async def ticker(late: list[float]) -> None:
            loop = asyncio.get_running_loop()
            while running:
                due = loop.time() + 0.001
                await asyncio.sleep(0.001)
                late.append(loop.time() - due)

        # Per stream, of each concurrent run and each one-at-a-time sample: user and system
        # CPU (µs) and voluntary context switches (threads handing the GIL and the store's
        # lock to each other sleep and wake: that is system time).
        split: dict[str, list[list[float]]] = {"together": [], "together_off": [], "alone": []}
        # Per stream, the same runs' CPU (µs) split by where it went: the event loop's thread
        # (time.thread_time), the other threads (store calls in the executor, checkpoint
        # ticks, lease renewals: process CPU minus the loop's), and the cyclic collector's
        # passes of each generation (on whichever thread they ran; gc.callbacks, thread CPU).
        where: dict[str, list[dict[str, float]]] = {k: [] for k in split}
        collector = {"cpu": [0.0, 0.0, 0.0], "passes": [0, 0, 0]}
        # The collector's CPU by the kind of thread whose allocation set off the pass (a
        # full pass started in the checkpointer's thread is in that thread's CPU too).
        gc_by_thread: dict[str, float] = {}
        started: dict[int, float] = {}

        def kind_of(thread: threading.Thread) -> str:
            if thread is threading.main_thread():
                return "loop"
            name = thread.name.split("_")[0].split("-")
            return "-".join(name[:2]) if name[0] == "rxcontext" else name[0]

        def on_collect(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[threading.get_ident()] = time.thread_time()
            else:
                spent = time.thread_time() - started.pop(threading.get_ident(), time.thread_time())
                collector["cpu"][info["generation"]] += spent
                collector["passes"][info["generation"]] += 1
                kind = kind_of(threading.current_thread())
                gc_by_thread[kind] = gc_by_thread.get(kind, 0.0) + spent

        gc.callbacks.append(on_collect)
        ticks = os.sysconf("SC_CLK_TCK")

        def by_thread() -> dict[str, float]:
            # CPU seconds of each living thread but the loop's, by what it serves (Linux's
            # /proc, in clock ticks: 10 ms, fine beside seconds of run), and the voluntary
            # context switches of every thread (the loop's included) under "<kind> vcsw": a
            # thread that ended during a run is not counted (the executor's and the timers'
            # live on).
            out: dict[str, float] = {}
            for thread in threading.enumerate():
                if thread.native_id is None:
                    continue
                kind = kind_of(thread)
                try:
                    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    with open(f"/proc/self/task/{thread.native_id}/status") as f:
                        status = f.read()
                except OSError:
                    continue
                if kind != "loop":
                    out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
                for line in status.splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        key = f"{kind} vcsw"
                        out[key] = out.get(key, 0.0) + int(line.split()[1]) / 1e6
            return out

        def usage() -> tuple[
            float, float, int, float, list[float], list[int], dict[str, float], dict[str, float]
        ]:
            r = resource.getrusage(resource.RUSAGE_SELF)
            return (
                r.ru_utime,
                r.ru_stime,
                r.ru_nvcsw,
                time.thread_time(),
                list(collector["cpu"]),
                list(collector["passes"]),
                by_thread(),
                dict(gc_by_thread),
            )

        def note(kind: str, before: Any, cpu: float, n: int) -> None:
            after = usage()
            split[kind].append(
                [
                    round((after[0] - before[0]) / n * 1e6, 1),
                    round((after[1] - before[1]) / n * 1e6, 1),
                    round((after[2] - before[2]) / n, 1),
                ]
            )
            loop_cpu = after[3] - before[3]
            gcs = [a - b for a, b in zip(after[4], before[4], strict=True)]
            where[kind].append(
                {
                    "all": round(cpu / n * 1e6, 1),
                    "loop_thread": round(loop_cpu / n * 1e6, 1),
                    "other_threads": round((cpu - loop_cpu) / n * 1e6, 1),
                    "gc": round(sum(gcs) / n * 1e6, 1),
                    "gc2": round(gcs[2] / n * 1e6, 1),
                    "gc_passes": [a - b for a, b in zip(after[5], before[5], strict=True)],  # type: ignore[misc]
                    "threads": {
                        k: round((v - before[6].get(k, 0.0)) / n * 1e6, 1)
                        for k, v in after[6].items()
                    },
                    "gc_by_thread": {
                        k: round((v - before[7].get(k, 0.0)) / n * 1e6, 1)
                        for k, v in after[7].items()
                    },
                }
            )

        async def together(
            indices: range, every: float | None = every, kind: str = "together"
        ) -> float:
            nonlocal running
            running = True
            tick = asyncio.create_task(ticker(lateness[kind]))
            ready = [window(i, every) for i in indices]
            gc.collect()
            before = usage()
            start = time.process_time()
            await asyncio.gather(*(one(cw) for cw in ready))
            cpu = time.process_time() - start
            note(kind, before, cpu, len(ready))
            running = False
            await tick
            return cpu

        async def alone(first: int) -> float:
            ready = [window(i) for i in range(first, first + single)]
            gc.collect()
            before = usage()
            start = time.process_time()
            for cw in ready:
                await one(cw)
            cpu = time.process_time() - start
            note("alone", before, cpu, single)
            return cpu / single

        async def main() -> dict[str, Any]:
            out: dict[str, Any] = {}
            # Rounds alternate the one-at-a-time sample and the concurrent run, so a change
            # of the machine's load between them moves both; each round's ratio is against
            # the mean of the samples just before and just after it.
            base = 2 * rounds * streams + 10
            if mode == "cpu":
                for i in range(base, base + 5):
                    await one(window(i))
                base += 5
                singles = [await alone(base)]
                base += single
            cpus: list[float] = []
            walls: list[float] = []
            ratios: list[float] = []
            offs: list[float] = []
            before = dict(writes)
            for r in range(rounds):
                wall = time.perf_counter()
                cpus.append(await together(range(r * streams, (r + 1) * streams)))
                walls.append(time.perf_counter() - wall)
                if versus_off:
                    # The same concurrent run with checkpoints off: what the writes cost.
                    first = (rounds + r) * streams
                    offs.append(await together(range(first, first + streams), None, "together_off"))
                if mode == "cpu":
                    singles.append(await alone(base))
                    base += single
                    ratios.append(cpus[-1] / ((singles[-2] + singles[-1]) / 2 * streams))
            out["cpu_s"] = statistics.median(cpus)
            if offs:
                out["rounds_cpu_off_s"] = offs
                out["cpu_off_s"] = statistics.median(offs)
                out["on_vs_off"] = statistics.median(a / b for a, b in zip(cpus, offs, strict=True))
            out["wall_s"] = statistics.median(walls)
            out["rounds_cpu_s"] = cpus
            if mode == "cpu":
                out["single_s"] = statistics.median(singles)
                out["rounds_single_s"] = singles
                out["rounds_ratio"] = ratios
                out["ratio"] = statistics.median(ratios)
                out["ratio_range"] = [min(ratios), max(ratios)]
                # The one-at-a-time samples' own spread, and the ratio against all of them.
                out["single_spread"] = max(singles) / min(singles)
                out["ratio_vs_all_singles"] = statistics.median(cpus) / (
                    statistics.median(singles) * streams
                )
                # Each part of the CPU a stream, concurrent ÷ one at a time (the samples just
                # before and after each round, as ``ratio``), medians over the rounds; and
                # the ratio with the collector's passes taken out of both sides.
                alone_rows = where["alone"]

                def around(r: int, key: str) -> float:
                    return (alone_rows[r][key] + alone_rows[r + 1][key]) / 2

                rows = list(enumerate(where["together"]))
                parts = ("all", "loop_thread", "other_threads", "gc")
                out["ratio_by_part"] = {
                    key: statistics.median(row[key] / (around(r, key) or 1e-9) for r, row in rows)
                    for key in parts[1:]
                }
                out["excess_us_a_stream_by_part"] = {
                    key: round(statistics.median(row[key] - around(r, key) for r, row in rows), 1)
                    for key in parts
                }
                out["ratio_without_gc"] = statistics.median(
                    (row["all"] - row["gc"]) / (around(r, "all") - around(r, "gc"))
                    for r, row in rows
                )
            out["per_stream_cpu_us_by_part"] = {k: v for k, v in where.items() if v}
            out["per_stream_user_us_sys_us_voluntary_switches"] = {
                k: v for k, v in split.items() if v
            }
            out["checkpoint_drafts"] = (writes["drafts"] - before["drafts"]) / rounds
            out["checkpoint_transactions"] = (
                writes["transactions"] - before["transactions"]
            ) / rounds
            return out

        loop = asyncio.new_event_loop()
        try:
            out = loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
        intact = 0
        for cw, text in windows:
            records = cw.live_records()
            intact += (
                len(records) == 2
                and records[0].type is RecordType.PROMPT
                and records[1].type is RecordType.MODEL_RESP
                and records[1].content == text
                and not cw.checkpoints()
            )
    for late in lateness.values():
        late.sort()
    on, off = lateness["together"], lateness["together_off"]
    out.update(
        streams=streams,
        events=events,
        mode=mode,
        every=every,
        gap_s=gap if mode == "paced" else 0.0,
        intact=intact == len(windows),
        ticker_samples=len(on),
        loadavg=os.getloadavg(),
        lease_ttl=lease_ttl,
        **_percentiles("ticker", on),
    )
    if off:
        out.update(ticker_off_samples=len(off), **_percentiles("ticker_off", off))
    return out


def _percentiles(name: str, late: list[float]) -> dict[str, float | None]:
    """The median, p99 and maximum of a sorted list of lateness, in ms."""
    return {
        f"{name}_p50_ms": statistics.median(late) * 1e3 if late else None,
        f"{name}_p99_ms": late[int(len(late) * 0.99)] * 1e3 if late else None,
        f"{name}_max_ms": late[-1] * 1e3 if late else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--mode", choices=["cpu", "paced"], default="cpu")
    parser.add_argument("--every", type=float, default=1.0, help="checkpoint_every; 0: off")
    parser.add_argument("--single", type=int, default=200, help="streams a one-at-a-time sample")
    parser.add_argument("--gap", type=float, default=None, help="seconds between chunks")
    parser.add_argument("--rounds", type=int, default=1, help="concurrent runs (median)")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        help="the store's lease_ttl (a process starved that long by other jobs fences itself)",
    )
    parser.add_argument(
        "--shared-chunks",
        action="store_true",
        help="every stream plays the same word Chunk objects (no 200 tracked objects a stream "
        "held by the benchmark's own scripts for the collector to walk)",
    )
    parser.add_argument(
        "--versus-off", action="store_true", help="each round also with checkpoints off"
    )
    args = parser.parse_args()
    gap = args.gap if args.gap is not None else args.streams / 20_000
    out = run(
        args.streams,
        args.events,
        args.mode,
        args.every or None,
        args.single,
        gap,
        args.rounds,
        args.versus_off,
        args.lease_ttl,
        args.shared_chunks,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
