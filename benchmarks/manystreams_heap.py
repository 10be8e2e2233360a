"""What the collector sees of many concurrent asyncio streams: objects a live stream holds.

::

    python benchmarks/manystreams_heap.py --streams 1000
    python benchmarks/manystreams_heap.py --streams 5000 --passes

prints one JSON object. The streams are ``manystreams.py``'s (a ``ScriptedModel`` reply of
``--events`` text chunks each through ``cw.acall()`` with a middleware hook, a file-backed
WAL SQLite store, the default ``checkpoint_every``), all at once on one loop.

- ``tracked_a_stream``: halfway through (when the streams together have delivered
  ``streams × events / 2`` chunks), the objects the cyclic collector tracks
  (``gc.get_objects()``, the collector off for the whole run so nothing is freed by it)
  minus those tracked just before the streams began (their windows, scripts and store
  already made), divided by the streams begun and not ended then; ``by_type`` the same
  split by type (the 25 largest). Deterministic for a given library: no timer fires in
  the run's first half that makes objects per stream (the checkpointer's tick, if one
  falls in it, is counted in ``checkpoint_drafts_before_snapshot``).
- ``--passes``: the same run again with the collector on (Python's default thresholds),
  counting its passes by generation (``gc.callbacks``) and the objects they collected:
  every tracked object alive at a generation-1 pass is promoted, and the oldest
  generation is walked whole once those promoted exceed a quarter of it.
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


def run(streams: int, events: int, collect: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    passes = [0, 0, 0]
    collected = [0, 0, 0]

    def on_collect(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            passes[info["generation"]] += 1
            collected[info["generation"]] += info["collected"]

    with (
        tempfile.TemporaryDirectory() as tmp,
        rxcontext.open(Path(tmp) / "s.db") as store,
    ):
        save = store.save_checkpoints
        drafts = [0]

        def counting(batch: Any) -> Any:
            drafts[0] += len(batch)
            return save(batch)

        store.save_checkpoints = counting
        windows = []
        for i in range(streams):
            cw = ContextWindow(store, ScriptedModel([script(i, events)]), context=f"s{i}")
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
    args = parser.parse_args()
    out = {"streams": args.streams, "events": args.events}
    out["heap"] = run(args.streams, args.events, collect=False)
    if args.passes:
        out["collector"] = run(args.streams, args.events, collect=True)
    out["loadavg"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
