"""Instructions of one periodic checkpoint write, for callgrind (no wall time).

    valgrind --tool=callgrind --callgrind-out-file=OUT \
        python benchmarks/callgrind_tick.py --replies 1000 [--model M --usage]
    callgrind_annotate --inclusive=yes OUT | grep -E 'takewhile_next|dropwhile_next'

``Checkpointer.tick()`` on this thread over N begun replies of a file-backed SQLite store,
20 text chunks a reply since the last tick, the third tick (``--usage``: and each reply's
own usage; ``--model``: the replies name a model, so each checkpoint carries its keys).
The tick is called through ``itertools.takewhile`` and the store's ``save_checkpoints``
inside it through ``itertools.dropwhile``, C functions called nowhere else here: their
inclusive costs are the tick's and the store's instructions; divide by N. The library is
this tree's (put first on ``sys.path``). The checkpoint text is checked at the end.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loopstall import hand_ticked

import rxcontext
from rxcontext import Chunk, ChunkKind, Usage


def run(replies: int, model: str | None, usage: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, rxcontext.open(Path(tmp) / "t.db") as store:
        timer, persisters = hand_ticked(store, replies, model)
        save = store.save_checkpoints
        measured = False

        def marked_save(batch: Any) -> Any:
            if not measured:
                return save(batch)
            out: list[Any] = []
            list(itertools.dropwhile(lambda _: out.append(save(batch)), [0]))
            return out[0]

        store.save_checkpoints = marked_save  # type: ignore[method-assign]
        chunk = Chunk(ChunkKind.TEXT, "word café ")
        for tick in range(3):
            for i, p in enumerate(persisters):
                for _ in range(20):
                    p.add(chunk)
                if usage:
                    p.add(Chunk(ChunkKind.USAGE, usage=Usage.of(40 + i, 20 * (tick + 1))))
            if tick == 2:
                measured = True
                list(itertools.takewhile(lambda _: timer.tick(), [0]))
            else:
                timer.tick()
        assert persisters[0].ticket is not None
        text = store.get_checkpoint(persisters[0].ticket.checkpoint_id).text
        assert text == "word café " * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=1000)
    parser.add_argument("--model", default=None, help="a model name the replies carry")
    parser.add_argument("--usage", action="store_true", help="a usage chunk a tick a reply")
    args = parser.parse_args()
    run(args.replies, args.model, args.usage)


if __name__ == "__main__":
    main()
