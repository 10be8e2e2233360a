"""What the collector sees of many concurrent asyncio streams: objects a live stream holds.

::

    python benchmarks/manystreams_heap.py --streams 1000
    python benchmarks/manystreams_heap.py --streams 5000 --passes

prints one JSON object. The streams are ``manystreams.py``'s (a ``ScriptedModel`` reply of
``--events`` text chunks each through ``cw.acall()`` with a middleware hook, a file-backed
WAL SQLite store, the default ``checkpoint_every``), all at once on one loop; the store's
``lease_ttl`` is 60 s (the ``--passes`` run lists the collector's generations inside its
passes, which on a loaded machine can starve the heartbeat past the default 5 s).

- ``tracked_a_stream``: halfway through (when the streams together have delivered
  ``streams × events / 2`` chunks), the objects the cyclic collector tracks
  (``gc.get_objects()``, the collector off for the whole run so nothing is freed by it)
  minus those tracked just before the streams began (their windows, scripts and store
  already made), divided by the streams begun and not ended then; ``by_type`` the same
  split by type (the 25 largest). Deterministic for a given library when no checkpoint
  tick fell in the run's first half (``checkpoint_drafts_before_snapshot`` 0; a tick's
  drafts are alive while it writes). ``--every 0``: checkpoints off, no timer at all.
- ``--passes``: the same run again with the collector on (Python's default thresholds),
  counting its passes by generation (``gc.callbacks``), the objects they collected, the
  objects promoted to the oldest generation a stream (``promoted_a_stream``: those in the
  two young generations as each generation-1 pass starts) and the objects each full
  pass walked (``full_passes_walked``):
  every tracked object alive at a generation-1 pass is promoted, and the oldest
  generation is walked whole once those promoted exceed a quarter of it. With checkpoints
  on, the ticks (their number set by the run's wall time, so by the machine's load) add
  passes; ``--every 0`` gives a count that depends on the library alone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, Usage
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel

WORDS = ["reactive ", "streams ", "of ", "tokens ", "into ", "sqlite, ", "café ", "resumed "]


def script(i: int, events: int) -> list[Chunk]:
    body = [Chunk(ChunkKind.TEXT, f"[{i}] ")]
    body += [Chunk(ChunkKind.TEXT, WORDS[(i + k) % len(WORDS)]) for k in range(events - 2)]
    body.append(Chunk(ChunkKind.DONE, usage=Usage.of(40, events), finish_reason="stop"))
    return body


def run(streams: int, events: int, collect: bool, every: float | None = 1.0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    passes = [0, 0, 0]
    collected = [0, 0, 0]
    promoted = [0]  # objects in generations 0 and 1 as a generation-1 pass starts
    walked: list[int] = []  # objects tracked as each full pass starts

    def on_collect(phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if phase == "start":
            if generation == 1:  # none is garbage here (collected stays 0): all promoted
                promoted[0] += len(gc.get_objects(0)) + len(gc.get_objects(1))
            elif generation == 2:
                walked.append(len(gc.get_objects()))
        else:
            passes[generation] += 1
            collected[generation] += info["collected"]

    with (
        tempfile.TemporaryDirectory() as tmp,
        rxcontext.open(Path(tmp) / "s.db", lease_ttl=60.0) as store,
    ):
        save = store.save_checkpoints
        drafts = [0]

        def counting(batch: Any) -> Any:
            drafts[0] += len(batch)
            return save(batch)

        store.save_checkpoints = counting
        windows = []
        for i in range(streams):
            cw = ContextWindow(
                store, ScriptedModel([script(i, events)]), context=f"s{i}", checkpoint_every=every
            )
            cw.add_prompt("Write.")
            windows.append(cw)
        delivered = [0]
        live = [0]
        half = streams * events // 2
        snapshot: dict[str, Any] = {}
        before: collections.Counter[str] = collections.Counter()

        def on_chunk(_: Chunk) -> None:
            delivered[0] += 1
            if delivered[0] == half and not collect:
                now = collections.Counter(type(o).__name__ for o in gc.get_objects())
                diff = now - before
                snapshot["live_streams"] = live[0]
                snapshot["tracked"] = sum(diff.values())
                snapshot["by_type"] = diff.most_common(25)
                snapshot["drafts"] = drafts[0]

        async def one(cw: ContextWindow) -> None:
            live[0] += 1
            try:
                await cw.acall(rxops.middleware(on_chunk=on_chunk))
            finally:
                live[0] -= 1

        async def main() -> None:
            gc.collect()
            if collect:
                gc.callbacks.append(on_collect)
            else:
                gc.disable()
                before.update(type(o).__name__ for o in gc.get_objects())
            try:
                await asyncio.gather(*(one(cw) for cw in windows))
            finally:
                gc.enable()
                if collect:
                    gc.callbacks.remove(on_collect)

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        if collect:
            out["passes_by_generation"] = passes
            out["collected_by_generation"] = collected
            out["promoted_a_stream"] = round(promoted[0] / streams, 1)
            out["full_passes_walked"] = walked
        else:
            n = snapshot["live_streams"]
            out["live_streams_at_snapshot"] = n
            out["tracked_a_stream"] = round(snapshot["tracked"] / n, 1)
            out["by_type"] = {k: round(v / n, 2) for k, v in snapshot["by_type"]}
            out["checkpoint_drafts_before_snapshot"] = snapshot["drafts"]
        out["checkpoint_drafts"] = drafts[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--passes", action="store_true", help="also a run with the collector on")
    parser.add_argument("--every", type=float, default=1.0, help="checkpoint_every; 0: off")
    args = parser.parse_args()
    every = args.every or None
    out = {"streams": args.streams, "events": args.events, "every": every}
    out["heap"] = run(args.streams, args.events, False, every)
    if args.passes:
        out["collector"] = run(args.streams, args.events, True, every)
    out["loadavg"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
