"""The fan-out's own benchmarks at toy size, so they cannot rot, against the shared Redis
under a prefix of the test's own: benchmarks/fanoutsend.py (what one send of the writer
costs, and packing) and benchmarks/watchside.py (a watch's CPU per live entry; it asserts
that every watch read every entry). No timing thresholds: the figures belong to
docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redistest

pytest.importorskip("redis")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


def test_fanoutsend_at_toy_size(shared: tuple[str, str]) -> None:
    pytest.importorskip("hiredis")
    url, prefix = shared
    toy = ["--replies", "3", "--sends", "5", "--rounds", "1", "--packs", "5"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fanoutsend.py"), *toy, "--url", url, "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    sent = re.search(r"per send of 3 replies x 1 chunk: (\d+) µs", out)
    assert sent and int(sent.group(1)) > 0, out
    packed = re.findall(r"redis-py's ([0-9.]+) µs, the fan-out's ([0-9.]+) µs", out)
    assert len(packed) == 2 and all(float(a) > 0 and float(b) > 0 for a, b in packed), out


def test_watchside_at_toy_size(shared: tuple[str, str]) -> None:
    spec = importlib.util.spec_from_file_location("watchside", BENCHMARKS / "watchside.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url, prefix = shared
    assert module.measure(url, prefix, streams=3, entries=5) > 0
