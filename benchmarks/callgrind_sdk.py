"""Instructions per event on ``wire="sdk"``: the pipeline against bare SDK iteration.

CPU time on a shared 2-core machine moves ±10 % between runs; instruction counts do not.
This runs under ``valgrind --tool=callgrind`` (it starts valgrind itself unless told it is
the child) and counts, per provider, the instructions of

- **sdk**: the bare SDK's own streaming iteration (benchmarks/_harness.py's consumer), and
- **pipeline**: ``cw.stream()`` on ``wire="sdk"`` with a middleware hook, the persister
  folding every chunk and committing the reply to a WAL SQLite file,

each on the same replayed bytes at two stream lengths. The marginal cost per event is
``(I(long) - I(short)) / (events(long) - events(short))``, so the request, the first
event's lazy setup and the commit (all the same at both lengths) cancel out; the result
is the pipeline's marginal cost divided by the SDK's. Counts come from callgrind's client
requests (a tiny C helper built here with ``cc``: ``CALLGRIND_ZERO_STATS`` before a
measured call, ``CALLGRIND_DUMP_STATS_AT`` after it), one warm-up call first.

Before the first count, each consumer makes :data:`WARM_REPLIES` replies on the short
stream. CPython 3.11 quickens a code object (``_PyCode_Quicken``, ~1,200 instructions each)
once it has been entered 8 times: with one warm-up per length, the code that runs twice
per reply was quickened inside the long pipeline count (~150 code objects, ~1,500
instructions an event once divided by the 100 events between the lengths), a cost per
process, not per event, that did not cancel out.

Threads are counted apart (``--separate-threads=yes``), and the counts are the main
thread's, where the chunks are made and delivered: the store's timer threads (the periodic
checkpoints, the heartbeat's lease renewals and stop polls) do work per second of wall
time, not per chunk, and under valgrind (~50x slower, more on a loaded machine) a stream
lasts long enough for many of their rounds: counted per chunk they would add a cost that
grows with the machine's load. (A client-request dump holds the calling thread only; the
timer threads' totals are in the files callgrind writes at exit, ``--keep`` to see them.)
The store's lease is long (``lease_ttl=600``) so that a slow run under valgrind cannot lose
its replies to self-fencing. For the same reason the pipeline's windows checkpoint every
:data:`EVERY` seconds, the default second stretched by valgrind's slowdown: a periodic write
that finds the driver busy is handed to the driver's own thread (``attend()``), so at the
default second a count took 0 to 2 of them (~1,900 instructions an event each, more at a
higher load) where a stream of this length at full speed (a few milliseconds) almost never
meets one.

    python benchmarks/callgrind_sdk.py                       # OpenAI Chat and Anthropic
    python benchmarks/callgrind_sdk.py --providers openai_chat,anthropic,gemini,openai_responses
    python benchmarks/callgrind_sdk.py --short 50 --long 250 --out /tmp/callgrind.json

Needs valgrind and a C compiler; under valgrind Python runs ~50x slower (minutes).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WARM_REPLIES = 8
"""Replies made per consumer before counting: past CPython's quickening threshold."""
EVERY = 50.0
"""The pipeline's ``checkpoint_every`` under valgrind: the default 1 s at its ~50x slowdown."""
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


def child(providers: list[str], short: int, long: int, tmp: Path) -> None:
    """Inside valgrind: run every measured call between a zero and a dump."""
    sys.path.insert(0, str(HERE))
    import _harness as h
    from _wire import make_stream

    import rxcontext

    cg = _helper(tmp)
    with rxcontext.open(tmp / "cg.db", lease_ttl=600) as store:
        for name in providers:
            stream = make_stream(name, short)
            provider = h.BUILDERS[name](stream)
            model = provider.model("sdk")
            for _ in range(WARM_REPLIES):
                assert provider.sdk_sync() == stream.text
                assert (
                    h.pipeline_sync(h.fresh_window(store, model, checkpoint_every=EVERY))
                    == stream.text
                )
            for n in (short, long):
                stream = make_stream(name, n)
                provider = h.BUILDERS[name](stream)
                model = provider.model("sdk")
                for consumer in ("sdk", "pipeline"):
                    pipeline = consumer == "pipeline"
                    if pipeline:  # warm-up, and the text is right
                        assert (
                            h.pipeline_sync(h.fresh_window(store, model, checkpoint_every=EVERY))
                            == stream.text
                        )
                        cw = h.fresh_window(
                            store, model, checkpoint_every=EVERY
                        )  # set up outside the count
                        cg.rx_zero()
                        got = h.pipeline_sync(cw)
                    else:
                        assert provider.sdk_sync() == stream.text
                        cg.rx_zero()
                        got = provider.sdk_sync()
                    cg.rx_dump(f"{name}:{consumer}:{stream.events}".encode())
                    assert got == stream.text


def _counts(tmp: Path) -> dict[tuple[str, str, int], int]:
    """The main thread's instructions in each measured call."""
    out: dict[tuple[str, str, int], int] = {}
    for path in tmp.glob("callgrind.out*"):
        text = path.read_text(errors="replace")
        label = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        thread = re.search(r"^thread: (\d+)", text, re.M)
        if label and total and (thread is None or thread.group(1) == "1"):
            name, consumer, events = label.group(1).split(":")
            out[(name, consumer, int(events))] = int(total.group(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", default="openai_chat,anthropic")
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=250)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep callgrind's files here (to annotate)"
    )
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    providers = args.providers.split(",")
    if args.child is not None:
        child(providers, args.short, args.long, args.child)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name) if args.keep is None else args.keep
        tmp.mkdir(parents=True, exist_ok=True)
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={tmp}/callgrind.out.%p",
            sys.executable,
            __file__,
            "--providers",
            args.providers,
            "--short",
            str(args.short),
            "--long",
            str(args.long),
            "--child",
            str(tmp),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
        counts = _counts(tmp)
    if len(counts) != 4 * len(providers) or min(counts.values(), default=0) <= 0:
        raise SystemExit(f"callgrind gave unusable counts: {counts}")
    results: dict[str, Any] = {
        "method": "callgrind instructions of the main thread, marginal per event",
        "short": args.short,
        "long": args.long,
        "cases": {},
    }
    for name in providers:
        rows = {}
        for consumer in ("sdk", "pipeline"):
            (n1, i1), (n2, i2) = sorted(
                (events, total)
                for (p, c, events), total in counts.items()
                if (p, c) == (name, consumer)
            )
            rows[consumer] = {
                "events": [n1, n2],
                "instructions": [i1, i2],
                "per_event": (i2 - i1) / (n2 - n1),
            }
        rows["ratio"] = rows["pipeline"]["per_event"] / rows["sdk"]["per_event"]
        results["cases"][name] = rows
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
