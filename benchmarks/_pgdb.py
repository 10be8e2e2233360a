"""A PostgreSQL database of a benchmark run's own: created on the server of a maintenance
URL, dropped afterwards (the shared server is never filled)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable


def database(admin_url: str, prefix: str = "rxcbench") -> tuple[str, Callable[[], None]]:
    """A new empty database on ``admin_url``'s server: its URL (``admin_url``'s, with the
    database replaced, query kept) and the call that drops it."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    admin.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return url, drop
