"""Fresh PostgreSQL databases for tests, on the machine's shared server.

Each test gets a database of its own: no other test uses it while it runs, and it starts
empty at the current schema. Creating a database costs 60-400 ms on the shared server and
dropping one 250-700 ms (the server fsyncs a copy of the catalog; both vary with the load of
the machine), so a database is created from a template migrated once per session, emptied
after its test (``DELETE``, a few ms; ids go on counting) and handed to the next one; a test
that changed the schema gets its database dropped instead. All are dropped at session end.
Names carry the pid of the pytest process, so a crashed run's leftovers are recognised and
dropped by the next one, and parallel runs never collide.

``$RXCONTEXT_TEST_PG`` is the maintenance URL (default
``postgresql://postgres@127.0.0.1:5432/postgres``). No server there: the tests skip, saying
so, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
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
        self._free: list[str] = []  # emptied databases, ready for the next test
        self._made: list[str] = []
        with psycopg.connect(url_for(admin_url, self.template), autocommit=True) as conn:
            self._tables = sorted(
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
            self._steps = conn.execute("SELECT COUNT(*) FROM rxcontext_migrations").fetchone()

    def _drop(self, name: str) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _drop_leftovers(self) -> None:
        rows = self.admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",)
        ).fetchall()
        for (name,) in rows:
            match = re.match(rf"{PREFIX}(\d+)_", name)
            if match and not _alive(int(match.group(1))):
                self._drop(name)

    def create(self) -> str:
        """An empty database at the current schema, used by no one else; returns its URL."""
        if self._free:
            return url_for(self.admin_url, self._free.pop())
        name = f"{PREFIX}{os.getpid()}_{next(_counter)}"
        self.admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self._made.append(name)
        return url_for(self.admin_url, name)

    def drop(self, url: str) -> None:
        """Done with a database from :meth:`create`: empty it for the next test, or drop it."""
        import psycopg

        name = url.rpartition("/")[2].partition("?")[0]
        self.admin.execute(  # whatever the test left open
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                tables = sorted(
                    r[0]
                    for r in conn.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    )
                )
                steps = conn.execute("SELECT COUNT(*) FROM rxcontext_migrations").fetchone()
                if tables != self._tables or steps != self._steps:
                    raise ValueError("the test changed the schema")
                with conn.transaction():  # DELETE: TRUNCATE's new files cost ~170 ms here
                    conn.execute("DELETE FROM contexts")  # everything else cascades
                    for table in tables:
                        if table not in ("rxcontext_migrations", "contexts"):
                            left = conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                            if left:
                                raise ValueError(f"{table} still has rows")
        except (psycopg.Error, ValueError):
            self._drop(name)
            self._made.remove(name)
            return
        self._free.append(name)

    def close(self) -> None:
        for name in self._made:
            self._drop(name)
        self._drop(self.template)
        self.admin.close()


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
