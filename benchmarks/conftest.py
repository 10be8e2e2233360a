"""Shared fixtures of the benchmark suite and the ratio table printed at the end of a run.

Run with ``python -m pytest benchmarks`` (see docs/benchmarks.md). Sizes come from the
environment: ``RXCONTEXT_BENCH_EVENTS`` (events per provider stream, default 2000) and
``RXCONTEXT_BENCH_ROUNDS`` (timed rounds per stream benchmark, default 15).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
from _tables import render

import rxcontext


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Benchmarks run in one process: the unit tests' ``-n 4`` (setup.cfg) would spread
    them over workers, where pytest-benchmark times nothing."""
    if getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0
        config.option.dist = "no"


EVENTS = int(os.environ.get("RXCONTEXT_BENCH_EVENTS", "2000"))
ROUNDS = int(os.environ.get("RXCONTEXT_BENCH_ROUNDS", "15"))

METRICS: dict[str, dict[str, Any]] = {}
"""Results that are not one function's timing (latency, CPU, memory), by section and name."""


def record(section: str, name: str, value: Any) -> None:
    METRICS.setdefault(section, {})[name] = value


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rxcontext.SQLiteStore]:
    """A file-backed store (WAL, durable commits) like a user's."""
    with rxcontext.open(tmp_path_factory.mktemp("db") / "bench.db") as s:
        yield s


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop per module; async benchmarks run their coroutine on it."""
    ev = asyncio.new_event_loop()
    yield ev
    ev.close()


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict) -> None:
    output_json["rxcontext_metrics"] = METRICS


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)
    benches = []
    for bench in getattr(session, "benchmarks", None) or []:
        try:
            benches.append(bench.as_dict(include_data=False))
        except Exception:  # a benchmark that errored has no stats
            continue
    if not benches and not METRICS:
        return
    terminalreporter.write_sep("=", "rxcontext: ratios of this run (medians)")
    terminalreporter.write_line(render(benches, METRICS))
