"""A ``REWIND`` in a reply's own stream (a model that replays what ``cw.watch`` gave: a
watcher gets one after a takeover) on SQLite's long path, where the persister's builder lets
go of the text each periodic checkpoint holds (``_sqlite_long.LONG`` made small, as in
test_long_from_checkpoint).

A rewind to no earlier than what the checkpoint holds is honoured: the stored text is the
text before the rewind point, then what came after, as every subscriber folding the chunks
has it. One to before it cannot be (the checkpoint is written by appending, and the builder
let go of that text): it is refused before it is delivered, with
:class:`rxcontext.RewindRefused`, and the reply ends interrupted with the checkpoint of
exactly what was delivered, which resumes as any other. Before, the rewind counted from
what the builder still held (a wrong stored text, silently), and one arriving as the
builder let go raised ``IndexError``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from reactivex.scheduler import CurrentThreadScheduler
from reactivex.testing import TestScheduler
from watching import text_of

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, StreamInterrupted
from rxcontext import operators as rxops
from rxcontext.checkpointer import checkpointer_for
from rxcontext.providers import ScriptedModel
from rxcontext.store import _sqlite_long
from rxcontext.store._sqlite_rows import storable

LONG = 64
OLD = [f"word{i:03d} " for i in range(60)]  # 480 characters, let go of as it is written
NEW = [f"new{i:03d} " for i in range(20)]
DONE = Chunk(ChunkKind.DONE, finish_reason="stop")


@pytest.fixture(autouse=True)
def small_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite_long, "LONG", LONG)


def _script(at: int) -> list[Chunk]:
    text = [Chunk(ChunkKind.TEXT, d) for d in OLD]
    return [
        *text,
        Chunk(ChunkKind.REWIND, index=at),
        *(Chunk(ChunkKind.TEXT, d) for d in NEW),
        DONE,
    ]


class _Ticks:
    """A middleware hook (run before each chunk is delivered) that runs a checkpoint tick
    before every chunk ``n`` with ``n % 10 == phase``, and notes how much text the
    persister's builder had let go of when the REWIND came."""

    def __init__(self, cw: ContextWindow, ts: TestScheduler, phase: int) -> None:
        self.cw, self.ts, self.phase = cw, ts, phase
        self.count = 0
        self.gone_at_rewind = -1

    def __call__(self, chunk: Chunk) -> None:
        self.count += 1
        if chunk.kind is ChunkKind.REWIND:
            (p,) = checkpointer_for(self.cw.store, 1.0, self.ts)._replies.values()
            self.gone_at_rewind = p.builder.text_gone
        if self.count % 10 == self.phase:
            self.ts.advance_by(1.0)


def _window(path: Path, scripts: list[list[Chunk]]) -> tuple[ContextWindow, TestScheduler]:
    ts = TestScheduler()
    cw = ContextWindow(
        rxcontext.open(path), ScriptedModel(scripts), "rewind", checkpoint_every=1.0, scheduler=ts
    )
    cw.add_prompt("go")
    return cw, ts


def _stream(cw: ContextWindow, ticks: _Ticks) -> tuple[list[Chunk], list[BaseException]]:
    got: list[Chunk] = []
    errors: list[BaseException] = []
    done: list[bool] = []
    # (Produced on this thread, at once; the checkpoints' timer is the TestScheduler.)
    cw.stream(rxops.middleware(on_chunk=ticks)).subscribe(
        got.append, errors.append, lambda: done.append(True), scheduler=CurrentThreadScheduler()
    )
    assert errors or done
    return got, errors


def _stored(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


def test_a_rewind_after_the_builder_let_go_keeps_the_stored_text_exact(tmp_path: Path) -> None:
    # The tick before chunk 60 writes the first 59 deltas; the builder lets go of them
    # after chunk 60 is folded; the REWIND (chunk 61) goes back into the last delta, past
    # what the checkpoint holds.
    at = len("".join(OLD)) - 4
    cw, ts = _window(tmp_path / "r.db", [_script(at)])
    ticks = _Ticks(cw, ts, phase=0)
    got, errors = _stream(cw, ticks)
    assert errors == []
    assert ticks.gone_at_rewind > LONG  # the builder had let go of text
    want = "".join(OLD)[:at] + "".join(NEW)
    assert text_of(got) == want
    assert _stored(cw) == [want]
    cw.store.close()


def _refused(cw: ContextWindow, got: list[Chunk], errors: list[BaseException]) -> Any:
    assert len(errors) == 1, f"not refused; stored {_stored(cw)!r}"
    (error,) = errors
    assert isinstance(error, StreamInterrupted)
    assert type(error.__cause__).__name__ == "RewindRefused", repr(error.__cause__)
    assert isinstance(error.__cause__, rxcontext.RewindRefused)
    assert all(c.kind is not ChunkKind.REWIND for c in got)  # refused before delivery
    whole = "".join(OLD)
    assert text_of(got) == whole
    checkpoint = error.checkpoint
    assert checkpoint.text == storable(whole)  # exactly what was delivered
    assert [c.id for c in cw.checkpoints()] == [checkpoint.id]
    return checkpoint


@pytest.mark.parametrize("at", [0, 10, 200, 470])
def test_a_rewind_behind_what_the_checkpoint_holds_is_refused(tmp_path: Path, at: int) -> None:
    # The tick before the REWIND (chunk 61) writes all 60 deltas, and the builder lets go of
    # them once the chunk is folded: the rewind point is behind both.
    cw, ts = _window(tmp_path / "r.db", [_script(at), [Chunk(ChunkKind.TEXT, " more"), DONE]])
    ticks = _Ticks(cw, ts, phase=1)
    got, errors = _stream(cw, ticks)
    checkpoint = _refused(cw, got, errors)
    assert _stored(cw) == []
    # Nothing stored was lost: the reply resumes from its checkpoint as any other.
    rest = cw.resume(checkpoint.id).pipe(rxops.reduce_reply()).run()
    assert rest.text == " more"  # the continuation; the record holds the whole reply
    assert _stored(cw) == [storable("".join(OLD)) + " more"]
    cw.store.close()


def test_a_rewind_behind_the_checkpoint_is_refused_on_the_asyncio_path(tmp_path: Path) -> None:
    cw, ts = _window(tmp_path / "r.db", [_script(10)])
    ticks = _Ticks(cw, ts, phase=1)
    got: list[Chunk] = []
    errors: list[BaseException] = []

    async def consume() -> None:
        try:
            async for chunk in cw.astream(rxops.middleware(on_chunk=ticks)):
                got.append(chunk)
        except StreamInterrupted as error:
            errors.append(error)

    asyncio.run(consume())
    _refused(cw, got, errors)
    cw.store.close()


def test_a_builders_rewind_counts_from_the_replys_start_after_a_let_go() -> None:
    from rxcontext.chunks import ReplyBuilder

    builder = ReplyBuilder()
    for piece in ["abc", "def", "ghi"]:
        builder.add(Chunk(ChunkKind.TEXT, piece))
        builder.add(Chunk(ChunkKind.THINKING, piece))
    builder.let_go_text(4)
    builder.let_go_thinking(4)
    builder.add(Chunk(ChunkKind.REWIND, index=6, metadata={"thinking": 5}))
    assert (builder.text_length(), builder.text) == (6, "ef")
    assert (builder.thinking_length(), builder.thinking) == (5, "e")
    builder.add(Chunk(ChunkKind.TEXT, "XY"))
    assert builder.text_from(4) == ("efXY", 8)
    # Back past what it let go of: refused, the builder unchanged (never an IndexError).
    for index, thinking in ((3, 5), (6, 2)):
        with pytest.raises(rxcontext.RewindRefused):
            builder.add(Chunk(ChunkKind.REWIND, index=index, metadata={"thinking": thinking}))
        assert builder.text_from(4) == ("efXY", 8) and builder.thinking_from(4) == ("e", 5)
    builder.add(Chunk(ChunkKind.REWIND, index=4))  # to exactly what it let go of
    assert (builder.text_length(), builder.text) == (4, "")


def _short(ts: TestScheduler, path: Path, **kw: Any) -> tuple[ContextWindow, list[Chunk]]:
    script = [
        Chunk(ChunkKind.TEXT, "Hello wrold"),
        Chunk(ChunkKind.TEXT, "!"),
        Chunk(ChunkKind.REWIND, index=6),
        Chunk(ChunkKind.TEXT, "world!"),
        DONE,
    ]
    cw = ContextWindow(
        rxcontext.open(path),
        ScriptedModel([script]),
        "rewind",
        checkpoint_every=1.0,
        scheduler=ts,
        **kw,
    )
    cw.add_prompt("go")
    return cw, script


class _LandsIn:
    """A middleware hook that, on the REWIND, starts a periodic write of all the text the
    reply has (what the checkpoints' timer does: the write lock, then the snapshot), and
    lands it (the store's write, then ``periodic_done``, which releases the lock) as the
    ``at``-th bytecode of ``ReplyPersister.admit_rewind`` is about to run, or as it returns
    if it runs fewer: the timer's thread landing its write at that point of the driver's."""

    def __init__(self, cw: ContextWindow, ts: TestScheduler, at: int) -> None:
        self.cw, self.ts, self.at = cw, ts, at
        self.count = 0
        self.landed_at: str | None = None

    def __call__(self, chunk: Chunk) -> None:
        if chunk.kind is not ChunkKind.REWIND:
            return
        (p,) = checkpointer_for(self.cw.store, 1.0, self.ts)._replies.values()
        assert p.periodic_lock()
        draft = p.snapshot()
        if draft is None or draft.append_text != "Hello wrold!":
            p.periodic_done(draft, None)  # (releases the lock: the reply can end)
            raise AssertionError(f"no write of all the text: {draft!r}")
        code = type(p).admit_rewind.__code__

        def land(event: str) -> None:
            self.landed_at = event
            sys.settrace(None)
            assert p.ticket is not None
            (written,) = p.store.save_checkpoints([(p.ticket, draft)])
            p.periodic_done(draft, written)

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                self.count += 1
                if self.count == self.at:
                    land(f"opcode {self.at}")
            elif event == "return":
                land("return")
            return local

        def calls(frame: Any, event: str, arg: Any) -> Any:
            if event != "call" or frame.f_code is not code:
                return None
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return local

        sys.settrace(calls)


def test_a_write_landing_while_a_rewind_is_admitted_is_counted(tmp_path: Path) -> None:
    # A periodic write of "Hello wrold!" is under way as the REWIND (to 6) comes; wherever
    # in admit_rewind it lands (every bytecode, then its return), the rewind goes back
    # before what the checkpoint holds, or is about to: refused, never delivered, and the
    # checkpoint is exactly what was. (Before, a write landing between the marks' read and
    # the lock's look was missed: the rewind admitted against the old mark, the checkpoint
    # then held "Hello wrold!" while the subscriber had "Hello world!".)
    at = 0
    while True:
        at += 1
        ts = TestScheduler()
        cw, _ = _short(ts, tmp_path / f"r{at}.db")
        lands = _LandsIn(cw, ts, at)
        got: list[Chunk] = []
        errors: list[BaseException] = []
        previous = sys.gettrace()
        try:
            cw.stream(rxops.middleware(on_chunk=lands)).subscribe(
                got.append, errors.append, scheduler=CurrentThreadScheduler()
            )
        finally:
            sys.settrace(previous)
        where = lands.landed_at
        assert where is not None
        assert len(errors) == 1, f"landed at {where}: not refused; stored {_stored(cw)!r}"
        (error,) = errors
        assert isinstance(error, StreamInterrupted)
        assert isinstance(error.__cause__, rxcontext.RewindRefused), (where, error.__cause__)
        assert all(c.kind is not ChunkKind.REWIND for c in got)
        assert text_of(got) == "Hello wrold!"
        assert error.checkpoint.text == "Hello wrold!", where
        cw.store.close()
        if where == "return":
            break
        assert at < 500


class _SignalOnRewind:
    """A middleware hook that, like _Ticks with phase 1, writes the checkpoint (all the text)
    before the REWIND, then raises ``signal`` in the hook on it: a Ctrl-C (or SIGTERM's
    SystemExit) landing in the program's hook."""

    def __init__(self, ticks: _Ticks, signal: type[BaseException]) -> None:
        self.ticks, self.signal = ticks, signal
        self.persister: Any = None

    def __call__(self, chunk: Chunk) -> None:
        self.ticks(chunk)
        if chunk.kind is ChunkKind.REWIND:
            (self.persister,) = checkpointer_for(
                self.ticks.cw.store, 1.0, self.ticks.ts
            )._replies.values()
            raise self.signal


@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("path", ["untimed", "timed", "asyncio"])
def test_a_signal_in_a_hook_on_a_refused_rewind_goes_on(
    tmp_path: Path, path: str, signal: type[BaseException]
) -> None:
    # The REWIND (to 10) is one the persister refuses; a signal lands in the hook that has
    # it. The signal is what the program gets (as for any other chunk), the rewind is not
    # folded, the persister is not left busy, and the checkpoint holds what was delivered
    # before it. (Before, the driver folded it without asking: the builder's RewindRefused
    # replaced the signal, and the persister stayed busy.)
    ts = TestScheduler()
    kw: dict[str, Any] = {"timeouts": rxcontext.Timeouts(idle=60)} if path == "timed" else {}
    cw = ContextWindow(
        rxcontext.open(tmp_path / "r.db"),
        ScriptedModel([_script(10)]),
        "rewind",
        checkpoint_every=1.0,
        scheduler=ts,
        **kw,
    )
    cw.add_prompt("go")
    hook = _SignalOnRewind(_Ticks(cw, ts, phase=1), signal)
    got: list[Chunk] = []
    errors: list[BaseException] = []
    with pytest.raises(signal):
        if path == "asyncio":

            async def consume() -> None:
                async for chunk in cw.astream(rxops.middleware(on_chunk=hook)):
                    got.append(chunk)

            asyncio.run(consume())
        else:
            cw.stream(rxops.middleware(on_chunk=hook)).subscribe(
                got.append, errors.append, scheduler=CurrentThreadScheduler()
            )
    assert errors == []
    p = hook.persister
    assert p is not None and p.finished and not p.busy
    whole = "".join(OLD)
    assert text_of(got) == whole
    (checkpoint,) = cw.checkpoints()
    assert checkpoint.text == storable(whole)
    assert _stored(cw) == []
    cw.store.close()
