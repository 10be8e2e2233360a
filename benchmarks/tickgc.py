"""What one periodic checkpoint tick costs the cyclic collector, counted (deterministic):
``Checkpointer.tick()`` over N open replies of a file-backed SQLite store, each with a
little new text, as ``benchmarks/ticktime.py`` sets them up.

    python benchmarks/tickgc.py --replies 2000 --ticks 3

Per tick, per reply written (the last tick; the first ones make what a reply keeps):

- ``peak_alive``: the most tracked objects the tick held at once beyond what it started
  with (collector off; ``gc.get_count()[0]`` sampled at every call and return of the
  tick's thread through ``sys.setprofile``);
- ``promoted``: objects that survived the generation-1 passes run during the tick with the
  default thresholds, i.e. moved to the oldest generation; each counts toward Python 3.11's
  full-pass trigger (promotions since the last full pass > 25 % of the oldest generation);
  counted with ``gc.callbacks`` as the oldest generation's growth over each generation-1
  pass (tuples of atoms the pass untracks are not promoted, and not counted);
- ``left``: tracked objects still alive after the tick and a generation-0 pass.

Prints JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loopstall import begun_replies

import rxcontext
from rxcontext import Chunk, ChunkKind
from rxcontext.checkpointer import Checkpointer


def _peak_during(fn: Any) -> int:
    """The most tracked objects alive at once while ``fn()`` runs, beyond the start."""
    peak = 0

    def sample(frame: Any, event: str, arg: Any) -> None:
        nonlocal peak
        n = gc.get_count()[0]
        if n > peak:
            peak = n

    gc.collect()
    gc.disable()
    try:
        sys.setprofile(sample)
        try:
            fn()
        finally:
            sys.setprofile(None)
    finally:
        gc.enable()
    return peak


def _promoted_during(fn: Any) -> dict[str, int]:
    """Survivors of the generation-1 passes run while ``fn()`` runs (default thresholds)."""
    counts = {"gen0_passes": 0, "gen1_passes": 0, "gen2_passes": 0, "promoted": 0}
    oldest = 0

    def on_collect(phase: str, info: dict[str, Any]) -> None:
        nonlocal oldest
        generation = info["generation"]
        if phase == "start":
            if generation == 1:
                oldest = len(gc.get_objects(2))
        else:
            counts[f"gen{generation}_passes"] += 1
            if generation == 1:
                counts["promoted"] += len(gc.get_objects(2)) - oldest

    gc.collect()
    gc.callbacks.append(on_collect)
    try:
        fn()
    finally:
        gc.callbacks.remove(on_collect)
    return counts


def _left_after(fn: Any) -> int:
    gc.collect()
    gc.disable()
    try:
        old = gc.get_objects()
        known = {id(o) for o in old}
        fn()
        gc.collect(0)
        return sum(1 for o in gc.get_objects() if id(o) not in known)
    finally:
        gc.enable()


def run(replies: int, ticks: int, chunks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, rxcontext.open(Path(tmp) / "t.db") as store:
        persisters = begun_replies(store, replies)
        timer = Checkpointer(store, 1.0)
        for p in persisters:
            timer._replies[id(p)] = p  # ticks are called here, not on the timer's thread
        chunk = Chunk(ChunkKind.TEXT, "word café ")

        def feed() -> None:
            for p in persisters:
                for _ in range(chunks):
                    p.add(chunk)

        for _ in range(ticks - 1):
            feed()
            timer.tick()
        out: dict[str, Any] = {"replies": replies, "ticks": ticks, "chunks": chunks}
        feed()
        out["peak_alive"] = _peak_during(timer.tick) / replies
        feed()
        out.update(_promoted_during(timer.tick))
        out["promoted_per_reply"] = out.pop("promoted") / replies
        feed()
        out["left"] = _left_after(timer.tick) / replies
        assert persisters[0].ticket is not None
        text = store.get_checkpoint(persisters[0].ticket.checkpoint_id).text
        assert text == "word café " * chunks * (ticks + 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.replies, args.ticks, args.chunks)))


if __name__ == "__main__":
    main()
