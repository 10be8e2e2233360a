"""Scale-out: many concurrent streams over worker processes on PostgreSQL, watched live
from another process through a Redis fan-out.

    python benchmarks/scaleout.py --streams 200 --workers 4 --seconds 30 [--json out.json]

Method. The parent creates a PostgreSQL database of the run's own on the server at
``--pg`` (dropped afterwards) and picks a Redis key prefix of its own (its keys deleted
afterwards), then starts ``--workers`` owner processes and ``--watchers`` watcher
processes (``python benchmarks/scaleout.py --role ...``). Every process opens the store
with ``rxcontext.open(url, fanout=RedisFanout(redis_url, prefix=...))``. Each owner runs
``streams / workers`` asyncio streams on one event loop: a stream is a window on a context
of its own that adds a prompt (``asyncio.to_thread(cw.add_prompt, ...)``) and consumes
``cw.astream(reply_id=...)`` to the end, then starts its next reply at once, until
``--seconds`` have passed (the last reply of each stream is cut short so it ends by
then); so every stream stays live for the whole run. Replies have a random length of
``chunks/2 .. 3*chunks/2`` text chunks (seeded; mean ``--chunks``), so their ends spread
out. The model (:class:`PacedModel`, below) yields a chunk every ``--interval`` seconds on
a fixed grid per stream that runs on across replies (``asyncio.sleep`` until the chunk is
due: no busy-waiting; streams' grids are offset evenly over one interval): 200 streams at
50 ms are 4,000 chunks/s if the machine keeps up, and a chunk yielded late shows as
lateness against its grid time. Each chunk's text carries its sequence number and
``time.monotonic_ns()`` at the yield (CLOCK_MONOTONIC is one clock for every process on
Linux). Every stream is watched from a watcher process: one task per stream iterates
``cw.awatch(reply_id)`` for each of its replies in turn (polling every 10 ms until the
reply exists), and notes when each chunk arrives.

Measured: **commit** — from the model yielding the reply's final (DONE) chunk to the
owner's ``async for`` ending (the reply is committed before the iteration ends), and the
``store.commit_reply`` call alone; **checkpoint** — each ``store.save_checkpoints`` call
(the periodic batch of a process's streaming replies, every ``checkpoint_every`` = 1 s);
**watch** — chunk delivered to the owner's ``async for`` to the watcher process receiving
it, and model yield to watcher; **lateness** of yields against the grid; the CPU of each
process (``getrusage``) over the run; the load average; and the chunks and replies that
were achieved. The store methods are timed by wrapping them on the store instance in
this script; the library is not changed to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

PG_ADMIN = os.environ.get("RXCONTEXT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("RXCONTEXT_REDIS", "redis://127.0.0.1:6379/0")
STAMP = re.compile(r"\[(\d+):(\d+)\]")
FIND_POLL = 0.010  # a watcher looks for a reply not begun yet this often
GRACE = 30.0  # seconds after the run's end a process may take to finish its replies


def _now() -> int:
    return time.monotonic_ns()


# -- the owners ---------------------------------------------------------------------------


class PacedModel:
    """A model whose chunks are due on a fixed grid (``interval`` apart, from ``start``) that
    runs on across its replies; the reply length is set before each call (``length``).

    A chunk's text is ``[seq:yield_ns] `` (``seq`` counts within the reply)."""

    name = "paced"
    call_options = frozenset(
        {"temperature", "max_output_tokens", "tool_choice", "stop", "extra", "schema"}
    )
    context_window = None

    def __init__(self, start: float, interval: float) -> None:
        self.due = start  # loop.time() of the next chunk
        self.interval = interval
        self.length = 1
        self.late: list[int] = []  # ns each yield came after its due time
        self.done_ns = 0  # when the current reply's DONE was yielded

    def iter_chunks(self, request: Any) -> Iterator[Any]:
        raise NotImplementedError("the benchmark streams with astream() only")

    async def aiter_chunks(self, request: Any) -> AsyncIterator[Any]:
        from rxcontext import Chunk, ChunkKind

        loop = asyncio.get_running_loop()
        for seq in range(self.length):
            self.due += self.interval
            wait = self.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.late.append(int((loop.time() - self.due) * 1e9))
            yield Chunk(ChunkKind.TEXT, f"[{seq}:{_now()}] ")
        self.done_ns = _now()
        yield Chunk(ChunkKind.DONE, finish_reason="stop")

    def complete(self, request: Any) -> Any:
        raise NotImplementedError

    async def acomplete(self, request: Any) -> Any:
        raise NotImplementedError


def _timed(store: Any, name: str, into: list[int]) -> None:
    """Time every call of ``store.<name>`` (into ``into``, ns), on this instance only."""
    original = getattr(store, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = _now()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(_now() - t0)

    setattr(store, name, timed)


def _open(cfg: dict[str, Any]) -> Any:
    import rxcontext
    from rxcontext.fanout.redis import RedisFanout

    fanout = RedisFanout(cfg["redis"], prefix=cfg["prefix"], end_ttl=120.0)
    return rxcontext.open(cfg["url"], fanout=fanout)


def _slots(cfg: dict[str, Any], worker: int) -> list[int]:
    return [s for s in range(cfg["streams"]) if s % cfg["workers"] == worker]


def _reply_id(cfg: dict[str, Any], slot: int, n: int) -> str:
    return f"{cfg['tag']}-s{slot}-r{n}"


def _wait_start() -> int:
    """Say ready, then wait for the parent's start time (monotonic ns)."""
    print("ready", flush=True)
    return int(sys.stdin.readline())


def _config() -> dict[str, Any]:
    """Say imported (the parent readies the database meanwhile), then read the run's
    configuration from the file whose path the parent sends."""
    import rxcontext.fanout.redis
    import rxcontext.store.postgres  # noqa: F401

    print("imported", flush=True)
    return dict(json.loads(Path(sys.stdin.readline().strip()).read_text()))


async def _sleep_until(ns: int) -> None:
    wait = (ns - _now()) / 1e9
    if wait > 0:
        await asyncio.sleep(wait)


def run_owner(worker: int, out: Path) -> None:
    from rxcontext import ChunkKind, ContextWindow

    cfg = _config()
    store = _open(cfg)
    commit_call: list[int] = []
    checkpoint_call: list[int] = []
    begin_call: list[int] = []
    _timed(store, "commit_reply", commit_call)
    _timed(store, "save_checkpoints", checkpoint_call)
    _timed(store, "begin_reply", begin_call)
    slots = _slots(cfg, worker)
    rng = random.Random(worker)
    interval = cfg["interval"]
    windows = {s: ContextWindow(store, None, f"{cfg['tag']}-s{s}", retry=None) for s in slots}
    commit_e2e: list[int] = []
    delivered: dict[str, list[int]] = {}  # reply -> delivery ns of each chunk
    replies = 0
    begun: dict[int, int] = {}  # slot -> replies begun
    failures: list[str] = []

    async def stream(slot: int, start: int, end: int) -> None:
        nonlocal replies
        loop = asyncio.get_running_loop()
        offset = (slot // cfg["workers"]) / len(slots) * interval
        model = PacedModel(loop.time() + (start - _now()) / 1e9 + offset, interval)
        cw = windows[slot]
        cw.model = model
        n = 0
        while True:
            left = int((end - _now()) / 1e9 / interval)
            length = min(rng.randint(cfg["chunks"] // 2, cfg["chunks"] * 3 // 2), left)
            if length < 1:
                return
            model.length = length
            await asyncio.to_thread(cw.add_prompt, f"prompt {n}")
            reply_id = _reply_id(cfg, slot, n)
            times = delivered[reply_id] = []
            begun[slot] = n + 1
            try:
                async for chunk in cw.astream(reply_id=reply_id):
                    if chunk.kind is ChunkKind.TEXT:
                        times.append(_now())
            except Exception as error:  # counted and reported, never hidden
                failures.append(f"{reply_id}: {type(error).__name__}: {error}")
                return
            commit_e2e.append(_now() - model.done_ns)
            replies += 1
            n += 1

    async def main() -> tuple[float, float, list[int]]:
        start = await asyncio.to_thread(_wait_start)
        end = start + int(cfg["seconds"] * 1e9)
        await _sleep_until(start)
        t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(stream(s, start, end) for s in slots))
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        late = [x for s in slots for x in windows[s].model.late]  # type: ignore[union-attr]
        return cpu, wall, late

    cpu, wall, late = asyncio.run(main())
    fanout_drained = True
    from rxcontext.fanout import fanout_for

    fanout = fanout_for(store)
    if fanout is not None:
        fanout_drained = fanout.drain(10.0)  # type: ignore[attr-defined]
    store.close()
    out.write_text(
        json.dumps(
            {
                "role": "owner",
                "worker": worker,
                "pid": os.getpid(),
                "cpu": cpu,
                "wall": wall,
                "streams": len(slots),
                "replies": replies,
                "chunks": sum(len(t) for t in delivered.values()),
                "failures": failures,
                "begun": begun,
                "fanout_drained": fanout_drained,
                "commit_e2e": commit_e2e,
                "commit_call": commit_call,
                "checkpoint_call": checkpoint_call,
                "begin_call": begin_call,
                "late": late,
                "delivered": delivered,
            }
        )
    )


# -- the watchers -------------------------------------------------------------------------


def run_watcher(index: int, out: Path) -> None:
    from rxcontext import ChunkKind, ContextWindow, ReplyNotFound

    cfg = _config()
    store = _open(cfg)
    slots = [s for s in range(cfg["streams"]) if s % cfg["watchers"] == index]
    cw = ContextWindow(store, None, f"{cfg['tag']}-watcher-{index}")
    received: dict[str, list[tuple[int, int, int]]] = {}  # reply -> (seq, yield, recv)
    watched = 0
    failures: list[str] = []
    lock = threading.Lock()
    begun: dict[int, int] = {}  # slot -> replies its owner began, once the owners are done

    def learn_counts() -> None:  # the parent sends them when every owner has finished
        line = sys.stdin.readline()
        counts = {int(k): v for k, v in json.loads(line or "{}").items()}
        begun.update({s: counts.get(s, 0) for s in slots})

    async def follow(slot: int) -> None:
        nonlocal watched
        n = 0
        while True:
            if slot in begun and n >= begun[slot]:
                return  # every reply of the stream was watched
            reply_id = _reply_id(cfg, slot, n)
            got = received[reply_id] = []
            try:
                async for chunk in cw.awatch(reply_id):
                    if chunk.kind is ChunkKind.TEXT:
                        now = _now()
                        got.extend((int(a), int(b), now) for a, b in STAMP.findall(chunk.text))
            except ReplyNotFound:  # not begun yet
                del received[reply_id]
                await asyncio.sleep(FIND_POLL)
                continue
            except Exception as error:
                failures.append(f"{reply_id}: {type(error).__name__}: {error}")
                return
            with lock:
                watched += 1
            n += 1

    async def main() -> tuple[float, float]:
        start = await asyncio.to_thread(_wait_start)
        threading.Thread(target=learn_counts, daemon=True).start()
        await _sleep_until(start)
        t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(follow(s) for s in slots))
        wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), wall

    cpu, wall = asyncio.run(main())
    store.close()
    out.write_text(
        json.dumps(
            {
                "role": "watcher",
                "worker": index,
                "pid": os.getpid(),
                "cpu": cpu,
                "wall": wall,
                "streams": len(slots),
                "replies": watched,
                "failures": failures,
                "received": received,
            }
        )
    )


# -- the parent ---------------------------------------------------------------------------


def _pct(values: list[int] | list[float], scale: float = 1e-6) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank) of ``values`` times ``scale``; ms for ns by default."""
    if not values:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"),
                "max": float("nan")}  # fmt: skip
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * p + 0.999999) - 1))] * scale

    return {
        "n": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": ordered[-1] * scale,
    }


def _database(admin_url: str) -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"rxcscale_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    admin.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return url, drop


def _redis_cleanup(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


def _spawn(role: str, index: int, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--index", str(index), "--result", str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _expect(proc: subprocess.Popen[str], name: str, word: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != word:
        raise SystemExit(f"{name} did not get ready (said {line!r}, exit {proc.poll()})")


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _wait(proc: subprocess.Popen[str], name: str, deadline: float, loads: list[float]) -> None:
    while proc.poll() is None:
        loads.append(os.getloadavg()[0])
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not finish")
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            pass
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run; returns the summary (see :func:`summarize`)."""
    with tempfile.TemporaryDirectory(prefix="rxscale-") as tmp:
        owners = [
            (_spawn("owner", i, Path(tmp, f"owner-{i}.json")), f"owner-{i}")
            for i in range(args.workers)
        ]
        watchers = [
            (_spawn("watcher", i, Path(tmp, f"watcher-{i}.json")), f"watcher-{i}")
            for i in range(args.watchers)
        ]
        procs = owners + watchers
        drop: Callable[[], None] = lambda: None  # noqa: E731
        prefix = args.prefix or f"rxscale-{uuid.uuid4().hex[:10]}"
        try:
            url = args.url  # the processes import meanwhile
            if url is None:
                from rxcontext.store.postgres import PostgresStore

                url, drop = _database(args.pg)
                PostgresStore(url, pool_size=1).close()  # migrated once, before the processes
            cfg = {
                "url": url,
                "redis": args.redis,
                "prefix": prefix,
                "tag": uuid.uuid4().hex[:6],
                "streams": args.streams,
                "workers": args.workers,
                "watchers": args.watchers,
                "seconds": args.seconds,
                "interval": args.interval,
                "chunks": args.chunks,
            }
            cfg_path = Path(tmp, "config.json")
            cfg_path.write_text(json.dumps(cfg))
            for proc, name in procs:
                _expect(proc, name, "imported")
                _send(proc, str(cfg_path))
            for proc, name in procs:
                _expect(proc, name, "ready")
            load_before = os.getloadavg()
            start = _now() + int(0.3e9)
            for proc, _ in procs:
                _send(proc, str(start))
            loads: list[float] = []
            deadline = time.monotonic() + args.seconds + 0.3 + GRACE
            for proc, name in owners:
                _wait(proc, name, deadline, loads)
            results = [json.loads(Path(tmp, f"{n}.json").read_text()) for _, n in owners]
            begun = {k: v for r in results for k, v in r["begun"].items()}
            for proc, _ in watchers:
                _send(proc, json.dumps(begun))
            for proc, name in watchers:
                _wait(proc, name, deadline, loads)
            results += [json.loads(Path(tmp, f"{n}.json").read_text()) for _, n in watchers]
            return summarize(args, results, load_before, loads + [os.getloadavg()[0]])
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            try:
                if not args.prefix:
                    _redis_cleanup(args.redis, prefix)
            finally:
                drop()


def summarize(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    load_before: tuple[float, float, float],
    loads: list[float],
) -> dict[str, Any]:
    owners = [r for r in results if r["role"] == "owner"]
    watchers = [r for r in results if r["role"] == "watcher"]
    delivered: dict[str, list[int]] = {}
    for o in owners:
        delivered.update(o["delivered"])
    to_watcher: list[int] = []  # delivered to the owner -> received by the watcher
    yield_to_watcher: list[int] = []
    yield_to_owner: list[int] = []
    received_chunks = 0
    for reply, times in delivered.items():
        seen: dict[int, int] = {}
        for w in watchers:
            for seq, _, recv in w["received"].get(reply, []):
                seen.setdefault(seq, recv)
        received_chunks += len(seen)
    for w in watchers:
        for reply, got in w["received"].items():
            times = delivered.get(reply, [])
            for seq, stamp, recv in got:
                yield_to_watcher.append(recv - stamp)
                if seq < len(times):
                    to_watcher.append(recv - times[seq])
    # model yield -> owner's async for (the owner's own path), from the chunk texts
    for w in watchers:
        for reply, got in w["received"].items():
            times = delivered.get(reply, [])
            yield_to_owner.extend(times[seq] - stamp for seq, stamp, _ in got if seq < len(times))
    chunks = sum(o["chunks"] for o in owners)
    wall = max(o["wall"] for o in owners)
    return {
        "streams": args.streams,
        "workers": args.workers,
        "watchers": args.watchers,
        "seconds": args.seconds,
        "interval": args.interval,
        "target_chunks_per_s": args.streams / args.interval,
        "chunks": chunks,
        "chunks_per_s": chunks / args.seconds,
        "wall": wall,
        "replies": sum(o["replies"] for o in owners),
        "replies_watched": sum(w["replies"] for w in watchers),
        "chunks_received": received_chunks,
        "failures": [f for r in results for f in r["failures"]],
        "fanout_drained": all(o["fanout_drained"] for o in owners),
        "commit_e2e": _pct([x for o in owners for x in o["commit_e2e"]]),
        "commit_call": _pct([x for o in owners for x in o["commit_call"]]),
        "checkpoint_call": _pct([x for o in owners for x in o["checkpoint_call"]]),
        "begin_call": _pct([x for o in owners for x in o["begin_call"]]),
        "late": _pct([x for o in owners for x in o["late"]]),
        "owner_to_watcher": _pct(to_watcher),
        "yield_to_watcher": _pct(yield_to_watcher),
        "yield_to_owner": _pct(yield_to_owner),
        "cpu": {
            f"{r['role']}-{r['worker']}": 100.0 * r["cpu"] / r["wall"] if r["wall"] else 0.0
            for r in results
        },
        "load_before": list(load_before),
        "load_max": max(loads) if loads else float("nan"),
        "load_after": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
    }


ROWS = (
    ("commit: DONE yielded → `async for` ends", "commit_e2e"),
    ("commit: `store.commit_reply` call", "commit_call"),
    ("checkpoint: `store.save_checkpoints` call", "checkpoint_call"),
    ("begin: `store.begin_reply` call", "begin_call"),
    ("chunk: owner's `async for` → remote watcher", "owner_to_watcher"),
    ("chunk: model yield → remote watcher", "yield_to_watcher"),
    ("chunk: model yield → owner's `async for`", "yield_to_owner"),
    ("chunk yield lateness against its 50 ms grid", "late"),
)


def report(s: dict[str, Any]) -> str:
    """The run as Markdown: a table of latencies, then throughput, CPU and load."""
    lines = [
        "| measure (ms) | n | p50 | p95 | p99 | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, key in ROWS:
        p = s[key]
        lines.append(
            f"| {label} | {p['n']} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f}"
            f" | {p['max']:.1f} |"
        )
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in s["cpu"].items())
    lines += [
        "",
        f"Chunks: {s['chunks']} in {s['seconds']:g} s = {s['chunks_per_s']:.0f}/s"
        f" (target {s['target_chunks_per_s']:.0f}/s); replies {s['replies']} (watched"
        f" {s['replies_watched']}); chunks received by watchers {s['chunks_received']};"
        f" failures {len(s['failures'])}; owners' wall {s['wall']:.1f} s.",
        f"CPU over the run: {cpu}. Load average before {s['load_before'][0]:.2f},"
        f" max during {s['load_max']:.2f}, after {s['load_after']:.2f}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--watchers", type=int, default=1, help="watcher processes")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--chunks", type=int, default=40, help="mean text chunks per reply")
    parser.add_argument("--pg", default=PG_ADMIN, help="maintenance URL of the server")
    parser.add_argument("--redis", default=REDIS)
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--role", choices=("owner", "watcher"), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help="an existing database to use (not dropped)")
    parser.add_argument("--prefix", default=None, help="a Redis key prefix (not cleaned up)")
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        (run_owner if args.role == "owner" else run_watcher)(args.index, args.result)
        return 0
    if args.streams < args.workers or args.streams < args.watchers:
        parser.error("need at least one stream per process")
    summary = run(args)
    print(report(summary))
    for failure in summary["failures"][:10]:
        print("failure:", failure)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
