"""``cw.stop`` across processes: how long until the owner's subscriber has its
``StreamInterrupted``, with the Redis stop hint and with the store's poll alone.

    python benchmarks/stoplatency.py [--trials 20] [--stores sqlite,postgres] [--jitter 0.3]
        [--redis redis://127.0.0.1:6379/0] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Method. For each store (a SQLite WAL file in a temporary folder; PostgreSQL: a fresh
database on the given server, dropped afterwards) two owner processes run side by side,
one opened with ``fanout=RedisFanout(url, prefix=<this run's own>)`` (the hint) and one
with no fan-out (the 0.25 s poll only); both keep the default poll and
``lease_ttl=5``. Each trial, for each owner in turn (interleaved, so the machine's load
falls on both alike): the owner starts a reply whose model sends three chunks and then
waits (a model thinking in silence) and says ``paused``; this process, with a store of its
own (and the same fan-out settings as that owner), waits a random 0–``jitter`` seconds
(seeded; the same for both owners) so that the stop falls anywhere in the owner's poll
interval — without it, the stop always comes just after the reply began and the poll,
whose clock starts then, always takes about 250 ms — then takes ``time.perf_counter()``, calls
``cw.stop(reply_id)`` and reads the owner's stdout until it says ``stopped`` — printed in
its ``on_error``, which comes after the checkpoint was stored. The figure is that time:
the stop request's write, the hint or the poll, the owner's checkpoint write, and one pipe
hop. The owner's heartbeat (and so its listener) keeps running between trials, as in a
worker serving replies one after another. Prints JSON: median, p95, min, max in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _pgdb import database  # noqa: E402

import rxcontext  # noqa: E402
from rxcontext import ContextWindow  # noqa: E402
from rxcontext.providers import ScriptedModel  # noqa: E402

OWNER = textwrap.dedent(
    """
    import sys
    import threading
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    target, redis_url, prefix = sys.argv[1:4]
    fanout = None
    if redis_url != "-":
        from rxcontext.fanout.redis import RedisFanout
        fanout = RedisFanout(redis_url, prefix=prefix)
    store = rxcontext.open(target, fanout=fanout)
    release = threading.Event()

    def say(line):
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    class Pausing(ScriptedModel):
        def iter_chunks(self, request):
            for i in range(3):
                yield Chunk(ChunkKind.TEXT, f"[{i}]")
            if fanout is not None:
                fanout.stop_listeners[0].subscribed.wait(10)
            say("paused")
            release.wait(60)
            yield Chunk(ChunkKind.DONE, finish_reason="stop")

    cw = ContextWindow(store, Pausing([[]]), "stoplatency", checkpoint_every=None)
    say("ready")
    for line in sys.stdin:
        rid = line.strip()
        if not rid:
            break
        release.clear()
        cw.add_prompt("go")
        done = threading.Event()

        def on_error(e, rid=rid, done=done):
            say(f"stopped {rid} {type(e.__cause__).__name__}")
            done.set()

        t = threading.Thread(
            target=lambda rid=rid: cw.stream(reply_id=rid).subscribe(
                lambda c: None, on_error, lambda: (say("completed"), done.set())
            )
        )
        t.start()
        done.wait(60)
        release.set()
        t.join(60)
    store.close()
    """
)


def _until(stream: IO[str] | None, prefix: str) -> str:
    assert stream is not None
    while True:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"the owner ended before {prefix!r}")
        if line.startswith(prefix):
            return line.strip()


class Variant:
    def __init__(self, name: str, target: str, redis_url: str | None, prefix: str) -> None:
        self.name = name
        fanout: Any = None
        if redis_url is not None:
            from rxcontext.fanout.redis import RedisFanout

            fanout = RedisFanout(redis_url, prefix=prefix)
        self.store = rxcontext.open(target, fanout=fanout)
        self.cw = ContextWindow(self.store, ScriptedModel([]), "stoplatency")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, target, redis_url or "-", prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        _until(self.proc.stdout, "ready")
        self.times: list[float] = []

    def trial(self, i: int, delay: float) -> None:
        assert self.proc.stdin is not None
        rid = f"{self.name}-{i}"
        self.proc.stdin.write(rid + "\n")
        self.proc.stdin.flush()
        _until(self.proc.stdout, "paused")
        time.sleep(delay)
        started = time.perf_counter()
        assert self.cw.stop(rid) is True
        line = _until(self.proc.stdout, "stopped")
        self.times.append(time.perf_counter() - started)
        assert line == f"stopped {rid} ReplyStopped", line

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(60)
        self.store.close()

    def summary(self) -> dict[str, float]:
        ms = sorted(t * 1000 for t in self.times)
        return {
            "trials": len(ms),
            "median_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 1),
            "min_ms": round(ms[0], 1),
            "max_ms": round(ms[-1], 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--jitter", type=float, default=0.3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    prefix = f"rxbench-{uuid.uuid4().hex[:8]}"
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results["jitter_s"] = args.jitter
    results["load_before"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            drop = None
            if kind == "postgres":
                target, drop = database(args.pg)
            else:
                target = str(Path(tmp) / "stop.db")
            variants = [
                Variant("redis", target, args.redis, prefix),
                Variant("poll", target, None, prefix),
            ]
            try:
                rng = random.Random(1)
                for i in range(args.trials):
                    delay = rng.uniform(0, args.jitter)
                    for variant in variants:
                        variant.trial(i, delay)
            finally:
                for variant in variants:
                    variant.close()
                if drop is not None:
                    drop()
            summaries = {v.name: v.summary() for v in variants}
            summaries["ratio_median_redis_to_poll"] = round(  # type: ignore[assignment]
                summaries["redis"]["median_ms"] / summaries["poll"]["median_ms"], 3
            )
            results[kind] = summaries
    results["load_after"] = os.getloadavg()
    import redis

    client = redis.Redis.from_url(args.redis, socket_timeout=2, socket_connect_timeout=2)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)
    client.close()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
