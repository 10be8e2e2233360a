"""The watching-side benchmark (benchmarks/watchside.py) at toy size, so it cannot rot: every
watch reads every entry (the benchmark asserts it) under a prefix of the test's own. No
timing thresholds: the figures belong to docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import redistest

pytest.importorskip("redis")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "watchside.py"


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


def test_toy_run(shared: tuple[str, str]) -> None:
    spec = importlib.util.spec_from_file_location("watchside", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url, prefix = shared
    assert module.measure(url, prefix, streams=3, entries=5) > 0
