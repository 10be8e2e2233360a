"""What one send of the Redis fan-out's writer costs its thread, and what packing costs.

    python benchmarks/fanoutsend.py [--url redis://127.0.0.1:6379/0] [--replies 20]
        [--sends 2000] [--rounds 3] [--packs 2000] [--prefix KEY_PREFIX]

Method. A :class:`~rxcontext.fanout.redis.RedisFanout` on the local server (a key prefix of
the run's own, deleted afterwards) with ``--replies`` open replies. Each send, every reply
gets one text chunk and the writer thread is woken; it sends them as one pipeline (an
``XADD`` per reply, as in ``benchmarks/scaleout.py``, where 50 streams per owner send
about 20 replies' chunks every 20 ms) and the script waits for that send to return.
``time.thread_time()`` of the writer thread around each send (its ``_flush``) is summed
over ``--sends`` sends; the best of ``--rounds`` rounds is reported per send (CPU time on
a shared machine only ever comes out higher than the work).

Then packing alone: the ``XREAD BLOCK`` over 200 streams that the watchers' tail thread
sends once per owner's send, and the writer's ``XADD``, each packed by the connection
class the fan-out uses and by redis-py's own (``timeit``, best of 7).
"""

from __future__ import annotations

import argparse
import functools
import threading
import time
import timeit
import uuid

import redis

from rxcontext import Chunk, ChunkKind
from rxcontext.fanout.redis import RedisFanout


def _send_cost(url: str, prefix: str, replies: int, sends: int, rounds: int) -> float:
    fanout = RedisFanout(url, prefix=prefix, flush_every=3600.0)
    done = threading.Event()
    spent: list[float] = []
    flush = fanout._flush

    def timed_flush() -> None:
        t0 = time.thread_time()
        flush()
        spent.append(time.thread_time() - t0)
        done.set()

    fanout._flush = timed_flush  # type: ignore[method-assign]
    channels = [fanout.open_channel(f"r{i}", 1) for i in range(replies)]
    chunk = Chunk(ChunkKind.TEXT, "a ten char")
    best = float("inf")
    try:
        for _ in range(rounds):
            spent.clear()
            for _ in range(sends):
                done.clear()
                for channel in channels:
                    channel.chunk(chunk)
                fanout._wake.set()
                # The writer may have been inside a send already (the channels' Begins):
                # wait until a send leaves nothing pending.
                while not done.wait(5.0) or any(c.inbox or c.pending for c in channels):
                    done.clear()
                    fanout._wake.set()
            best = min(best, sum(spent) / sends)
    finally:
        for channel in channels:
            channel.end("completed")
        fanout.drain(5.0)
        fanout.close()
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return best


def _pack_costs(url: str, prefix: str, n: int) -> dict[str, tuple[float, float]]:
    fanout = RedisFanout(url, prefix=prefix)
    ours = fanout._writer.connection_pool.make_connection()
    plain = redis.Redis.from_url(url).connection_pool.make_connection()
    fanout.close()
    keys = [f"rx:{{{uuid.uuid4()}}}:s" for _ in range(200)]
    ids = [f"{i}-{i * 7}" for i in range(200)]
    xread = ("XREAD", "BLOCK", 1000, "STREAMS", *keys, *ids)
    data = '[["t","a ten char"]]'
    xadd = ("XADD", keys[0], "NOMKSTREAM", "MAXLEN", "~", 100000, "1-41", "k", "c", "f", 41)
    xadd += ("d", data)
    out: dict[str, tuple[float, float]] = {}
    for name, command in (("XREAD of 200 streams", xread), ("XADD of one chunk", xadd)):
        assert b"".join(ours.pack_command(*command)) == b"".join(plain.pack_command(*command))
        us = []
        for connection in (plain, ours):
            pack = functools.partial(connection.pack_command, *command)
            us.append(min(timeit.repeat(pack, number=n, repeat=7)) / n * 1e6)
        out[name] = (us[0], us[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--replies", type=int, default=20)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--packs", type=int, default=2000, help="packs per timeit sample")
    parser.add_argument("--prefix", help="key prefix (default: one of the run's own)")
    args = parser.parse_args()
    prefix = args.prefix or f"rxbench-{uuid.uuid4().hex[:8]}"
    per_send = _send_cost(args.url, prefix, args.replies, args.sends, args.rounds)
    print(
        f"writer thread CPU per send of {args.replies} replies x 1 chunk: "
        f"{per_send * 1e6:.0f} µs ({per_send / args.replies * 1e6:.1f} µs a reply), "
        f"best of {args.rounds} x {args.sends} sends"
    )
    for name, (plain, ours) in _pack_costs(args.url, prefix, args.packs).items():
        print(f"packing an {name}: redis-py's {plain:.1f} µs, the fan-out's {ours:.1f} µs")


if __name__ == "__main__":
    main()
