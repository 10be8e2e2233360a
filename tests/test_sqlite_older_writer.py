"""A process of rxcontext 0.1.0 still running after a newer rxcontext upgraded its SQLite
file: 0.1.0 knows no positions, so a record it inserted landed at the column default,
position 0, before the whole conversation. Its writes are refused instead."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import rxcontext
from rxcontext import ContextWindow

RELEASE_0_1_0 = Path(__file__).parent / "data" / "rxcontext-0.1.0.db"

# rxcontext 0.1.0's own statements (rxcontext/store/sqlite.py at 0bbf9c7), on a connection
# opened before the upgrade and kept across it, as that process's is. It writes when it reads
# a line, and prints what happened.
OLD_PROCESS = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    (cid,) = db.execute("SELECT id FROM contexts WHERE name = 'old'").fetchone()
    record = (
        "INSERT INTO records (context_id, ts, source, content, live, est_tokens, response_id,"
        " streamed, tool_call_id, tool_name, metadata) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    )
    checkpoint = (
        "INSERT INTO checkpoints (text, thinking, tool_calls, usage, error, chunks,"
        " response_id, metadata, context_id, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    )
    writes = [
        (record, (cid, "2026-11-25T00:00:00+00:00", 0, "old prompt", 1, 3, None, 0, None,
                  None, None)),
        (checkpoint, ("old partial", "", "[]", None, None, 1, None, None, cid,
                      "2026-11-25T00:00:01+00:00", "2026-11-25T00:00:01+00:00")),
    ]
    print("ready", flush=True)
    sys.stdin.readline()
    for sql, args in writes:
        try:
            db.execute(sql, args)
            print("written", flush=True)
        except sqlite3.Error as exc:
            print(f"{type(exc).__name__}: {exc}", flush=True)
    db.close()
    """
)


def test_an_older_process_still_running_cannot_write_after_the_upgrade(tmp_path: Path):
    path = tmp_path / "old.db"
    shutil.copy(RELEASE_0_1_0, path)
    old = subprocess.Popen(
        [sys.executable, "-c", OLD_PROCESS, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert old.stdout is not None and old.stdin is not None
    try:
        assert old.stdout.readline() == "ready\n"
        store = rxcontext.open(path)  # upgrades the file under the running 0.1.0 process
        cw = ContextWindow(store, None, "old")
        before = [(r.pos, r.content) for r in cw.records()]
        checkpoints = [c.id for c in store.checkpoints(cw.context_id, include_resolved=True)]
        old.stdin.write("go\n")
        old.stdin.flush()
        results = [old.stdout.readline().strip() for _ in range(2)]
    finally:
        old.stdin.close()
        old.wait(60)
    assert [(r.pos, r.content) for r in cw.records()] == before
    assert [c.id for c in store.checkpoints(cw.context_id, include_resolved=True)] == checkpoints
    assert len(results) == 2
    for result in results:
        assert result.startswith("IntegrityError: "), results
        assert "older than this database" in result
    cw.add_prompt("new prompt")  # this version's writes go on
    assert [r.content for r in cw.records()][-2:] == ["Last question", "new prompt"]
    store.close()
