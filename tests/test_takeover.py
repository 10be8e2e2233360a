"""Takeover and stop across real processes, on a SQLite file and on PostgreSQL.

A child process ("worker A") streams a reply with a short ``lease_ttl``: it delivers a few
chunks, says ``paused`` and then waits for a line on its stdin before it sends the rest
(a model thinking in silence). The parent is "worker B" (other processes join it for the
claim race). Synchronisation is explicit: lines on the child's stdout/stdin, and
``waitpid(WUNTRACED)`` for SIGSTOP; the only wait on time is for a lease to run out, which
is the thing under test, bounded by ``WAIT``.

* SIGKILL: the reply reads ``INTERRUPTED`` for worker B (and its stats count it open), and
  of three processes released at once to resume it exactly one wins; the stored reply is
  the checkpoint plus the winner's continuation, once.
* SIGSTOP past the lease (a zombie; ``lease_ttl`` = 0.5 s there): B sees the reply
  ``INTERRUPTED`` no later than ``lease_ttl`` after A stopped (A's last lease, by the
  store's clock, ends by then), claims and completes it; A, continued and let finish, gets
  ``OwnershipLost``: its commit is refused, its checkpoint writes change nothing, B's
  record stands alone. Had nobody claimed it, A gives the reply up on waking (it does not
  revive a lease others saw run out): interrupted, with what A delivered, resumable.
* ``cw.stop`` from B: A's subscriber gets ``StreamInterrupted`` caused by ``ReplyStopped``
  and the stored checkpoint is exactly the text A delivered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import pytest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, ReplyState
from rxcontext.providers import ScriptedModel
from tests.stores import scalar

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGKILL/SIGSTOP (POSIX)"),
    pytest.mark.slow,  # seconds of killed and stopped processes: a step of its own (setup.cfg)
]

TTL = 1.0
PAUSE_TTL = 0.5  # the SIGSTOP tests wait for this lease to run out
# The test's own resume: a lease the test process renews with room to spare (a 0.5 s one
# ran out once in ~10 loaded runs, the resume fencing itself with OwnershipLost).
RESUMER_TTL = 10.0
WAIT = 20.0
BEFORE = 5  # chunks worker A delivers before it pauses

WORKER = textwrap.dedent(
    """
    import sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    target, rid, ttl, before = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    T = lambda s: Chunk(ChunkKind.TEXT, s)
    out = sys.stdout

    def say(line):
        out.write(line + "\\n")
        out.flush()

    class Pausing(ScriptedModel):
        def iter_chunks(self, request):
            for i in range(before):
                yield T(f"[{i}]")
            say("paused")
            sys.stdin.readline()
            yield T("[late]")
            yield Chunk(ChunkKind.DONE, finish_reason="stop")

    store = rxcontext.open(target, lease_ttl=ttl)
    cw = ContextWindow(store, Pausing([[]]), "takeover", checkpoint_every=0.05)

    def on_error(e):
        cause = type(e.__cause__).__name__ if e.__cause__ is not None else "-"
        text = getattr(getattr(e, "checkpoint", None), "text", "-")
        say(f"error {type(e).__name__} {cause} {text}")

    cw.stream(reply_id=rid).subscribe(
        lambda c: say(f"chunk {c.text}"), on_error, lambda: say("completed")
    )
    store.close()
    say("end")
    """
)

RESUMER = textwrap.dedent(
    """
    import sys
    import rxcontext
    from rxcontext import Chunk, ChunkKind, ContextWindow
    from rxcontext.providers import ScriptedModel

    target, cp_id, who = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, f" +{who}"), Chunk(ChunkKind.DONE)]])
    store = rxcontext.open(target, lease_ttl=1.0)
    cw = ContextWindow(store, model, "takeover")
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        cw.resume_call(cp_id)
        print("won", flush=True)
    except rxcontext.RxContextError as e:
        print("lost", type(e).__name__, flush=True)
    store.close()
    """
)


def T(text: str) -> Chunk:
    return Chunk(ChunkKind.TEXT, text)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    children: list[subprocess.Popen[str]] = []

    def start(script: str, *args: object) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        child.wait(WAIT)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


def read_until(stream: IO[str] | None, prefix: str) -> list[str]:
    """Lines of ``stream`` up to and including the first that starts with ``prefix``."""
    assert stream is not None
    lines: list[str] = []
    while True:
        line = stream.readline()
        assert line, f"the child ended before {prefix!r}: {lines}"
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines


def send(child: subprocess.Popen[str], line: str) -> None:
    assert child.stdin is not None
    child.stdin.write(line + "\n")
    child.stdin.flush()


def prepare(target: str, ttl: float = TTL) -> tuple[Any, ContextWindow]:
    store = rxcontext.open(target, lease_ttl=ttl)
    cw = ContextWindow(store, ScriptedModel([]), "takeover")
    cw.add_prompt("tell me")
    return store, cw


def store_now(store: Any) -> datetime:
    """The time by the clock the store's leases use."""
    if isinstance(store, rxcontext.SQLiteStore):
        return datetime.now(UTC)
    value = scalar(store, "SELECT clock_timestamp()")
    assert isinstance(value, datetime)
    return value


def lease_until(store: Any, reply_id: str) -> datetime:
    value = scalar(store, f"SELECT lease_until FROM checkpoints WHERE reply_id = '{reply_id}'")
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def until(check: Callable[[], bool]) -> None:
    """Wait (bounded) for a lease to run out: the one wait on time these tests have."""
    deadline = time.monotonic() + WAIT
    tick = threading.Event()
    while not check():
        assert time.monotonic() < deadline, "the lease never ran out"
        tick.wait(0.02)


def delivered(lines: list[str]) -> str:
    return "".join(line[len("chunk ") :] for line in lines if line.startswith("chunk "))


def reply_records(store: Any, cw: ContextWindow, reply_id: str) -> list[str]:
    return [r.content for r in store.reply_records(reply_id) if r.type is RecordType.MODEL_RESP]


def test_sigkill_then_exactly_one_of_several_resumers_wins(
    target: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    store, cw = prepare(target)
    worker = spawn(WORKER, target, "r1", TTL, BEFORE)
    lines = read_until(worker.stdout, "paused")
    # The timer writes what was delivered although the model is silent.
    until(lambda: (store.find_reply("r1") or cw).text == delivered(lines))  # type: ignore[union-attr]
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(WAIT)
    (cp,) = cw.checkpoints()  # a dead owner on this host is seen at once
    assert cp.reply_id == "r1" and cp.state is ReplyState.INTERRUPTED
    assert cw.stats().open_checkpoints == 1  # and counted (`rxcontext contexts list`)
    assert cp.text == delivered(lines)
    # Two more processes and this one try to resume it at once.
    resumers = [spawn(RESUMER, target, cp.id, who) for who in "xy"]
    for r in resumers:
        read_until(r.stdout, "ready")
    for r in resumers:
        send(r, "go")
    cw.model = ScriptedModel([[T(" +z"), Chunk(ChunkKind.DONE)]])
    try:
        cw.resume_call(cp.id)
        mine = "won"
    except rxcontext.RxContextError as error:
        mine = f"lost {type(error).__name__}"
    outcomes = [read_until(r.stdout, ("won", "lost"))[-1] for r in resumers]  # type: ignore[arg-type]
    outcomes.append(mine)
    assert sorted(o.split()[0] for o in outcomes) == ["lost", "lost", "won"], outcomes
    winner = "xyz"[[o.split()[0] for o in outcomes].index("won")]
    assert all(o in ("won", "lost ReplyBusy", "lost CheckpointResolved") for o in outcomes)
    assert reply_records(store, cw, "r1") == [cp.text + f" +{winner}"]
    store.close()


def test_a_paused_owner_is_taken_over_and_fenced(
    target: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    store, cw = prepare(target, RESUMER_TTL)  # the worker's lease is PAUSE_TTL
    worker = spawn(WORKER, target, "r2", PAUSE_TTL, BEFORE)
    lines = read_until(worker.stdout, "paused")
    until(lambda: (store.find_reply("r2") or cw).text == delivered(lines))  # type: ignore[union-attr]
    assert store.find_reply("r2").state is ReplyState.STREAMING
    os.kill(worker.pid, signal.SIGSTOP)
    os.waitpid(worker.pid, os.WUNTRACED)  # returns once it is stopped
    stopped_at = store_now(store)
    # Its last renewal came before it stopped: for everyone it is over by then + lease_ttl.
    assert lease_until(store, "r2") <= stopped_at + timedelta(seconds=PAUSE_TTL)
    until(lambda: store.find_reply("r2").state is ReplyState.INTERRUPTED)  # type: ignore[union-attr]
    (cp,) = cw.checkpoints()
    assert cp.reply_id == "r2" and cp.text == delivered(lines)
    cw.model = ScriptedModel([[T(" +B"), Chunk(ChunkKind.DONE)]])
    assert cw.resume_call(cp.id).text == cp.text + " +B"
    # The zombie comes back and finishes its stream: nothing of it is stored.
    os.kill(worker.pid, signal.SIGCONT)
    send(worker, "go")
    rest = read_until(worker.stdout, "end")
    (outcome,) = [line for line in rest if line.startswith(("error", "completed"))]
    assert outcome.startswith("error OwnershipLost"), rest
    assert worker.wait(WAIT) == 0
    assert reply_records(store, cw, "r2") == [cp.text + " +B"]
    row = store.find_reply("r2")
    assert row is not None and row.state is ReplyState.COMPLETED and row.epoch == cp.epoch + 1
    store.close()


def test_stop_from_another_process(
    target: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    store, cw = prepare(target)
    worker = spawn(WORKER, target, "r3", TTL, BEFORE)
    lines = read_until(worker.stdout, "paused")
    asked = time.monotonic()
    assert cw.stop("r3") is True
    rest = read_until(worker.stdout, "error")
    took = time.monotonic() - asked
    error = rest[-1].split(" ", 3)
    assert error[:3] == ["error", "StreamInterrupted", "ReplyStopped"], rest
    assert error[3] == delivered(lines)
    (cp,) = cw.checkpoints()
    assert cp.reply_id == "r3" and cp.text == delivered(lines)
    assert "ReplyStopped" in (cp.error or "")
    send(worker, "go")  # its model goes on: the stopped stream delivers nothing more
    rest = read_until(worker.stdout, "end")
    assert not [line for line in rest if line.startswith(("chunk", "completed"))], rest
    assert cw.stop("r3") is False
    store.close()
    print(f"stop reached the owner in {took * 1000:.0f} ms")


def test_a_paused_owner_nobody_claimed_gives_its_reply_up(
    target: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    store, cw = prepare(target, RESUMER_TTL)  # the worker's lease is PAUSE_TTL
    worker = spawn(WORKER, target, "r4", PAUSE_TTL, BEFORE)
    lines = read_until(worker.stdout, "paused")
    os.kill(worker.pid, signal.SIGSTOP)
    os.waitpid(worker.pid, os.WUNTRACED)
    until(lambda: store.find_reply("r4").state is ReplyState.INTERRUPTED)  # type: ignore[union-attr]
    # Seen interrupted by others, the reply stays so: the owner, back, does not carry on.
    os.kill(worker.pid, signal.SIGCONT)
    send(worker, "go")
    lines += read_until(worker.stdout, "end")
    (outcome,) = [line for line in lines if line.startswith(("error", "completed"))]
    assert outcome.startswith("error StreamInterrupted OwnershipLost"), lines
    (cp,) = cw.checkpoints()
    assert cp.reply_id == "r4" and cp.text == delivered(lines)
    assert reply_records(store, cw, "r4") == []
    cw.model = ScriptedModel([[T(" +B"), Chunk(ChunkKind.DONE)]])
    assert cw.resume_call(cp.id).text == cp.text + " +B"
    store.close()


SOAK_TRIALS = int(os.environ.get("RX_TAKEOVER_TRIALS", "10"))


@pytest.mark.soak
@pytest.mark.parametrize("trial", range(SOAK_TRIALS))
def test_takeover_soak(
    target: str, spawn: Callable[..., subprocess.Popen[str]], trial: int
) -> None:
    """Random pause points, SIGKILL or SIGSTOP, claimed or not: one stored reply, always the
    checkpoint plus the new owner's continuation; a zombie never stores anything."""
    import random

    rng = random.Random(trial)
    before = rng.randint(1, 30)
    how = rng.choice(["kill", "stop-claimed", "stop-unclaimed"])
    rid = f"soak-{trial}"
    store, cw = prepare(target, RESUMER_TTL)  # the worker's lease is PAUSE_TTL
    worker = spawn(WORKER, target, rid, PAUSE_TTL, before)
    lines = read_until(worker.stdout, "paused")
    if how == "kill":
        until(lambda: (store.find_reply(rid) or cw).text == delivered(lines))  # type: ignore[union-attr]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(WAIT)
    else:
        os.kill(worker.pid, signal.SIGSTOP)
        os.waitpid(worker.pid, os.WUNTRACED)
    until(lambda: store.find_reply(rid).state is ReplyState.INTERRUPTED)  # type: ignore[union-attr]
    (cp,) = cw.checkpoints()
    assert delivered(lines).startswith(cp.text)
    if how == "stop-claimed":
        cw.model = ScriptedModel([[T(" +B"), Chunk(ChunkKind.DONE)]])
        cw.resume_call(cp.id)
    if how != "kill":
        os.kill(worker.pid, signal.SIGCONT)
        send(worker, "go")
        lines += read_until(worker.stdout, "end")
        (outcome,) = [line for line in lines if line.startswith(("error", "completed"))]
        assert outcome.startswith(("error OwnershipLost", "error StreamInterrupted OwnershipLost"))
    if how != "stop-claimed":
        (cp,) = cw.checkpoints()
        cw.model = ScriptedModel([[T(" +B"), Chunk(ChunkKind.DONE)]])
        cw.resume_call(cp.id)
    assert reply_records(store, cw, rid) == [cp.text + " +B"]
    print(f"trial {trial}: {how} after {before} chunks: ok")
    store.close()
