"""What a PostgreSQL store sends, counted from libpq's own protocol trace (``PQtrace``).

A store opened with ``pool_size=1`` has one connection; :func:`traced` records the messages
on it while its block runs. A *round trip* is one wait for the server: a run of messages the
client sent followed by the server's answer. Under load each one is a wait for the server
and for the process's GIL, so the hot writes are pinned by how many they make.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from psycopg import pq

_SENT_SQL = re.compile(r'^F\t\d+\t(?:Parse\t "" |Query\t )"(.*)"')


@dataclass
class Trace:
    round_trips: int = 0
    statements: list[str] = field(default_factory=list)
    """The SQL sent, in order (``BEGIN`` and ``COMMIT`` included)."""

    def read(self, text: str) -> None:
        sending = False
        for line in text.splitlines():
            if line.startswith("F\t"):
                sending = True
                found = _SENT_SQL.match(line)
                if found:
                    self.statements.append(found.group(1))
            elif line.startswith("B\t") and sending:
                sending = False
                self.round_trips += 1


@contextlib.contextmanager
def traced(store: Any) -> Iterator[Trace]:
    """Trace ``store``'s one pooled connection while the block runs."""
    pool = store._runner.pool()
    assert pool.max_size == 1, "open the store with pool_size=1"
    with pool.connection() as conn:
        pgconn = conn.pgconn
    trace = Trace()
    with tempfile.TemporaryFile() as f:
        pgconn.trace(f.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield trace
        finally:
            pgconn.untrace()
            f.seek(0)
            trace.read(f.read().decode("utf-8", "replace"))
