"""Client-side instructions per PostgreSQL commit, for callgrind (no wall time).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python benchmarks/callgrind_pg_commit.py URL N

``N`` calls of ``commit_reply`` (a one-record reply, pipelined: Runner.run) on the database
at ``URL`` (a database of the run's own). Run it with two ``N`` and divide the difference
of the totals by the difference of ``N``: the per-commit instructions of this process,
start-up excluded; the server's work is not counted.
"""

from __future__ import annotations

import sys

import rxcontext
from rxcontext import RecordType, Usage
from rxcontext.store import RecordDraft


def main(url: str, n: int) -> None:
    store = rxcontext.open(url)
    ctx = store.get_or_create_context("callgrind")
    drafts = [RecordDraft(RecordType.MODEL_RESP, "x" * 800, streamed=True, response_id="r")]
    for _ in range(n):
        store.commit_reply(ctx.id, drafts, usage=Usage.of(10, 20))
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
