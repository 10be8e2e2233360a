"""A second SIGTERM at its default while a blocking reply's store write waits for a lock.

The blocking API holds SIGTERM at its default as it holds Ctrl-C, and a store write holds
signals for its length; a second SIGTERM meanwhile kills at once, not once the write ends
(``tests/test_signals_chained.py`` has it for a write stood in for in Python code). Here
the wait is real: PostgreSQL, whose lock waits let Python's signal handlers run (psycopg
waits for the server in Python), kills at once. SQLite's lock wait is C code (its
``busy_timeout``): a Python handler runs only once it returns, so there a second SIGTERM
kills only when the write gets the lock or gives up (``StoreBusy`` after ``busy_timeout``),
as docs/guarantees.md says; nothing is pinned for it here (it would take the wait's length).

The child runs in a process of its own, real signals; each wait is bounded.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import psycopg
import pytest
from test_signals import _lines, _until

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="needs POSIX SIGTERM"
)
BOUND = 30.0

# The first SIGTERM lands in on_next (the program's code): the reply ends, and its driver
# writes the checkpoint of what was delivered, which waits for the context's row lock.
WAITING_WRITE = textwrap.dedent(
    """
    import sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    store = rxcontext.open(sys.argv[1])
    chunks = [Chunk(ChunkKind.TEXT, f"<{i}>") for i in range(5)]
    model = ScriptedModel([[*chunks, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    cw = ContextWindow(store, model, "sig", retry=None, checkpoint_every=None)
    cw.add_prompt("q")

    def on_next(c):
        if c.text:
            print("d", c.text, flush=True)
        if c.text == "<2>":
            print("WAIT", flush=True)
            sys.stdin.readline()  # the first SIGTERM lands here

    cw.stream().subscribe(on_next)
    print("SURVIVED", flush=True)
    """
)


def _waits_for_the_context(conn: psycopg.Connection) -> bool:
    """Whether another session of this database waits for a lock on a context's row (the
    final write: periodic writes and lease renewals do not lock the context)."""
    return (
        conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            " AND query ILIKE '%contexts%'"
        ).fetchone()
        is not None
    )


def test_a_second_sigterm_during_a_postgres_lock_wait_kills_at_once(pg_url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WAITING_WRITE, pg_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        next_line = _lines(child)
        _until(next_line, "WAIT")
        with psycopg.connect(pg_url) as hot, psycopg.connect(pg_url, autocommit=True) as watch:
            hot.execute("SELECT 1 FROM contexts FOR NO KEY UPDATE")  # held to the end
            child.send_signal(signal.SIGTERM)  # the first: the reply ends, then saves
            deadline = time.monotonic() + BOUND
            while not _waits_for_the_context(watch):
                assert child.poll() is None, child.stderr.read()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the final write never waited for the lock"
                threading.Event().wait(0.01)
            child.send_signal(signal.SIGTERM)  # the second, while the write waits
            try:
                child.wait(BOUND)  # the lock is still held: only the signal can end it
            except subprocess.TimeoutExpired:
                pytest.fail("a second SIGTERM during a lock wait did not kill at once")
            hot.rollback()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGTERM, child.stderr.read()  # type: ignore[union-attr]
    assert next_line() is None  # nothing ran on after it
