"""Context names, reply ids and tool names: one limit, 1,024 bytes of UTF-8, on both stores.

PostgreSQL's unique indexes on them hold a value of about 2.7 KB at most; past that it
refused the write with a bare index error (``index row size 3016 exceeds btree version 4
maximum 2704 for index "contexts_name_key"``) while SQLite stored it, so a database could
not move from one to the other. Now both refuse a longer one with the same ``ValueError``
before anything is written; longer ones an existing database already holds stay readable.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

import rxcontext
from rxcontext import ContextWindow, RecordType, SQLiteStore
from rxcontext.store import RecordDraft
from rxcontext.store.base import NAME_LIMIT
from rxcontext.store.owner import worker_id


def at_most(size: int, seed: int, alphabet: str = "") -> str:
    """An incompressible name of exactly ``size`` bytes of UTF-8 (CJK, then ASCII)."""
    rnd = random.Random(seed)
    chars = alphabet or "".join(chr(c) for c in range(0x4E00, 0x9FFF))
    out = "".join(rnd.choice(chars) for _ in range(size // 3))
    return out + "".join(rnd.choice("abcdefghij") for _ in range(size - len(out.encode())))


LONG = at_most(3000, 0)
"""1,000 CJK characters: 3,000 bytes of UTF-8 that PostgreSQL cannot compress into its
index (the reviewer's case)."""

WRITES: dict[str, Callable[[Any, str], object]] = {
    "get_or_create_context": lambda s, c: s.get_or_create_context(LONG),
    "create_context": lambda s, c: s.create_context(LONG),
    "import_context": lambda s, c: s.import_context(LONG, [RecordDraft(RecordType.PROMPT, "x")]),
    "clone_context": lambda s, c: s.clone_context(c, LONG),
    "begin_reply": lambda s, c: s.begin_reply(c, LONG, owner=worker_id()),
    "set_context_tool": lambda s, c: s.set_context_tool(c, LONG, {"type": "object"}),
    "ContextWindow": lambda s, c: ContextWindow(s, context=LONG),
    "cw.switch_context": lambda s, c: ContextWindow(s, context="a").switch_context(LONG),
    "cw.clone": lambda s, c: ContextWindow(s, context="a").clone(LONG),
    "cw.fork": lambda s, c: ContextWindow(s, context="a").fork(LONG, at=s.records(c)[0].id),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_name_over_the_limit_is_refused_alike_before_anything_is_written(
    make_store: Callable[..., Any], write: str
) -> None:
    store = make_store()
    context = store.get_or_create_context("a")
    store.add_record(context.id, RecordDraft(RecordType.PROMPT, "x"))
    before = store.records(context.id)
    with pytest.raises(ValueError, match=r"is 3,000 bytes of UTF-8, over the limit of 1,024") as e:
        WRITES[write](store, context.id)
    assert type(e.value) is ValueError
    what = {"begin_reply": "reply id", "set_context_tool": "tool name"}.get(write, "context name")
    assert what in str(e.value)
    assert [c.name for c in store.list_contexts()] == ["a"]
    assert store.records(context.id) == before
    assert store.context_tools(context.id) == []
    assert store.checkpoints(context.id, include_resolved=True) == []


def test_a_tool_name_over_the_limit_in_an_import_is_refused(make_store: Callable[..., Any]):
    store = make_store()
    with pytest.raises(ValueError, match=r"tool name is 3,000 bytes of UTF-8"):
        store.import_context("b", [RecordDraft(RecordType.PROMPT, "x")], tools=[(LONG, {})])
    assert store.list_contexts() == []


@pytest.mark.parametrize(
    "name",
    [
        at_most(NAME_LIMIT, 1),
        "\x00" * NAME_LIMIT,  # PostgreSQL stores each NUL as 4 bytes (pg_codec)
        "\uffff" * (NAME_LIMIT // 3),  # and this escape character as 6
        at_most(NAME_LIMIT, 2, "\x00\x00\x00\uffff" + "".join(map(chr, range(0x4E00, 0x4E40)))),
    ],
    ids=["cjk", "nul", "escape", "mixed"],
)
def test_a_name_at_the_limit_is_stored_everywhere(make_store: Callable[..., Any], name: str):
    assert len(name.encode()) <= NAME_LIMIT
    store = make_store()
    a = store.create_context(name)
    assert store.get_context_by_name(name).id == a.id
    assert ContextWindow(store, context=name).context_id == a.id
    clone = store.clone_context(a.id, name[:-1] + "!")
    begun = store.begin_reply(a.id, name, owner=worker_id())
    assert store.find_reply(name) == begun
    store.set_context_tool(clone.id, name, {"x": 1})
    assert [t["name"] for t in store.context_tools(clone.id)] == [name]
    assert store.import_context(name[:-1] + "?", [], tools=[(name, {})]).name == name[:-1] + "?"


def test_longer_names_a_database_already_holds_stay_readable(target: str) -> None:
    """Written before the limit (by SQLite; PostgreSQL took up to about 2.7 KB): read,
    opened and copied from as before; only new ones are refused."""
    old = at_most(2000, 3)
    with rxcontext.open(target) as store:
        ctx = store.get_or_create_context("a")
        if isinstance(store, SQLiteStore):
            conn = sqlite3.connect(target)
            conn.execute("UPDATE contexts SET name = ? WHERE id = ?", (old, ctx.id))
            conn.execute(
                "INSERT INTO context_tools (context_id, tool_name, created_at, definition)"
                " VALUES (?, ?, '2026-01-01T00:00:00+00:00', '{}')",
                (ctx.id, old),
            )
            conn.commit()
            conn.close()
        else:
            with store._runner.pool().connection() as conn:
                conn.execute("UPDATE contexts SET name = %s WHERE id = %s", (old, ctx.id))
                conn.execute(
                    "INSERT INTO context_tools (context_id, tool_name, definition)"
                    " VALUES (%s, %s, '{}')",
                    (ctx.id, old),
                )
        store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "hi"))
        assert store.get_or_create_context(old).id == ctx.id
        assert store.get_context_by_name(old).id == ctx.id
        cw = ContextWindow(store, context=old)
        assert cw.context_id == ctx.id
        assert [r.content for r in cw.records()] == ["hi"]
        assert [t["name"] for t in store.context_tools(ctx.id)] == [old]
        assert store.export_context(ctx.id)["context"]["name"] == old
        assert store.clone_context(ctx.id, "short").name == "short"
        assert store.remove_context_tool(ctx.id, old)
        with pytest.raises(ValueError, match="over the limit"):
            store.create_context(old + "x")


LONE = "reply-\udcff"
"""A name holding a lone surrogate (a URL path decoded with ``surrogateescape``, say): no
UTF-8 text, so no database can hold it."""


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_name_that_is_not_utf8_text_is_refused_alike_before_anything_is_written(
    make_store: Callable[..., Any], write: str
) -> None:
    global LONG
    store = make_store()
    context = store.get_or_create_context("a")
    store.add_record(context.id, RecordDraft(RecordType.PROMPT, "x"))
    before = store.records(context.id)
    saved, LONG = LONG, LONE  # the same writes, given the lone surrogate
    try:
        with pytest.raises(ValueError, match=r"not UTF-8 text \(a lone surrogate") as e:
            WRITES[write](store, context.id)
    finally:
        LONG = saved
    assert not isinstance(e.value, UnicodeError)  # a message of ours, not the codec's
    assert [c.name for c in store.list_contexts()] == ["a"]
    assert store.records(context.id) == before
    assert store.checkpoints(context.id, include_resolved=True) == []


def test_watching_or_stopping_a_reply_id_that_is_not_utf8_text_is_a_clear_error(
    make_store: Callable[..., Any],
) -> None:
    cw = ContextWindow(make_store(), context="a")
    for call in (lambda: cw.watch(LONE), lambda: cw.awatch(LONE), lambda: cw.stop(LONE)):
        with pytest.raises(ValueError, match=r"reply id is not UTF-8 text") as e:
            call()
        assert not isinstance(e.value, UnicodeError)
