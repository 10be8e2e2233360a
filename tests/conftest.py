"""Suite-wide settings and fixtures.

A Hypothesis profile for a loaded two-core machine: the unit tests share two cores with
other work. Hypothesis's deadline (200 ms per example) and its "input generation too slow"
health check measure the machine's load as much as the code, so they are off; the number of
examples and the shrinking stay as they are, and a failure prints the blob that reproduces
it. ``HYPOTHESIS_PROFILE=ci`` also derandomizes, so that a CI run explores the same examples
every time.

Bytecode: the suite imports the three SDKs in every xdist worker and in ~100 child
processes (examples, the CLI in a terminal, crash and signal tests). With
``PYTHONDONTWRITEBYTECODE`` set (some machines set it for everything), each of them compiles
the SDKs' sources again and pytest rewrites every test module again: measured here, 14 s of
collection per worker and 2m50s for the suite, against ~2m with bytecode cached. The suite
therefore writes and reads bytecode (in ``__pycache__`` folders, which git ignores) for
itself and its children, whatever the environment says.

Fixtures: PostgreSQL databases (see tests/pgtest.py), and stores of either kind for tests
that run on both.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pgtest
import pytest
import redistest
import stores
from hypothesis import HealthCheck, settings

import rxcontext

sys.dont_write_bytecode = False  # before the test modules (and the SDKs) are imported
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for xdist workers and child processes

settings.register_profile(
    "rxcontext",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("ci", parent=settings.get_profile("rxcontext"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rxcontext"))

try:  # psycopg_pool draws its connections' expiry jitter from the global ``random`` on its
    # worker threads; Hypothesis warns when the global state moves during one of its draws
    # (a pool growing in the background of a test did). The pools get a Random of their own.
    import psycopg_pool.base
except ImportError:  # the postgres extra is not installed: its tests skip
    pass
else:
    psycopg_pool.base.random = random.Random().random


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgtest.PgServer]:
    """The shared PostgreSQL server with this session's template; skips (fails on CI) if none."""
    server = pgtest.start_server()
    if isinstance(server, str):
        pgtest.unavailable(server)
        return
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: pgtest.PgServer) -> Iterator[str]:
    """The URL of a new, migrated database of this test's own, dropped afterwards."""
    yield from pgtest.fresh_database(pg_server)


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database several stores and processes can open: a SQLite file path, or the URL
    of a PostgreSQL database of this test's own; tests that use it run once on each."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "shared.db")


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store a test runs on; tests that use it run once on each."""
    return str(request.param)


def _opener(request: pytest.FixtureRequest, kind: str) -> Iterator[Callable[..., Any]]:
    url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else ":memory:"
    opened: list[Any] = []

    def make(**options: Any) -> Any:
        if kind == "postgres" and not options and opened and not opened[-1].closed:
            store = opened[-1]  # one pool per test (a hypothesis test opens one per example)
        else:
            if kind == "postgres" and os.environ.get("RXCONTEXT_TEST_PG_PREPARED"):
                options = {"prepared_statements": True, **options}  # the suite, prepared
            store = rxcontext.open(url, **options)
            opened.append(store)
        if kind == "postgres":
            stores.scalar(store, "WITH gone AS (DELETE FROM contexts RETURNING 1) SELECT 1")
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def make_store(request: pytest.FixtureRequest, store_kind: str) -> Iterator[Callable[..., Any]]:
    """Opens stores of this test's kind: a private in-memory SQLite database per call, or
    this test's own PostgreSQL database, emptied first (the same store object again while it
    is open). All are closed after the test."""
    yield from _opener(request, store_kind)


@pytest.fixture
def both_stores(make_store: Callable[..., Any]) -> Iterator[None]:
    """Run the test once per store: the helpers' :func:`stores.open_store` opens this one."""
    stores.use(make_store)
    try:
        yield
    finally:
        stores.use(None)


@pytest.fixture
def on_postgres(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the test on PostgreSQL only: its helpers' :func:`stores.open_store` opens it."""
    for make in _opener(request, "postgres"):
        stores.use(make)
        try:
            yield
        finally:
            stores.use(None)


# -- order: the long modules first, one group per xdist worker ---------------------------------

# Modules whose tests wait on browsers, servers and child processes, with their rough wall
# time (seconds, a quiet two-core machine). xdist's worksteal hands each worker a contiguous
# slice of the collection and steals from the slices' ends, so a long test that happens to
# sit at the end of a slice starts last and keeps the whole run waiting. These modules go to
# the front of the slices instead, spread so that each worker starts with a similar share,
# and each module stays whole in one worker (its module-scoped browser, servers and
# databases are set up once, not once per worker).
_LONG_MODULES = {
    "test_webchat_workers.py": 40,
    "test_webchat.py": 40,
    "test_examples.py": 35,
    "test_cli_chat.py": 20,
    "test_cli_tables.py": 15,
    "test_stop_hint.py": 15,
    "test_takeover.py": 12,
    "test_pg_faults.py": 12,
    "test_signals.py": 10,
    "test_watch_redis.py": 10,
    "test_leaks.py": 9,
    "test_watch_partition.py": 6,
    "test_hot_context.py": 6,
    "test_bench_scaleout.py": 5,
    "test_kill_watched.py": 3,
}


@pytest.hookimpl(trylast=True)  # after -m has deselected (the slices are of what runs)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the long modules at the front of each xdist worker's slice (see above); soaks and
    fault matrices (their own markers, not in the default run) get no time limit (setup.cfg
    gives every other test 300 s)."""
    for item in items:
        if item.get_closest_marker("soak") or item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.timeout(0))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        return
    by_module: dict[str, list[pytest.Item]] = {}
    rest: list[pytest.Item] = []
    for item in items:
        name = item.path.name
        if name in _LONG_MODULES:
            by_module.setdefault(name, []).append(item)
        else:
            rest.append(item)
    groups: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0] * workers
    for name in sorted(by_module, key=lambda n: (-_LONG_MODULES[n], n)):  # longest first
        least = load.index(min(load))
        groups[least].extend(by_module[name])
        load[least] += _LONG_MODULES[name]
    ordered: list[pytest.Item] = []
    total = len(items)
    for i, group in enumerate(groups):
        ordered.extend(group)
        fill = max(0, (i + 1) * total // workers - len(ordered))
        ordered.extend(rest[:fill])
        del rest[:fill]
    ordered.extend(rest)
    assert len(ordered) == total
    items[:] = ordered


@pytest.fixture
def private() -> Iterator[redistest.PrivateRedis]:
    """A ``redis-server`` of the test's own on a random port (tests/redistest.py), for tests
    that stop, pause or empty it."""
    server = redistest.PrivateRedis()
    yield server
    server.close()
