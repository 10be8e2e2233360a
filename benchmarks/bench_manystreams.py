"""1,000 and 5,000 concurrent asyncio streams × 200 events, default checkpoints on, each
case in a fresh process (benchmarks/manystreams.py has the method). Targets: CPU ≤ 1.10×
the same streams one at a time; p99 of a 1 ms ticker's lateness from store writes ≤ 5 ms
(paced streams, checkpoints on against off). ``RXCONTEXT_BENCH_MANY`` (default
"1000,5000") chooses the stream counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import record

COUNTS = [int(s) for s in os.environ.get("RXCONTEXT_BENCH_MANY", "1000,5000").split(",")]
SCRIPT = Path(__file__).resolve().parent / "manystreams.py"


def measure(streams: int, mode: str, every: float) -> dict[str, Any]:
    args = ["--streams", str(streams), "--mode", mode, "--every", str(every)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("mode", "every"), [("cpu", 1.0), ("cpu", 0.0), ("paced", 1.0), ("paced", 0.0)]
)
@pytest.mark.parametrize("streams", COUNTS)
def bench_many_streams(benchmark: Any, streams: int, mode: str, every: float) -> None:
    benchmark.group = "many streams"
    result = benchmark.pedantic(lambda: measure(streams, mode, every), rounds=1, iterations=1)
    assert result["intact"]
    record("many_streams", f"{streams} {mode} checkpoint_every={every or None}", result)
