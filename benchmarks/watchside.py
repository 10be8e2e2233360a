"""What a watch costs its process per live entry: ``RedisFanout.aread`` on asyncio.

    python benchmarks/watchside.py [--url redis://127.0.0.1:6379/0] [--streams 200]
        [--entries 300] [--prefix KEY_PREFIX]

Method. ``--streams`` reply streams on the local Redis (a key prefix of the run's own,
deleted afterwards), each read by one coroutine with ``RedisFanout.aread`` from its last
position, as ``cw.awatch`` does between chunks, on one event loop; the fan-out's tail thread
reads them all with one ``XREAD BLOCK``. A writer thread (its own Redis client) adds one
chunk entry to every stream, ``--entries`` times, 5 ms apart. The figure is the process's
CPU time (``time.process_time``, every thread) minus the writer thread's
(``time.thread_time``), divided by the entries read: the tail thread's read and parsing,
the hand-over to the loop and the watch's wake-up and read. The watcher core, the store and
the user's loop body are not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid

import redis

from rxcontext.fanout.entries import Chunks
from rxcontext.fanout.redis import RedisFanout


def measure(url: str, prefix: str, streams: int, entries: int) -> float:
    """CPU seconds per entry read, on the watching side."""
    fanout = RedisFanout(url, prefix=prefix)
    writer = redis.Redis.from_url(url)
    keys = [fanout.key(f"r{i}") for i in range(streams)]
    for key in keys:
        writer.xadd(key, {"k": "b", "d": "{}"}, id="1-0")
        writer.pexpire(key, 120_000)
    writer_cpu = [0.0]

    def write() -> None:
        t0 = time.thread_time()
        for n in range(1, entries + 1):
            pipe = writer.pipeline(transaction=False)
            for key in keys:
                pipe.xadd(key, {"k": "c", "f": n, "d": '[["text","a ten char"]]'}, id=f"1-{n}")
            pipe.execute()
            time.sleep(0.005)
        writer_cpu[0] = time.thread_time() - t0

    async def watch(i: int) -> int:
        after, seen = (1, 0), 0
        while seen < entries:
            for entry in await fanout.aread(f"r{i}", after, epoch=1, wait=1.0) or ():
                if isinstance(entry, Chunks):
                    after, seen = (1, entry.last), entry.last
        return seen

    async def run() -> float:
        tasks = [asyncio.create_task(watch(i)) for i in range(streams)]
        await asyncio.sleep(0.5)  # every watch waits on the tail before the first entry
        c0 = time.process_time()
        thread = threading.Thread(target=write)
        thread.start()
        seen = await asyncio.gather(*tasks)
        thread.join()
        assert seen == [entries] * streams, seen
        return time.process_time() - c0 - writer_cpu[0]

    try:
        cpu = asyncio.run(run())
    finally:
        fanout.close()
        writer.delete(*keys)
        writer.close()
    return cpu / (streams * entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--entries", type=int, default=300)
    parser.add_argument("--prefix", help="key prefix (default: one of the run's own)")
    args = parser.parse_args()
    prefix = args.prefix or f"rxbench-{uuid.uuid4().hex[:8]}"
    per_entry = measure(args.url, prefix, args.streams, args.entries)
    print(
        f"{args.streams} streams x {args.entries} entries: watching side "
        f"{per_entry * 1e6:.2f} µs CPU per entry"
    )


if __name__ == "__main__":
    main()
