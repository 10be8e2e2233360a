"""SIGKILL of a process mid-stream: the database survives and holds a recent checkpoint.

A child process stores one complete reply, then streams a long scripted reply with
``checkpoint_every=INTERVAL`` into a file database and reports every chunk on its stdout:
its index, the time its middleware hook saw it and the time the subscriber got it. The
parent kills the child with SIGKILL once the reports show the stream has run for several
intervals, reads what the child managed to report, and checks:

* ``PRAGMA integrity_check`` is ok and the earlier reply is intact;
* the reply reads as interrupted for everyone (its process is gone) and holds exactly the
  first ``c`` chunks of the reply (a prefix), ``c`` no further than the last chunk the child
  reported delivered;
* it is recent: every chunk delivered more than ``INTERVAL`` (plus the time one write may
  take on a loaded machine) before the last delivery the child reported is in it — the
  timer writes whatever was delivered, whether or not chunks keep coming;
* the checkpoint resumes into one reply: prefix + continuation.

A second child streams some text and then pauses forever (a provider thinking, a stalled
connection): the parent waits until the database holds all of that text — written by the
timer with no further chunk — and only then kills it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, ReplyState
from rxcontext.providers import ScriptedModel
from rxcontext.store.base import ORPHANED

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

INTERVAL = 0.05
SLACK = 0.5  # one write (and a thread switch) on a loaded 2-core machine
PARTS = 100_000  # far more than the child will get through before it is killed


def part(i: int) -> str:
    return f"[{i}]"


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext import operators as rxops
    from rxcontext.providers import ScriptedModel

    path, mode, every, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    T = lambda s: Chunk(ChunkKind.TEXT, s)
    DONE = Chunk(ChunkKind.DONE, finish_reason="stop")
    long_reply = [T(f"[{i}]") for i in range(n)] + [DONE]
    model = ScriptedModel([[T("an earlier "), T("reply"), DONE], long_reply], delay=0.001)
    store = rxcontext.open(path)
    cw = ContextWindow(store, model, "crash", checkpoint_every=every)
    cw.add_prompt("first")
    cw.call()
    cw.add_prompt("second")
    out = sys.stdout
    out.write("ready\\n")
    out.flush()
    seen = {}

    def hook(chunk):
        seen["at"] = time.monotonic()

    def report(chunk, count=[0]):
        count[0] += 1
        out.write(f"{count[0]} {seen['at']!r} {time.monotonic()!r}\\n")
        out.flush()

    hooks = rxops.middleware(on_chunk=hook)
    if mode == "resume":
        model = ScriptedModel([[T("cut "), ConnectionError("cut")], long_reply[1:]], delay=0.001)
        cw.model = model
        cw.retry = None
        try:
            cw.call()
        except rxcontext.StreamInterrupted as e:
            cp_id = e.checkpoint.id
        cw.resume(cp_id, hooks).subscribe(report)
    elif mode == "pause":
        import threading
        never = threading.Event()

        def paused(request):
            yield from long_reply[:n]
            out.write("paused\\n")
            out.flush()
            never.wait()
            yield DONE

        model.iter_chunks = paused
        cw.stream(hooks).subscribe(report)
    elif mode == "sync":
        cw.stream(hooks).subscribe(report)
    else:
        async def main():
            async for chunk in cw.astream(hooks):
                report(chunk)
        asyncio.run(main())
    out.write("finished\\n")
    """
)


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


@pytest.mark.parametrize("intervals", [3, 6])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkill_mid_stream_leaves_a_sound_db_and_a_recent_checkpoint(tmp_path, mode, intervals):
    path = tmp_path / "crash.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode, str(INTERVAL), str(PARTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read() if child.stderr else ""
        reports: list[tuple[int, float, float]] = []
        for line in child.stdout:
            n, hooked, got = line.split()
            reports.append((int(n), float(hooked), float(got)))
            # Chunk j reached the persister after its hook ran: once that is INTERVAL past
            # the first delivery, a periodic checkpoint has been written (c >= 1).
            if reports[-1][1] - reports[0][2] >= intervals * INTERVAL:
                break
        else:  # pragma: no cover - the child ended on its own
            pytest.fail(f"the child stopped early: {child.stderr.read() if child.stderr else ''}")
        child.send_signal(signal.SIGKILL)
        # Whatever it reported before it died is still in the pipe.
        for line in child.stdout:
            if line.count(" ") == 2 and line.endswith("\n"):
                n, hooked, got = line.split()
                reports.append((int(n), float(hooked), float(got)))
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:  # pragma: no cover
            child.kill()
            child.wait(30)
        child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()

    check_database(path, reports)


def check_database(path: Path, reports: list[tuple[int, float, float]]) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    store = rxcontext.open(path)
    cw = ContextWindow(store, None, "crash")
    records = [(r.type, r.content) for r in cw.records()]
    assert records == [
        (RecordType.PROMPT, "first"),
        (RecordType.MODEL_RESP, "an earlier reply"),
        (RecordType.PROMPT, "second"),
    ]

    (cp,) = cw.checkpoints()
    assert cp.state is ReplyState.INTERRUPTED
    last_reported = reports[-1][0]
    c = cp.chunks
    assert 1 <= c <= last_reported + 1  # the chunk being handed over when killed may be in it
    assert cp.text == "".join(part(i) for i in range(c))  # a prefix, chunk-exact
    assert cp.error == ORPHANED  # the process never got to finish it

    # Recent: whatever was delivered well before the last delivery reported is in it.
    last_got = reports[-1][2]
    missing = [n for n, _, got in reports if n > c and got <= last_got - INTERVAL - SLACK]
    assert missing == [], f"delivered long before the kill but not checkpointed: {missing}"

    # And it resumes into one reply.
    cw.model = ScriptedModel([[T("<end>"), Chunk(ChunkKind.DONE, finish_reason="stop")]])
    joined = cw.resume_call(cp.id).text
    assert joined == cp.text + "<end>"
    assert [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP] == [
        "an earlier reply",
        joined,
    ]
    store.close()


def test_sigkill_during_a_resume_leaves_a_resumable_checkpoint(tmp_path):
    path = tmp_path / "crash.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "resume", str(INTERVAL), str(PARTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        first = None
        for line in child.stdout:
            got = float(line.split()[2])
            first = got if first is None else first
            if got - first >= 3 * INTERVAL:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:  # pragma: no cover
            child.kill()
            child.wait(30)
        child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = rxcontext.open(path)
    cw = ContextWindow(store, None, "crash")
    (cp,) = cw.checkpoints()
    assert cp.text.startswith("cut [1]")  # partial + a prefix of the continuation
    cw.model = ScriptedModel([[T("<end>"), Chunk(ChunkKind.DONE, finish_reason="stop")]])
    assert cw.resume_call(cp.id).text == cp.text + "<end>"
    store.close()


def test_a_pause_after_text_is_checkpointed_without_another_chunk(tmp_path):
    path = tmp_path / "pause.db"
    shown = 40
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "pause", "0.2", str(shown)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    expected = "".join(part(i) for i in range(shown))
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read() if child.stderr else ""
        lines = []
        for line in child.stdout:
            if line == "paused\n":
                break
            lines.append(line)
        assert len(lines) == shown
        # Nothing more arrives; the timer must write the paused reply on its own. Poll the
        # database (another process's writes have no other signal), bounded.
        deadline = 50
        text = ""
        for _ in range(deadline * 20):
            with sqlite3.connect(path) as db:
                rows = db.execute(
                    "SELECT k.text || COALESCE(group_concat(p.text, ''), '') FROM checkpoints k"
                    " LEFT JOIN checkpoint_parts p ON p.checkpoint_id = k.id"
                    " WHERE k.state = 'streaming' GROUP BY k.id"
                ).fetchall()
            text = rows[0][0] if rows else ""
            if text == expected:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.05)  # a bounded wait that also notices the child dying
            assert child.returncode is None, child.stderr.read() if child.stderr else ""
        assert text == expected, "the paused reply's text was never written"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:  # pragma: no cover
            child.kill()
            child.wait(30)
        child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    store = rxcontext.open(path)
    (cp,) = ContextWindow(store, None, "crash").checkpoints()
    assert cp.text == expected and cp.chunks == shown
    store.close()
