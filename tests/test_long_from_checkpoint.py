"""A long reply on SQLite is committed from its checkpoint (issue 14, memory): while it
streams, the persister's builder lets go of the text each periodic checkpoint has landed, and
the commit writes the record from the checkpoint's parts; ``Reply.text`` and the record's
content are read back from the row. Everything stays exact: the stored TEXT (byte for byte
what binding the whole reply stores), the reply, an interrupted reply's checkpoint and its
resume, a commit that fails. The long-value threshold is made small here
(``_sqlite_long.LONG``) so short scripts take the long path."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex.testing import TestScheduler

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType
from rxcontext import operators as rxops
from rxcontext.checkpointer import checkpointer_for
from rxcontext.chunks import _COALESCE, ReplyBuilder
from rxcontext.persist import ReplyPersister
from rxcontext.providers import ScriptedModel
from rxcontext.store import _sqlite_long
from rxcontext.store._sqlite_rows import storable

LONG = 64


@pytest.fixture
def small_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite_long, "LONG", LONG)


def _deltas(n: int) -> list[str]:
    """Text deltas of every width of character, and an emoji cut between two deltas (its
    halves are one character once stored)."""
    words = ["ascii ", "café ", "日本語 ", "😀 ", "\ud83d", "\ude00", "x\n", "\u00e9\u0301 "]
    return [f"{i}{words[i % len(words)]}" if i % 8 != 5 else words[5] for i in range(n)]


def _window(
    path: Path, deltas: list[str], tail: list[object]
) -> tuple[ContextWindow, TestScheduler]:
    ts = TestScheduler()
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, d) for d in deltas] + tail])  # type: ignore[list-item]
    store = rxcontext.open(path)
    cw = ContextWindow(store, model, "long", checkpoint_every=1.0, scheduler=ts)
    cw.add_prompt("go")
    return cw, ts


class _Ticks:
    """A middleware hook that runs a checkpoint tick every ``every`` chunks (before the
    chunk is folded) and records, at the next chunk (the driver has let go of what the tick
    wrote, between the two), how many characters the persister's builder holds, how many
    the checkpoint does not, and how many it does."""

    def __init__(self, cw: ContextWindow, ts: TestScheduler, every: int) -> None:
        self.cw, self.ts, self.every = cw, ts, every
        self.count = 0
        self.after: list[tuple[int, int, int]] = []  # (held, not written, written)
        self.persister: ReplyPersister | None = None

    def __call__(self, chunk: Chunk) -> None:
        self.count += 1
        p = self.persister
        if p is not None and self.count % self.every == 1:
            b = p.builder
            self.after.append((b.held(), b.text_length() - p._text_mark, p._text_mark))
        if self.count % self.every:
            return
        self.ts.advance_by(1.0)
        (self.persister,) = checkpointer_for(self.cw.store, 1.0, self.ts)._replies.values()


def _stored(path: Path) -> list[tuple[bytes, int]]:
    db = sqlite3.connect(path)
    try:
        return [
            (bytes(r[0]), r[1])
            for r in db.execute(
                "SELECT CAST(content AS BLOB), est_tokens FROM records WHERE source = ?"
                " ORDER BY id",
                (int(RecordType.MODEL_RESP),),
            )
        ]
    finally:
        db.close()


def test_a_long_reply_is_committed_from_its_checkpoint_exactly(small_long, tmp_path) -> None:
    deltas = _deltas(400)
    whole = storable("".join(deltas))
    cw, ts = _window(tmp_path / "new.db", deltas, [Chunk(ChunkKind.DONE, finish_reason="stop")])
    ticks = _Ticks(cw, ts, 37)
    reply = cw.call(rxops.middleware(on_chunk=ticks))
    p = ticks.persister
    assert p is not None and p.records and p.final is reply
    assert reply.text == whole
    (record,) = [r for r in p.records if r.type is RecordType.MODEL_RESP]
    assert record.content is reply.text  # one str: the reply's, the record's
    assert [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP] == [whole]
    # After each landed tick the builder holds only what no checkpoint holds (the one chunk
    # folded since, and an emoji's first half waiting for its other half), never the
    # written text.
    assert ticks.after
    delta = max(map(len, deltas)) + 1
    assert all(held == unwritten <= delta for held, unwritten, _ in ticks.after), ticks.after
    assert ticks.after[-1][2] > LONG * 3  # long: it was let go of, tick after tick
    cw.store.close()

    # The same reply through the whole-text path stores the same TEXT, byte for byte.
    old = tmp_path / "old.db"
    ow, _ = _window(old, deltas, [Chunk(ChunkKind.DONE, finish_reason="stop")])
    # (Its reply keeps an emoji cut between deltas as the two halves it came as; the
    # long path's reply is the stored text, where they are one character.)
    assert storable(ow.call().text) == whole
    ow.store.close()
    assert _stored(tmp_path / "new.db") == _stored(old)
    assert _stored(old)[0][0] == whole.encode()


def test_an_interrupted_long_reply_keeps_every_character_and_resumes(small_long, tmp_path) -> None:
    deltas = _deltas(300)
    cw, ts = _window(tmp_path / "cut.db", deltas, [RuntimeError("cut")])
    ticks = _Ticks(cw, ts, 41)
    with pytest.raises(rxcontext.StreamInterrupted) as cut:
        cw.call(rxops.middleware(on_chunk=ticks))
    assert ticks.after and ticks.after[-1][0] < len(storable("".join(deltas))) // 2
    checkpoint = cut.value.checkpoint
    assert checkpoint.text == storable("".join(deltas))
    # A continuation of it keeps the whole text (its own path: a resumed reply's text
    # starts with the claimed checkpoint's).
    more = ["the ", "rest"]
    cw.model = ScriptedModel([[Chunk(ChunkKind.TEXT, d) for d in more] + [Chunk(ChunkKind.DONE)]])
    reply = cw.resume_call(checkpoint.id)
    assert reply.text == checkpoint.text + "the rest"
    assert [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP] == [reply.text]
    cw.store.close()


def test_a_failed_commit_stores_the_whole_reply_as_its_checkpoint(small_long, tmp_path) -> None:
    deltas = _deltas(200)
    cw, ts = _window(tmp_path / "fail.db", deltas, [Chunk(ChunkKind.DONE, finish_reason="stop")])
    ticks = _Ticks(cw, ts, 29)
    # The commit's insert fails (a trigger of this connection alone): the reply is not
    # stored, and its checkpoint must hold every character, those the builder let go too.
    cw.store._db().execute(
        "CREATE TEMP TRIGGER no_records BEFORE INSERT ON main.records"
        f" WHEN NEW.source = {int(RecordType.MODEL_RESP)} BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(rxcontext.StreamInterrupted) as cut:
        cw.call(rxops.middleware(on_chunk=ticks))
    assert ticks.after and ticks.after[-1][0] <= max(map(len, deltas)) + 1
    assert cut.value.checkpoint.text == storable("".join(deltas))
    cw.store.close()


def test_a_structured_reply_keeps_its_whole_text(small_long, tmp_path) -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        words: str

    body = '{"words": "' + "w" * 400 + '"}'
    deltas = [body[i : i + 7] for i in range(0, len(body), 7)]
    cw, ts = _window(tmp_path / "schema.db", deltas, [Chunk(ChunkKind.DONE, finish_reason="stop")])
    ticks = _Ticks(cw, ts, 10)
    reply = cw.call(rxops.middleware(on_chunk=ticks), schema=Answer)
    assert reply.text == body and reply.parsed == Answer(words="w" * 400)
    # Validated whole: the builder let go of nothing.
    assert ticks.persister is not None and ticks.persister.builder.text_gone == 0
    assert [held for held, _, _ in ticks.after] == sorted(held for held, _, _ in ticks.after)
    cw.store.close()


def test_short_replies_keep_the_whole_text_path(tmp_path) -> None:
    deltas = _deltas(100)  # far under the real threshold
    cw, ts = _window(tmp_path / "short.db", deltas, [Chunk(ChunkKind.DONE, finish_reason="stop")])
    ticks = _Ticks(cw, ts, 10)
    assert storable(cw.call(rxops.middleware(on_chunk=ticks)).text) == storable("".join(deltas))
    assert ticks.persister is not None and ticks.persister.builder.text_gone == 0
    cw.store.close()


@given(st.lists(st.text(max_size=6), max_size=3 * _COALESCE), st.data())
def test_a_builder_that_let_go_still_gives_every_suffix(deltas: list[str], data) -> None:
    builder = ReplyBuilder()
    text = ""
    for delta in deltas:
        builder.add(Chunk(ChunkKind.TEXT, delta))
        text += delta
        if data.draw(st.booleans()):
            builder.let_go_text(data.draw(st.integers(0, len(text))))
        gone = builder.text_gone
        assert builder.held() == len(text) - gone
        assert builder.text_length() == len(text)
        start = data.draw(st.integers(gone, len(text)))
        assert builder.text_from(start) == (text[start:], len(text))
        limit = data.draw(st.integers(1, 50))
        assert builder.text_slice(start, limit) == text[start : start + limit]
    assert builder.shows_anything() is bool(text)
