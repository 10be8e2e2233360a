"""Fixtures shared by the test files: PostgreSQL databases (see tests/pgtest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pgtest
import pytest


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
