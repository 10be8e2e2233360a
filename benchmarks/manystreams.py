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
  checkpoints on against off, show what the store's writes cost the loop.

Both modes check that every context holds its prompt and exactly its reply, with no
checkpoint left, and count the periodic checkpoint writes (and their transactions).

``--rounds N`` runs the concurrent case N times, each after and before a one-at-a-time
sample (each round's ratio is against the mean of the two around it; medians are
printed), so a change of the machine's load moves both sides. ``--versus-off`` runs each
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
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, Usage
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

WORDS = ["reactive ", "streams ", "of ", "tokens ", "into ", "sqlite, ", "café ", "resumed "]


def script(i: int, events: int) -> tuple[list[Chunk], str]:
    body = [Chunk(ChunkKind.TEXT, f"[{i}] ")]
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
            chunks, text = script(i, events)
            model = ScriptedModel([chunks], delay=delay)
            cw = ContextWindow(store, model, context=f"s{i}", checkpoint_every=every)
            cw.add_prompt("Write.")
            windows.append((cw, text))
            return cw

        async def one(cw: ContextWindow) -> None:
            await cw.acall(rxops.middleware(on_chunk=lambda c: None))

        lateness: list[float] = []
        running = True

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            while running:
                due = loop.time() + 0.001
                await asyncio.sleep(0.001)
                lateness.append(loop.time() - due)

        # Per stream, of each concurrent run and each one-at-a-time sample: user and system
        # CPU (µs) and voluntary context switches (threads handing the GIL and the store's
        # lock to each other sleep and wake: that is system time).
        split: dict[str, list[list[float]]] = {"together": [], "together_off": [], "alone": []}

        def usage() -> tuple[float, float, int]:
            r = resource.getrusage(resource.RUSAGE_SELF)
            return r.ru_utime, r.ru_stime, r.ru_nvcsw

        def note(kind: str, before: tuple[float, float, int], n: int) -> None:
            after = usage()
            split[kind].append(
                [
                    round((after[0] - before[0]) / n * 1e6, 1),
                    round((after[1] - before[1]) / n * 1e6, 1),
                    round((after[2] - before[2]) / n, 1),
                ]
            )

        async def together(
            indices: range, every: float | None = every, kind: str = "together"
        ) -> float:
            nonlocal running
            running = True
            tick = asyncio.create_task(ticker())
            ready = [window(i, every) for i in indices]
            gc.collect()
            before = usage()
            start = time.process_time()
            await asyncio.gather(*(one(cw) for cw in ready))
            cpu = time.process_time() - start
            note(kind, before, len(ready))
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
            cpu = (time.process_time() - start) / single
            note("alone", before, single)
            return cpu

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
    lateness.sort()
    out.update(
        streams=streams,
        events=events,
        mode=mode,
        every=every,
        gap_s=gap if mode == "paced" else 0.0,
        intact=intact == len(windows),
        ticker_samples=len(lateness),
        loadavg=os.getloadavg(),
        lease_ttl=lease_ttl,
        ticker_p50_ms=statistics.median(lateness) * 1e3 if lateness else None,
        ticker_p99_ms=lateness[int(len(lateness) * 0.99)] * 1e3 if lateness else None,
        ticker_max_ms=lateness[-1] * 1e3 if lateness else None,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--mode", choices=["cpu", "paced"], default="cpu")
    parser.add_argument("--every", type=float, default=1.0, help="checkpoint_every; 0: off")
    parser.add_argument("--single", type=int, default=40)
    parser.add_argument("--gap", type=float, default=None, help="seconds between chunks")
    parser.add_argument("--rounds", type=int, default=1, help="concurrent runs (median)")
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=5.0,
        help="the store's lease_ttl (a process starved that long by other jobs fences itself)",
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
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
