"""Fresh PostgreSQL databases for tests, on the machine's shared server.

Each test gets a database of its own, created from a template migrated once per session
(``CREATE DATABASE … TEMPLATE``) and dropped when the test ends, so runs never see each
other's rows. Creating one costs 150-400 ms here (the server writes and fsyncs a copy of the
template's catalog), so two background threads create them ahead of need and drop them
after use: a test waits only when the tests outrun the server. Names carry the pid of the
pytest process, so a crashed run's leftovers are recognised and dropped by the next one, and
parallel runs never collide.

``$RXCONTEXT_TEST_PG`` is the maintenance URL (default
``postgresql://postgres@127.0.0.1:5432/postgres``). No server there: the tests skip, saying
so, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

ADMIN_URL = os.environ.get("RXCONTEXT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = "rxct_"
_counter = itertools.count()


def url_for(admin_url: str, dbname: str) -> str:
    """``admin_url`` (a ``postgresql://`` URL) with its database replaced by ``dbname``."""
    base, _, query = admin_url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{dbname}" + (f"?{query}" if query else "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class PgServer:
    """The shared server seen from one pytest process: a template and fresh databases."""

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.admin_url = admin_url
        self.admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
        self._drop_leftovers()
        self.template = f"{PREFIX}{os.getpid()}_template"
        self._drop(self.template)
        self.admin.execute(f'CREATE DATABASE "{self.template}"')
        from rxcontext.store.postgres import PostgresStore

        store = PostgresStore(url_for(admin_url, self.template), pool_size=1)
        store.close()
        self._local = threading.local()
        self._workers = ThreadPoolExecutor(2, thread_name_prefix="pg-databases")
        self._ready: deque[Future[str]] = deque()
        self._lock = threading.Lock()
        self._dropping: list[Future[None]] = []

    def _conn(self) -> Any:
        """This thread's own maintenance connection."""
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = psycopg.connect(
                self.admin_url, autocommit=True, connect_timeout=3
            )
        return conn

    def _drop(self, name: str) -> None:
        conn = self.admin if threading.current_thread() is threading.main_thread() else None
        (conn or self._conn()).execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _drop_leftovers(self) -> None:
        rows = self.admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",)
        ).fetchall()
        for (name,) in rows:
            match = re.match(rf"{PREFIX}(\d+)_", name)
            if match and not _alive(int(match.group(1))):
                self._drop(name)

    def _create(self) -> str:
        name = f"{PREFIX}{os.getpid()}_{next(_counter)}"
        self._conn().execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return url_for(self.admin_url, name)

    def create(self) -> str:
        """A new database migrated to the current schema; returns its URL."""
        with self._lock:
            while len(self._ready) < 3:
                self._ready.append(self._workers.submit(self._create))
            ready = self._ready.popleft()
        return ready.result()

    def drop(self, url: str) -> None:
        """Drop a database from :meth:`create` (in the background)."""
        name = url.rpartition("/")[2].partition("?")[0]
        self._dropping.append(self._workers.submit(self._drop, name))

    def close(self) -> None:
        for ready in self._ready:
            self._dropping.append(self._workers.submit(self._drop_url, ready))
        for future in self._dropping:
            future.result()
        self._workers.shutdown()
        self._drop(self.template)
        self.admin.close()

    def _drop_url(self, ready: Future[str]) -> None:
        url = ready.result()
        self._drop(url.rpartition("/")[2].partition("?")[0])


def unavailable(reason: str) -> Any:
    """Skip (saying why), or fail under CI, where the PostgreSQL tests must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the PostgreSQL tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def start_server() -> PgServer | str:
    """The server, or why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        return PgServer(ADMIN_URL)
    except Exception as exc:  # any failure means "no usable server"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"no server answers at {ADMIN_URL} ({first}); set $RXCONTEXT_TEST_PG"


def fresh_database(server: PgServer) -> Iterator[str]:
    url = server.create()
    try:
        yield url
    finally:
        server.drop(url)
