"""Watching a reply that another process generates (Redis fan-out, one SQLite file), and
what its watchers see when that process is killed mid-reply."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redistest
from watching import WAIT, Watcher, stored_text

import rxcontext
from rxcontext import ContextWindow, ReplyState, StreamInterrupted

pytest.importorskip("redis")

OWNER = textwrap.dedent(
    """
    import sys, threading
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow, operators as rxops
    from rxcontext.fanout.redis import RedisFanout
    from rxcontext.providers import ScriptedModel

    db, url, prefix, hold = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(db, fanout=fanout)
    words = [Chunk(ChunkKind.TEXT, f"w{i} ") for i in range(30)]
    model = ScriptedModel([[*words, Chunk(ChunkKind.DONE, finish_reason="stop")]])
    every = None if hold >= 0 else 1.0  # a held owner writes no checkpoint: it dies with it
    cw = ContextWindow(store, model, context="proc", retry=None, checkpoint_every=every)
    seen = [0]

    def on_chunk(_):
        if seen[0] == 0:
            print("BEGUN", flush=True)
            sys.stdin.readline()  # the watcher is in place
        if seen[0] == hold:
            print("HELD", flush=True)
            threading.Event().wait()  # until killed
        seen[0] += 1

    cw.stream(rxops.middleware(on_chunk=on_chunk), reply_id="proc-1").subscribe(
        on_error=lambda e: print("ERROR", e, flush=True)
    )
    fanout.close()
    print("DONE", flush=True)
    """
)


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


def _owner(db: Path, url: str, prefix: str, hold: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", OWNER, str(db), url, prefix, str(hold)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _expect(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == word, line


def _watcher(db: Path, url: str, prefix: str) -> tuple[Watcher, ContextWindow]:
    from rxcontext.fanout.redis import RedisFanout

    store = rxcontext.open(db, fanout=RedisFanout(url, prefix=prefix))
    cw = ContextWindow(store, None, context="proc")
    return Watcher(cw, "proc-1", poll=0.05).start(), cw


def test_a_reply_generated_by_another_process_is_watched_live(
    tmp_path: Path, shared: tuple[str, str]
) -> None:
    url, prefix = shared
    db = tmp_path / "shared.db"
    ContextWindow(rxcontext.open(db), None, context="proc").add_prompt("Count.")
    proc = _owner(db, url, prefix, -1)
    try:
        _expect(proc, "BEGUN")
        watcher, cw = _watcher(db, url, prefix)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _expect(proc, "DONE")
        watcher.join()
    finally:
        proc.kill()
        proc.wait()
    assert watcher.completed, watcher.error
    assert watcher.text == stored_text(cw, "proc-1") == "".join(f"w{i} " for i in range(30))


def test_watchers_of_a_killed_owner_end_with_its_checkpoint(
    tmp_path: Path, shared: tuple[str, str]
) -> None:
    url, prefix = shared
    db = tmp_path / "shared.db"
    ContextWindow(rxcontext.open(db), None, context="proc").add_prompt("Count.")
    proc = _owner(db, url, prefix, 12)
    try:
        _expect(proc, "BEGUN")
        watcher, cw = _watcher(db, url, prefix)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _expect(proc, "HELD")
        assert watcher.wait_for("".join(f"w{i} " for i in range(12))), watcher.text
        os.kill(proc.pid, signal.SIGKILL)  # mid-reply, its last checkpoint long behind
        proc.wait(WAIT)
        watcher.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert isinstance(watcher.error, StreamInterrupted)
    checkpoint = watcher.error.checkpoint
    assert checkpoint.state is ReplyState.INTERRUPTED and checkpoint.reply_id == "proc-1"
    # It had shown 12 words live; the store kept none of them: it ends with what was stored.
    assert any(c.kind.value == "rewind" for c in watcher.chunks)
    assert watcher.text == checkpoint.text == ""
    assert cw.checkpoints()[0].reply_id == "proc-1"
