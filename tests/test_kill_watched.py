"""An owner process SIGKILLed at a random point of a reply while a watcher (this process)
follows it live through Redis, then resumed by racing processes.

Each trial (seeded): the owner streams 300 chunks (3 ms apart, checkpoints every 50 ms)
into a SQLite file or this test's PostgreSQL database with the Redis fan-out (the shared
server under a key prefix of the test's own); once the watcher has shown a random number
of them the owner is SIGKILLed, wherever it is: between chunks, inside a checkpoint
write, a Redis flush. The watcher ends with ``StreamInterrupted`` and exactly the stored
checkpoint's text (it goes back where it had shown more); another process and this one
race to resume the reply: exactly one wins, the reply is stored once (the checkpoint plus
the winner's continuation), and a new watcher of it completes with that record.

One trial in the default run (SQLite file); ``-m soak`` runs ``RX_KILL_TRIALS``
(default 20) per store.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redistest
from watching import WAIT, Watcher, stored_text

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, ReplyState, StreamInterrupted
from rxcontext.providers import ScriptedModel

pytest.importorskip("redis")
from rxcontext.fanout.redis import RedisFanout

N = 300
SOAK_TRIALS = int(os.environ.get("RX_KILL_TRIALS", "20"))

OWNER = textwrap.dedent(
    f"""
    import sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow, operators as rxops
    from rxcontext.fanout.redis import RedisFanout
    from rxcontext.providers import ScriptedModel

    target, url, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    fanout = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(target, fanout=fanout, lease_ttl=1.0)
    words = [Chunk(ChunkKind.TEXT, f"w{{i}} ") for i in range({N})]
    model = ScriptedModel([[*words, Chunk(ChunkKind.DONE, finish_reason="stop")]], delay=0.003)
    cw = ContextWindow(store, model, "killed", retry=None, checkpoint_every=0.05)
    first = [True]

    def on_chunk(_):
        if first[0]:
            first[0] = False
            print("begun", flush=True)
            sys.stdin.readline()  # the watcher is in place

    cw.stream(rxops.middleware(on_chunk=on_chunk), reply_id="r").subscribe(
        on_error=lambda e: print("error", type(e).__name__, flush=True)
    )
    print("done", flush=True)
    """
)

RESUMER = textwrap.dedent(
    """
    import sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    target = sys.argv[1]
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "+them"), Chunk(ChunkKind.DONE)]])
    store = rxcontext.open(target, lease_ttl=1.0)
    cw = ContextWindow(store, model, "killed")
    print("ready", flush=True)
    cp_id = int(sys.stdin.readline())  # the go
    try:
        cw.resume_call(cp_id)
        print("won", flush=True)
    except rxcontext.RxContextError as e:
        print("lost", type(e).__name__, flush=True)
    store.close()
    """
)


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


def _spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _close(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(WAIT)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def kill_while_watched(target: str, url: str, prefix: str, seed: int) -> str:
    """One trial; what happened, for the soak's log."""
    rng = random.Random(seed)
    kill_after = rng.randint(1, N * 4 // 5)  # chunks the watcher has shown
    store = rxcontext.open(target, fanout=RedisFanout(url, prefix=prefix), lease_ttl=1.0)
    cw = ContextWindow(store, None, "killed")
    cw.add_prompt("Count.")
    owner = _spawn(OWNER, target, url, prefix)
    resumer: subprocess.Popen[str] | None = None
    try:
        assert _line(owner) == "begun"
        watcher = Watcher(cw, "r", poll=0.05, wait=0.2)
        seen = threading.Event()
        watcher.on_chunk = lambda _: len(watcher.chunks) >= kill_after and seen.set()
        watcher.start()
        resumer = _spawn(RESUMER, target)  # started early: its imports overlap the stream
        _send(owner, "go")
        assert seen.wait(WAIT), watcher.text
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(WAIT)
        watcher.join()
        # The watcher ends with exactly what is stored.
        assert isinstance(watcher.error, StreamInterrupted), watcher.error
        cp = watcher.error.checkpoint
        row = store.find_reply("r")
        assert row is not None and row.state is ReplyState.INTERRUPTED
        assert watcher.text == cp.text == row.text
        assert "".join(f"w{i} " for i in range(N)).startswith(cp.text)
        rewound = any(c.kind is ChunkKind.REWIND for c in watcher.chunks)
        # Another process and this one race to resume it: one wins, it is stored once.
        assert _line(resumer) == "ready"
        _send(resumer, str(cp.id))
        cw.model = ScriptedModel([[Chunk(ChunkKind.TEXT, "+us"), Chunk(ChunkKind.DONE)]])
        try:
            cw.resume_call(cp.id)
            mine = "won"
        except rxcontext.RxContextError as error:
            mine = f"lost {type(error).__name__}"
        theirs = _line(resumer)
        outcomes = sorted([mine, theirs])
        assert outcomes[0].startswith("lost") and outcomes[1] == "won", outcomes
        tail = "+us" if mine == "won" else "+them"
        assert stored_text(cw, "r") == cp.text + tail
        assert cw.checkpoints() == [] and cw.active_replies() == []
        late = Watcher(cw, "r").start().join()
        assert late.completed and late.text == cp.text + tail
        return (
            f"killed after {kill_after} shown, checkpoint at {cp.text.count(' ')} words,"
            f" rewound={rewound}, resumed by {'us' if mine == 'won' else 'them'} ({outcomes[0]})"
        )
    finally:
        _close(owner)
        if resumer is not None:
            _close(resumer)
        store.close()


def test_an_owner_killed_at_a_random_chunk_while_watched(
    tmp_path: Path, shared: tuple[str, str]
) -> None:
    print(kill_while_watched(str(tmp_path / "shared.db"), *shared, seed=1))


@pytest.mark.soak
@pytest.mark.parametrize("trial", range(SOAK_TRIALS))
def test_owners_killed_at_random_chunks_while_watched_soak(
    target: str, shared: tuple[str, str], trial: int
) -> None:
    print(f"trial {trial}: {kill_while_watched(target, *shared, seed=100 + trial)}")
