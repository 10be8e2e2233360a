"""Incremental history: a window re-reads only what changed since its last request, yet
never serves a stale list — whatever this or another process wrote meanwhile — and live
token totals kept on write always equal the sum over the live records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, SQLiteStore
from rxcontext.history import HistoryCache
from rxcontext.providers import ScriptedModel
from rxcontext.store import RecordDraft, ReplyTicket
from rxcontext.store.owner import worker_id
from rxcontext.window import HISTORY_CACHES

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("prompt"), st.text(max_size=30), st.booleans()),
        st.tuples(st.just("reply"), st.text(max_size=30), st.booleans()),
        st.tuples(st.just("live"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("system"), st.text(max_size=10), st.booleans()),
        st.tuples(st.just("summary"), st.integers(0, 30), st.booleans()),
        st.tuples(st.just("in-place"), st.text(max_size=10), st.booleans()),
        st.tuples(st.just("read"), st.integers(-1, 40), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=60)
@given(ops=OPS)
def test_the_cache_always_equals_a_full_read(tmp_path_factory, ops):
    path: Path = tmp_path_factory.mktemp("h") / "h.db"
    mine = rxcontext.open(path)
    other = rxcontext.open(path)  # another process's connection, writing behind our back
    assert isinstance(mine, SQLiteStore)
    ctx = mine.get_or_create_context("c")
    cache = HistoryCache(mine, ctx.id)
    reads = 0
    for n, (op, arg, by_other) in enumerate(ops):
        store = other if by_other else mine
        if op == "prompt":
            store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, arg or "p"))
        elif op == "reply":
            store.commit_reply(ctx.id, [RecordDraft(RecordType.MODEL_RESP, arg)])
        elif op == "live":
            n = len(store.records(ctx.id))
            if n:
                store.set_live_range(ctx.id, arg % n, arg % n, not by_other)
        elif op == "system":
            store.replace_system_prompt(ctx.id, arg)
        elif op == "summary":
            live = [r for r in store.records(ctx.id, live_only=True)][: 1 + arg % 3]
            if live:
                store.replace_records(
                    ctx.id, [r.id for r in live], RecordDraft(RecordType.MODEL_RESP, "sum")
                )
        elif op == "in-place":
            # A reply stored at an earlier place (a resume, a keep): not at the end.
            begun = store.begin_reply(ctx.id, f"r{n}", owner=worker_id())
            store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "after"))
            store.commit_reply(
                ctx.id,
                [RecordDraft(RecordType.MODEL_RESP, arg)],
                reply=ReplyTicket(begun.id, begun.epoch),
                end="reply",
            )
        else:
            reads += 1
            upto = None if arg < 0 else arg
            expected = mine.records(ctx.id, live_only=True, upto=upto)
            assert cache.live(upto) == expected
        assert cache.live() == mine.records(ctx.id, live_only=True)
        assert mine.live_tokens(ctx.id) == sum(
            r.est_tokens for r in mine.records(ctx.id, live_only=True)
        )
    other.close()
    mine.close()


def test_an_unchanged_history_costs_one_small_read(tmp_path):
    store = rxcontext.open(tmp_path / "h.db")
    ctx = store.get_or_create_context("c")
    for i in range(200):
        store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, f"p{i}"))
    cache = HistoryCache(store, ctx.id)
    assert len(cache.live()) == 200
    statements: list[str] = []
    store._db().set_trace_callback(statements.append)
    assert len(cache.live()) == 200
    assert len(statements) == 1 and "version" in statements[0]  # nothing re-read
    store.add_record(ctx.id, RecordDraft(RecordType.PROMPT, "new"))
    statements.clear()
    assert [r.content for r in cache.live()][-2:] == ["p199", "new"]
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    # The version and the one new record, in one statement (one snapshot).
    assert len(reads) == 1 and "version" in reads[0] and "rev > " in reads[0]
    store.close()


def caches_of(cw: ContextWindow) -> set[str]:
    """The ids of the contexts whose history the window holds. (Its own: a window of
    another context whose reply just ended can be held a moment longer by the heartbeat
    thread, so counting every HistoryCache in the process would not say what this one
    keeps.)"""
    return {cache.context_id for cache in cw._histories.values()}


def write_elsewhere(store: Any, name: str) -> None:
    """Another window adds a prompt and a reply to context ``name``."""
    other = ContextWindow(store, ScriptedModel([[Chunk(ChunkKind.TEXT, "b")]]), context=name)
    other.add_prompt("from elsewhere")
    other.call()


def test_a_window_moving_across_contexts_keeps_a_bounded_number_of_histories(target: str):
    """One window used for many contexts (the CLI's /switch, a server reusing a window)
    kept the whole live history of every context it ever sent a request for, deleted ones
    too: 40 contexts of 150 records held 15 MB after all were deleted. It keeps a few (the
    most recently used) and drops a context's when the context is deleted through it; a
    request after switching back still sends exactly the stored live history."""
    store = rxcontext.open(target)
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "ok")]], repeat_last=True)
    cw = ContextWindow(store, model, context="home", checkpoint_every=None)
    names = [f"conv-{i}" for i in range(3 * HISTORY_CACHES)]
    for name in names:
        cw.switch_context(name)
        cw.add_prompt(f"hello {name}")
        cw.call()
    ids = {name: store.get_context_by_name(name).id for name in names}
    held = caches_of(cw)
    assert 0 < len(held) <= HISTORY_CACHES
    assert ids[names[-1]] in held  # the current context's is kept
    for name in (names[0], names[-1], names[0]):  # one evicted long ago, one cached, again
        write_elsewhere(store, name)
        cw.switch_context(name)
        cw.add_prompt("back again")
        expected = store.records(ids[name], live_only=True)
        cw.call()
        assert model.requests[-1].records == expected
        assert len(caches_of(cw)) <= HISTORY_CACHES
    cw.switch_context("home")
    for name in names:
        cw.delete_context(name)
    assert caches_of(cw) <= {cw.context_id}
    store.close()
