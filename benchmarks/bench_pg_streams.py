"""Event-loop stalls: 1,000 concurrent asyncio streams on one process, PostgreSQL beside SQLite.

    python benchmarks/bench_pg_streams.py [--out docs/benchmarks-postgres.md] [--url URL]

Method. One process, one event loop. 1,000 windows, each on a context of its own with its
prompt stored beforehand (not measured), each a ``ScriptedModel`` playing ``CHUNKS`` text
chunks ``DELAY`` seconds apart (``asyncio.sleep``: a model that talks for about a second)
with the default checkpoints (a periodic write every second, batched per store by the
checkpoint timer, which also renews the leases). All 1,000 ``acall()`` run together
(``asyncio.gather``) while a ticker task sleeps 1 ms at a time and records how late each
wake-up is (``loop.time()`` against when it was due): a store round trip on the loop would
show as lateness of its whole duration. Reported: the ticker's lateness p50/p99/max during
the run, beside the same ticker on the idle loop of the same process just before (the
floor: timer granularity and scheduling on a shared machine), the wall time of the run, and
the periodic writes (batches written, batches that found the database busy and were left to
the next tick). Then every reply is checked stored exactly (1,000 MODEL_RESP records, the
full text, no checkpoint left). PostgreSQL is the machine's server (127.0.0.1, a fresh
database, the default pool of 4 connections), SQLite a WAL file in a temporary folder; store
I/O runs in the loop's default executor either way. Not run by the unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _pgdb import database

STREAMS = 1000
CHUNKS = 40
DELAY = 0.025
TICK = 0.001
IDLE = 2.0  # seconds of the ticker on the idle loop
ROUNDS = 3  # each store this many times, alternating; the tables show medians


async def _ticker(stop: asyncio.Event, late: list[float]) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + TICK
    while not stop.is_set():
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        late.append(now - due)
        due = now + TICK


def _stats(late: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in late)
    return {
        "p50": statistics.median(ms),
        "p99": ms[max(0, int(len(ms) * 0.99) - 1)],
        "max": ms[-1],
        "ticks": len(ms),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over rounds."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = _median([r[key] for r in runs])
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def run(target: str) -> dict[str, Any]:
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
    from rxcontext.providers import ScriptedModel

    store = rxcontext.open(target)
    batches = {"written": 0, "skipped": 0, "replies": 0}
    save = store.save_checkpoints

    def counting(writes: Any) -> Any:
        done = save(writes)
        batches["written" if done is not None else "skipped"] += 1
        batches["replies"] += len(writes) if done is not None else 0
        return done

    store.save_checkpoints = counting  # type: ignore[method-assign]
    windows = []
    for i in range(STREAMS):
        chunks = [Chunk(ChunkKind.TEXT, f"[{i}:{k}] ") for k in range(CHUNKS)]
        model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]], delay=DELAY)
        cw = ContextWindow(store, model, f"stream-{i}")
        cw.add_prompt(f"prompt {i}")
        windows.append((cw, "".join(c.text for c in chunks)))

    async def measure() -> tuple[list[float], list[float], float]:
        idle: list[float] = []
        stop = asyncio.Event()
        ticking = asyncio.create_task(_ticker(stop, idle))
        await asyncio.sleep(IDLE)
        stop.set()
        await ticking
        busy: list[float] = []
        stop = asyncio.Event()
        ticking = asyncio.create_task(_ticker(stop, busy))
        start = time.perf_counter()
        await asyncio.gather(*(cw.acall() for cw, _ in windows))
        wall = time.perf_counter() - start
        stop.set()
        await ticking
        return idle, busy, wall

    gc.collect()
    idle, busy, wall = asyncio.run(measure())
    stored = 0
    for cw, text in windows:
        records = cw.records()
        if (
            [r.type for r in records] == [RecordType.PROMPT, RecordType.MODEL_RESP]
            and records[1].content == text
            and not cw.store.checkpoints(cw.context_id, include_resolved=True)
        ):
            stored += 1
    store.close()
    if stored != STREAMS:
        raise SystemExit(f"{STREAMS - stored} of {STREAMS} replies lost or damaged")
    return {"idle": _stats(idle), "busy": _stats(busy), "wall": wall, **batches}


SECTION = "## Event-loop stalls: 1,000 concurrent asyncio streams"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, Any]]] = {"sqlite": [], "postgres": []}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS):
            for kind in ("sqlite", "postgres"):
                if kind == "postgres":
                    target, cleanup = database(args.url)
                else:
                    target, cleanup = f"{tmp}/streams-{r}.db", lambda: None
                try:
                    res = run(target)
                finally:
                    cleanup()
                rounds[kind].append(res)
                print(
                    f"{kind:8}: idle p99 {res['idle']['p99']:.2f} ms; during the run p50"
                    f" {res['busy']['p50']:.2f} p99 {res['busy']['p99']:.2f} max"
                    f" {res['busy']['max']:.1f} ms; {res['wall']:.1f} s; checkpoint batches"
                    f" {res['written']} written ({res['replies']} replies), {res['skipped']} busy",
                    flush=True,
                )
    load = max(load, os.getloadavg()[0])
    results = {kind: _median(runs) for kind, runs in rounds.items()}
    if args.out:
        lines = [
            SECTION,
            "",
            f"Measured by `benchmarks/bench_pg_streams.py` on {time.strftime('%Y-%m-%d')}"
            f" ({os.cpu_count()} cores, Python {sys.version.split()[0]}; load average up to"
            f" {load:.1f} from other jobs on the machine). Medians of {ROUNDS} rounds.",
            "",
            "Method: " + " ".join(__doc__.split("Method.", 1)[1].split()),
            "",
            "| store | idle p99 ms | run p50 ms | run p99 ms | run max ms | p99 / idle p99"
            " | wall s | checkpoint batches (replies) | batches busy |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind, res in results.items():
            lines.append(
                f"| {kind} | {res['idle']['p99']:.2f} | {res['busy']['p50']:.2f}"
                f" | {res['busy']['p99']:.2f} | {res['busy']['max']:.1f}"
                f" | {res['busy']['p99'] / res['idle']['p99']:.1f}x | {res['wall']:.1f}"
                f" | {res['written']:.0f} ({res['replies']:.0f}) | {res['skipped']:.0f} |"
            )
        ratio = results["postgres"]["busy"]["p99"] / results["sqlite"]["busy"]["p99"]
        lines += ["", f"PostgreSQL / SQLite, p99 lateness during the run: {ratio:.2f}x.", ""]
        text = args.out.read_text() if args.out.exists() else ""
        if SECTION in text:
            text = text[: text.index(SECTION)].rstrip() + "\n"
        args.out.write_text(text + ("\n" if text else "") + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
