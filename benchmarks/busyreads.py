"""A request's history read beside a long reply streaming in the same context.

    python benchmarks/busyreads.py [--pg postgresql://…/postgres]

Method. In a context with a prompt and a committed reply, another reply streams with 10 MB
of text so far (ten 1 MB periodic checkpoint writes); ``request_history`` (what each request
of a window reads: the history, less the records of replies still being generated beside
it) is timed 20 times for a third reply, on a SQLite file in a temporary folder and on a
PostgreSQL database of the run's own (created on the server of ``--pg``'s maintenance URL
and dropped); the median wall time is printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from _pgdb import database

import rxcontext
from rxcontext.history import request_history
from rxcontext.records import RecordType
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket
from rxcontext.store.owner import worker_id

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _median_ms(target: str) -> float:
    store: Any = rxcontext.open(target)
    try:
        ctx = store.get_or_create_context("c")
        store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "q"))

        def begin(reply_id: str) -> ReplyTicket:
            cp = store.begin_reply(ctx.id, reply_id, owner=worker_id())
            return ReplyTicket(cp.id, cp.epoch)

        first = begin("first")
        store.commit_reply(
            ctx.id, [RecordDraft(RecordType.MODEL_RESP, "a")], reply=first, end="reply"
        )
        long = begin("long")
        for _ in range(10):
            store.save_checkpoint(long, CheckpointDraft("x" * 1_000_000, chunks=1))
        begin("mine")
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            request_history(store, ctx.id, upto=None, reply_id="mine")
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1e3
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL maintenance URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sqlite_ms = _median_ms(os.path.join(folder, "busy.db"))
    print(f"SQLite: request_history beside a 10 MB streaming reply, median {sqlite_ms:.3f} ms")
    url, drop = database(args.pg, "rxcbusy")
    try:
        pg_ms = _median_ms(url)
    finally:
        drop()
    print(f"PostgreSQL: request_history beside a 10 MB streaming reply, median {pg_ms:.3f} ms")


if __name__ == "__main__":
    main()
