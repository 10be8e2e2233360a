"""Long values (``_sqlite_long``: written into their row a slice at a time through a blob
handle, and a reply committed from its checkpoint read back so) are stored and read back
exactly also in a database file its user made in UTF-16 before ``rxcontext.open``: a blob
handle writes and reads the row's bytes as they are, in the file's own encoding
(``PRAGMA encoding``), not UTF-8. Every user of the long path: a record's content and its
metadata JSON (``add_record``, ``commit_reply``), and a reply's text and reasoning committed
from its checkpoint's parts (``commit_reply_from_parts``), an interrupted one resumed.
``LONG``, ``SLICE`` and ``READ`` are made small so short texts take the long path in several
slices, and reads cut UTF-16 code units and surrogate pairs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from reactivex.testing import TestScheduler

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, SQLiteStore
from rxcontext import operators as rxops
from rxcontext.providers import ScriptedModel
from rxcontext.store import RecordDraft, _sqlite_long
from rxcontext.store._sqlite_rows import storable

ENCODINGS = [None, "UTF-16le", "UTF-16be"]
UNIT = 'é "q" \\ \n\t\x01 日本語 😀 '


@pytest.fixture
def small_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite_long, "LONG", 64)
    monkeypatch.setattr(_sqlite_long, "SLICE", 17)
    monkeypatch.setattr(_sqlite_long, "READ", 7)  # odd: cuts a code unit in UTF-16


def _made(path: Path, encoding: str | None) -> Path:
    """``path``, made empty in ``encoding`` first (None: left to rxcontext, UTF-8)."""
    if encoding is not None:
        made = sqlite3.connect(path)
        made.execute(f"PRAGMA encoding = '{encoding}'")
        made.execute("CREATE TABLE t (x)")  # the encoding is the file's from here on
        made.execute("DROP TABLE t")
        made.close()
    return path


def _open(path: Path, encoding: str | None) -> SQLiteStore:
    store = rxcontext.open(_made(path, encoding))
    assert isinstance(store, SQLiteStore)
    with store._read() as db:
        assert db.execute("PRAGMA encoding").fetchone()[0] == (encoding or "UTF-8")
    return store


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_long_record_and_its_long_metadata_read_back_exactly(
    small_long: None, tmp_path: Path, encoding: str | None
) -> None:
    text = UNIT * 20
    meta = {"thinking": text[::-1], "note": "é" * 100, "short": "ü"}
    with _open(tmp_path / "r.db", encoding) as store:
        ctx = store.get_or_create_context("long")
        added = store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, text, metadata=meta))
        (committed,) = store.commit_reply(
            ctx.id, [RecordDraft(RecordType.MODEL_RESP, text + "!", metadata=meta)]
        )
        assert added.content == text and committed.content == text + "!"
        assert [r.content for r in store.records(ctx.id)] == [text, text + "!"]
        assert [dict(r.metadata) for r in store.records(ctx.id)] == [meta, meta]
        assert store.records(ctx.id) == [added, committed]
    # What another connection reads (SQLite converts to UTF-8 for it).
    db = sqlite3.connect(tmp_path / "r.db")
    try:
        assert [r[0] for r in db.execute("SELECT content FROM records ORDER BY id")] == [
            text,
            text + "!",
        ]
    finally:
        db.close()


def _deltas(n: int) -> list[str]:
    words = ["ascii ", "café ", "日本語 ", "😀 ", "\ud83d", "\ude00", "x\n", "é\u0301 "]
    return [f"{i}{words[i % len(words)]}" if i % 8 != 5 else words[5] for i in range(n)]


def _window(store: SQLiteStore, chunks: list[object]) -> tuple[ContextWindow, TestScheduler]:
    ts = TestScheduler()
    cw = ContextWindow(store, ScriptedModel([chunks]), "long", checkpoint_every=1.0, scheduler=ts)  # type: ignore[list-item]
    cw.add_prompt("go")
    return cw, ts


def _ticking(ts: TestScheduler, every: int) -> Any:
    seen = 0

    def on_chunk(chunk: Chunk) -> None:
        nonlocal seen
        seen += 1
        if seen % every == 0:
            ts.advance_by(1.0)

    return rxops.middleware(on_chunk=on_chunk)


@pytest.mark.parametrize("kind", [ChunkKind.TEXT, ChunkKind.THINKING])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_long_reply_committed_from_its_checkpoint_reads_back_exactly(
    small_long: None, tmp_path: Path, encoding: str | None, kind: ChunkKind
) -> None:
    deltas = _deltas(300)
    chunks: list[object] = [Chunk(kind, d) for d in deltas]
    chunks += [Chunk(ChunkKind.TEXT, "done"), Chunk(ChunkKind.DONE, finish_reason="stop")]
    whole = storable("".join(deltas))
    with _open(tmp_path / "c.db", encoding) as store:
        cw, ts = _window(store, chunks)
        reply = cw.call(_ticking(ts, 23))
        (record,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
        if kind is ChunkKind.TEXT:
            assert reply.text == whole + "done"
            assert record.content == whole + "done"
        else:
            assert reply.thinking == whole and reply.text == "done"
            assert record.metadata["thinking"] == whole
        assert record.reply_id is not None
        assert store.reply_records(record.reply_id) == [record]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_an_interrupted_long_reply_resumes_exactly(
    small_long: None, tmp_path: Path, encoding: str | None
) -> None:
    deltas = _deltas(300)
    chunks: list[object] = [Chunk(ChunkKind.TEXT, d) for d in deltas]
    chunks.append(RuntimeError("cut"))
    whole = storable("".join(deltas))
    with _open(tmp_path / "i.db", encoding) as store:
        cw, ts = _window(store, chunks)
        with pytest.raises(rxcontext.StreamInterrupted) as cut:
            cw.call(_ticking(ts, 23))
        checkpoint = cut.value.checkpoint
        assert checkpoint.text == whole
        found = store.find_reply(checkpoint.reply_id)
        assert found is not None and found.text == whole
        cw.model = ScriptedModel([[Chunk(ChunkKind.TEXT, "more"), Chunk(ChunkKind.DONE)]])
        reply = cw.resume_call(checkpoint.id)
        assert reply.text == whole + "more"
        (record,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
        assert record.content == whole + "more"


@pytest.mark.parametrize("off", [2, -2])
def test_a_long_value_that_does_not_fill_its_placeholder_fails_as_a_store_error(
    small_long: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, off: int
) -> None:
    """An internal mismatch (the placeholder larger or smaller than the bytes written) fails
    the record's write with a StoreError that says nothing was stored, not a bare
    AssertionError from deep inside; the records already stored stay."""
    real = _sqlite_long.stored_size
    monkeypatch.setattr(_sqlite_long, "stored_size", lambda value, codec: real(value, codec) + off)
    with _open(tmp_path / "m.db", None) as store:
        ctx = store.get_or_create_context("long")
        kept = store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "short"))
        with pytest.raises(rxcontext.StoreError, match="not stored") as raised:
            store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, UNIT * 20))
        assert not isinstance(raised.value, AssertionError)
        assert store.records(ctx.id) == [kept]
