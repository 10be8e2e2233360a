"""A long reasoning on SQLite is committed from its checkpoint, as a long text is
(tests/test_long_from_checkpoint.py, issue 14, memory): the persister's builder lets go of
the thinking each checkpoint holds, and the commit writes the MODEL_RESP's metadata JSON
with its ``thinking`` from the checkpoint's parts. What is stored is byte for byte what the
whole-reply path stores (content, metadata JSON, token estimate), for thinking blocks of any
shape; ``Reply.thinking`` and the record's metadata are read back. A long reply is also
written as it grows, not only when the timer ticks: a stream faster than the timer no longer
holds its whole text until the commit. ``_sqlite_long.LONG`` is made small so short scripts
take the long path."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from reactivex.testing import TestScheduler

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
from rxcontext import operators as rxops
from rxcontext.checkpointer import checkpointer_for
from rxcontext.chunks import _COALESCE
from rxcontext.persist import ReplyPersister
from rxcontext.providers import ScriptedModel
from rxcontext.store import _sqlite_long
from rxcontext.store._sqlite_rows import storable

LONG = 64
SIGNED = {"signature": "c2lnbmF0dXJl"}


@pytest.fixture
def small_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite_long, "LONG", LONG)


def _deltas(n: int, tag: str = "") -> list[str]:
    """Deltas of every width of character, characters JSON escapes, and an emoji cut
    between two deltas."""
    words = ["ascii ", "café ", '"q"\\ ', "😀\t", "\ud83d", "\ude00", "x\n", "日本語\x01 "]
    return [f"{tag}{i}{words[i % 8]}" if i % 8 != 5 else words[5] for i in range(n)]


def _think(deltas: list[str], index: int = 0) -> list[Chunk]:
    return [Chunk(ChunkKind.THINKING, d, index) for d in deltas]


def _signed(index: int) -> Chunk:
    return Chunk(ChunkKind.THINKING, "", index, metadata=SIGNED)


_DONE = [Chunk(ChunkKind.TEXT, "done", 9), Chunk(ChunkKind.DONE, finish_reason="stop")]

SHAPES: dict[str, list[Chunk]] = {
    # Anthropic's usual reply: one signed block, then text.
    "one block": [*_think(_deltas(400)), _signed(0), *_DONE],
    # Two signed blocks one after the other, a redacted one between.
    "two blocks": [
        *_think(_deltas(200, "a")),
        _signed(0),
        Chunk(ChunkKind.THINKING, "", 1, metadata={"redacted": "opaque"}),
        *_think(_deltas(200, "b"), 2),
        _signed(2),
        *_DONE,
    ],
    # Plain reasoning (no block: OpenAI-compatible reasoning_content).
    "no blocks": _think(_deltas(400)) + _DONE,
    # An unsigned block, then a signed one with the same text: the store finds the signed
    # block's text at the first place it occurs (a span the builder's does not say).
    "repeated": _think(_deltas(200)) + _think(_deltas(200), 1) + [_signed(1)] + _DONE,
    # A block whose deltas come in two runs around another's.
    "interleaved": _think(_deltas(150, "a"))
    + _think(_deltas(150, "b"), 1)
    + [_signed(1)]
    + _think(_deltas(150, "c"))
    + [_signed(0)]
    + _DONE,
}


def _window(path: Path, chunks: list[Chunk], every: float | None) -> tuple[ContextWindow, Any]:
    ts = TestScheduler()
    store = rxcontext.open(path)
    cw = ContextWindow(store, ScriptedModel([chunks]), "long", checkpoint_every=every, scheduler=ts)
    cw.add_prompt("go")
    return cw, ts


class _Ticks:
    """A middleware hook that runs a checkpoint tick every ``every`` chunks and records, at
    the next chunk, the characters the persister's builder holds and the thinking mark."""

    def __init__(self, cw: ContextWindow, ts: TestScheduler, every: int) -> None:
        self.cw, self.ts, self.every = cw, ts, every
        self.count = 0
        self.after: list[tuple[int, int]] = []
        self.most = 0
        self.persister: ReplyPersister | None = None

    def __call__(self, chunk: Chunk) -> None:
        self.count += 1
        if self.persister is None:
            (self.persister,) = checkpointer_for(self.cw.store, 1.0, self.ts)._replies.values()
        p = self.persister
        self.most = max(self.most, p.builder.held())
        if self.every and self.count % self.every == 1:
            self.after.append((p.builder.held(), p._thinking_mark))
        if self.every and self.count % self.every == 0:
            self.ts.advance_by(1.0)


def _stored(path: Path) -> list[tuple[int, bytes, bytes, int]]:
    db = sqlite3.connect(path)
    try:
        return [
            (r[0], bytes(r[1]), bytes(r[2] or b""), r[3])
            for r in db.execute(
                "SELECT source, CAST(content AS BLOB), CAST(metadata AS BLOB), est_tokens"
                " FROM records ORDER BY id"
            )
        ]
    finally:
        db.close()


_TIMES = re.compile(rb'"(first_chunk_ms|duration_ms)":(null|[-+.eE0-9]+)')


def _without_times(rows: list[tuple[int, bytes, bytes, int]]) -> list[Any]:
    """The stored rows, byte for byte but for the reply's times (``first_chunk_ms``,
    ``duration_ms``), which differ from run to run."""
    return [(s, c, _TIMES.sub(rb'"\1":0', m), e) for s, c, m, e in rows]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_long_reasoning_is_committed_from_its_checkpoint_exactly(
    small_long: None, tmp_path: Path, shape: str
) -> None:
    chunks = SHAPES[shape]
    whole = storable("".join(c.text for c in chunks if c.kind is ChunkKind.THINKING))
    cw, ts = _window(tmp_path / "new.db", chunks, 1.0)
    ticks = _Ticks(cw, ts, 37)
    reply = cw.call(rxops.middleware(on_chunk=ticks))
    p = ticks.persister
    assert p is not None and p.final is reply
    assert reply.thinking == whole and reply.text == "done"
    # The builder let go of the reasoning the checkpoint held, tick after tick.
    assert ticks.after[-1][1] > LONG * 3
    assert max(held for held, _ in ticks.after[1:]) < len(whole) // 4, ticks.after
    (record,) = [r for r in p.records if r.type is RecordType.MODEL_RESP]
    assert record.metadata["thinking"] == whole
    assert record.metadata["thinking"] is reply.thinking  # one str, read back once
    stored = next(r for r in cw.records() if r.type is RecordType.MODEL_RESP)
    assert stored.metadata == record.metadata
    assert reply.metadata.get("thinking_blocks") == record.metadata.get("thinking_blocks")
    cw.store.close()

    # The whole-reply path (no checkpoints) stores the same bytes.
    ow, _ = _window(tmp_path / "old.db", chunks, None)
    old = ow.call()
    assert storable(old.thinking) == whole
    old_record = next(r for r in ow.records() if r.type is RecordType.MODEL_RESP)
    times = ("first_chunk_ms", "duration_ms")
    assert {k: v for k, v in old_record.metadata.items() if k not in times} == {
        k: v for k, v in record.metadata.items() if k not in times
    }
    ow.store.close()
    assert _without_times(_stored(tmp_path / "new.db")) == _without_times(
        _stored(tmp_path / "old.db")
    )


def test_an_interrupted_long_reasoning_keeps_every_character_and_resumes(
    small_long: None, tmp_path: Path
) -> None:
    deltas = _deltas(300)
    chunks: list[Any] = [*_think(deltas), RuntimeError("cut")]
    cw, ts = _window(tmp_path / "cut.db", chunks, 1.0)
    ticks = _Ticks(cw, ts, 41)
    with pytest.raises(rxcontext.StreamInterrupted) as cut:
        cw.call(rxops.middleware(on_chunk=ticks))
    assert ticks.after[-1][0] < len(storable("".join(deltas))) // 2  # it was let go of
    checkpoint = cut.value.checkpoint
    assert checkpoint.thinking == storable("".join(deltas))
    cw.model = ScriptedModel([[*_think(["more"]), _signed(0), *_DONE]])
    reply = cw.resume_call(checkpoint.id)
    assert reply.thinking == checkpoint.thinking + "more"
    (record,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert record.metadata["thinking"] == reply.thinking
    cw.store.close()


@pytest.mark.parametrize("kind", [ChunkKind.TEXT, ChunkKind.THINKING])
def test_a_long_reply_faster_than_the_timer_is_let_go_of(
    small_long: None, tmp_path: Path, kind: ChunkKind
) -> None:
    """The timer never ticks (the whole reply arrives within one interval): the reply is
    still written as it grows, and the builder never holds it whole."""
    deltas = _deltas(3000)
    chunks = [Chunk(kind, d) for d in deltas] + _DONE
    cw, ts = _window(tmp_path / "fast.db", chunks, 1.0)
    ticks = _Ticks(cw, ts, 0)  # no ticks
    reply = cw.call(rxops.middleware(on_chunk=ticks))
    whole = storable("".join(deltas)) + ("done" if kind is ChunkKind.TEXT else "")
    assert (reply.text if kind is ChunkKind.TEXT else reply.thinking) == whole
    assert ticks.most < len(whole) // 4, (ticks.most, len(whole))
    (record,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    if kind is ChunkKind.TEXT:
        assert record.content == whole
    else:
        assert record.metadata["thinking"] == whole
    cw.store.close()


def test_a_long_reply_taken_over_elsewhere_stops_at_its_next_part(
    small_long: None, tmp_path: Path
) -> None:
    """Another worker claims the reply while it streams: the next part it writes as it grows
    is refused, and the subscriber gets ``OwnershipLost`` then, not only at the commit
    after the whole rest of the reply was streamed."""
    path = tmp_path / "taken.db"
    deltas = _deltas(3000)
    cw, _ = _window(path, [Chunk(ChunkKind.TEXT, d) for d in deltas] + _DONE, 1.0)
    seen = 0

    def on_chunk(chunk: Chunk) -> None:
        nonlocal seen
        seen += 1
        if seen == 100:  # another worker thought this one dead
            db = sqlite3.connect(path)
            with db:
                db.execute(
                    "UPDATE checkpoints SET epoch = epoch + 1, state = 'resuming',"
                    " owner = 'elsewhere.invalid:1:1' WHERE state = 'streaming'"
                )
            db.close()

    with pytest.raises(rxcontext.OwnershipLost):
        cw.call(rxops.middleware(on_chunk=on_chunk))
    # The builder sounds its alarm as it joins deltas into blocks (_COALESCE of them): the
    # part after the takeover is written within two blocks, long before the reply's end.
    assert seen <= 100 + 2 * _COALESCE < len(deltas), seen
    cw.store.close()
