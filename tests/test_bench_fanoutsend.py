"""The fan-out send benchmark (benchmarks/fanoutsend.py) at toy scale, so it cannot rot: it
runs against the shared Redis under a prefix of the test's own and prints its figures. No
timing thresholds: the figures belong to docs/benchmarks.md."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redistest

pytest.importorskip("hiredis")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fanoutsend.py"


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


def test_toy_run(shared: tuple[str, str]) -> None:
    url, prefix = shared
    toy = ["--replies", "3", "--sends", "5", "--rounds", "1", "--packs", "5"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *toy, "--url", url, "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    sent = re.search(r"per send of 3 replies x 1 chunk: (\d+) µs", out)
    assert sent and int(sent.group(1)) > 0, out
    packed = re.findall(r"redis-py's ([0-9.]+) µs, the fan-out's ([0-9.]+) µs", out)
    assert len(packed) == 2 and all(float(a) > 0 and float(b) > 0 for a, b in packed), out
