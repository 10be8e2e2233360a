"""Instructions from the call to the first text chunk: ``cw.stream()`` / ``cw.astream()``
against the bare SDK (or ``ScriptedModel.iter_chunks``) on the same bytes.

The deterministic twin of ``bench_latency.py`` (CPU time there moves ±10 % or more on a
shared machine). It runs under ``valgrind --tool=callgrind`` (started here unless told it is
the child). Each sample zeroes callgrind's counters right before the call
(``cw.stream(...).subscribe``, ``cw.astream``, the SDK's ``create``) and dumps them when the
first chunk or event carrying text arrives (callgrind's client requests, a tiny C helper
built with ``cc``). Every thread counts (``--separate-threads=no``): on asyncio the reply's
begin and first request may run in the executor's worker thread. The cyclic GC is off and
runs between samples (whichever sample crossed its threshold would pay a collection). The
store's timer threads (periodic checkpoints, lease renewals) work per second of wall time
and may land in a sample; the minimum over the samples leaves them out, the median is
shown beside it.

Cases: ``scripted`` (``ScriptedModel``: the pipeline's own share, no SDK) and each
provider's ``wire="fast"``, sync and async, each with its bare side; a middleware hook on
the pipeline side as in ``bench_latency.py``.

    python benchmarks/callgrind_ttfc.py                      # every case, 8 samples each
    python benchmarks/callgrind_ttfc.py --cases scripted --samples 12 --keep /tmp/cg
    python benchmarks/callgrind_ttfc.py --main-thread      # the main thread's alone

``--main-thread`` counts the main thread only (``--separate-threads=yes``): the store's
timer threads poll per 0.25 s of wall time, and under valgrind (~50x slower) one lands in
nearly every asyncio sample, ~0.9 million instructions of another thread, which the
minimum then keeps. An asyncio reply that begins at once (``SQLiteStore.at_once``) does all
its work to the first chunk on the main thread; one that goes to the executor does not
(then count all threads).
    callgrind_annotate --inclusive=yes /tmp/cg/callgrind.out.*   # where they go

Needs valgrind and a C compiler; minutes (Python runs ~50x slower under valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = ("scripted", "openai_chat", "openai_responses", "anthropic", "gemini")
_HELPER = r"""
#include <valgrind/callgrind.h>
void rx_zero(void) { CALLGRIND_ZERO_STATS; }
void rx_dump(const char *label) { CALLGRIND_DUMP_STATS_AT(label); }
"""


def _helper(tmp: Path) -> ctypes.CDLL:
    src, lib = tmp / "cg.c", tmp / "cg.so"
    src.write_text(_HELPER)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)
    return ctypes.CDLL(str(lib))


def child(cases: list[str], paths: list[str], sides: list[str], samples: int, tmp: Path) -> None:
    """Inside valgrind: each sample between a zero and a dump."""
    sys.path.insert(0, str(HERE))
    import _harness as h
    import bench_latency as bl
    from _wire import deltas, make_stream

    import rxcontext
    from rxcontext import Chunk, ChunkKind
    from rxcontext.providers import ScriptedModel
    from rxcontext.providers.base import Request

    cg = _helper(tmp)
    loop = asyncio.new_event_loop()
    # The cyclic GC runs when allocations since its last run pass a threshold, so whichever
    # sample crosses it would pay a whole collection: off, and run between samples instead.
    gc.disable()

    def sync_pipeline(store: Any, model: Any, label: bytes) -> None:
        cw = h.fresh_window(store, model)  # set up outside the count
        hook = h.middleware_counter()
        seen: list[bool] = []
        errors: list[Exception] = []

        def on_next(chunk: Any) -> None:
            if not seen and bl._is_text(chunk):
                cg.rx_dump(label)
                seen.append(True)

        cg.rx_zero()
        cw.stream(hook).subscribe(on_next=on_next, on_error=errors.append)
        if errors:
            raise errors[0]
        assert seen

    async def async_pipeline(store: Any, model: Any, label: bytes) -> None:
        cw = h.fresh_window(store, model)
        hook = h.middleware_counter()
        seen = False
        cg.rx_zero()
        stream = cw.astream(hook)
        try:
            async for chunk in stream:
                if not seen and bl._is_text(chunk):
                    cg.rx_dump(label)
                    seen = True
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        assert seen

    with rxcontext.open(tmp / "cg.db", lease_ttl=600) as store:
        for case in cases:
            if case == "scripted":
                chunks = [Chunk(ChunkKind.TEXT, t) for t in deltas(18)] + [Chunk(ChunkKind.DONE)]
                model = ScriptedModel([chunks], repeat_last=True)
                request = Request(records=h.fresh_window(store, model).live_records())

                def bare_sync(label: bytes, model: Any = model, request: Any = request) -> None:
                    cg.rx_zero()
                    it = model.iter_chunks(request)
                    next(it)
                    cg.rx_dump(label)
                    it.close()

                async def bare_async(
                    label: bytes, model: Any = model, request: Any = request
                ) -> None:
                    cg.rx_zero()
                    it = model.aiter_chunks(request)
                    await anext(it)
                    cg.rx_dump(label)
                    await it.aclose()  # type: ignore[attr-defined]

            else:
                provider = h.BUILDERS[case](make_stream(case, 20))
                model = provider.model("fast")
                sync_first = bl.first_text_sdk(provider)
                async_first = bl.first_text_sdk_async(provider)
                # The bare side: bench_latency's consumers, with the zero and the dump
                # around them (their own process_time reads are counted, ~nothing).

                def bare_sync(label: bytes, f: Any = sync_first) -> None:
                    cg.rx_zero()
                    f()
                    cg.rx_dump(label)

                async def bare_async(label: bytes, f: Any = async_first) -> None:
                    cg.rx_zero()
                    await f()
                    cg.rx_dump(label)

            for path in paths:
                for side in sides:
                    for i in range(samples + 2):  # two warm-ups, dumped as such
                        label = f"{case}:{path}:{side}:{i - 2}".encode()
                        gc.collect()
                        if path == "sync":
                            if side == "bare":
                                bare_sync(label)
                            else:
                                sync_pipeline(store, model, label)
                        elif side == "bare":
                            loop.run_until_complete(bare_async(label))
                        else:
                            loop.run_until_complete(async_pipeline(store, model, label))
    loop.close()


def _counts(tmp: Path, main_thread: bool = False) -> dict[tuple[str, str, str], list[int]]:
    out: dict[tuple[str, str, str], list[int]] = {}
    for path in tmp.glob("callgrind.out*"):
        if main_thread and not path.name.endswith("-01"):
            path.unlink()
            continue
        text = path.read_text(errors="replace")
        label = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if not (label and total):
            continue
        case, p, side, i = label.group(1).split(":")
        if int(i) < 0:
            path.unlink()  # a warm-up: not annotated either
            continue
        out.setdefault((case, p, side), []).append(int(total.group(1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--paths", default="sync,async")
    parser.add_argument("--sides", default="bare,pipeline")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="keep callgrind's files here")
    parser.add_argument("--main-thread", action="store_true", help="count the main thread only")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases, paths, sides = args.cases.split(","), args.paths.split(","), args.sides.split(",")
    if args.child is not None:
        child(cases, paths, sides, args.samples, args.child)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name) if args.keep is None else args.keep
        tmp.mkdir(parents=True, exist_ok=True)
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--separate-threads={'yes' if args.main_thread else 'no'}",
            f"--callgrind-out-file={tmp}/callgrind.out.%p",
            sys.executable,
            __file__,
            "--cases",
            args.cases,
            "--paths",
            args.paths,
            "--sides",
            args.sides,
            "--samples",
            str(args.samples),
            "--child",
            str(tmp),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
        counts = _counts(tmp, args.main_thread)
    threads = "the main thread" if args.main_thread else "all threads"
    results: dict[str, Any] = {
        "method": f"callgrind instructions, {threads}, call to first text chunk",
        "samples": args.samples,
        "cases": {},
    }
    for (case, p, side), values in sorted(counts.items()):
        results["cases"][f"{case} {p} {side}"] = {
            "min": min(values),
            "median": statistics.median(values),
        }
    for case in cases:
        for p in paths:
            bare = results["cases"].get(f"{case} {p} bare")
            pipe = results["cases"].get(f"{case} {p} pipeline")
            if bare and pipe:
                results["cases"][f"{case} {p} added"] = {"min": pipe["min"] - bare["min"]}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
