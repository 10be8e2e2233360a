"""Ids no context or checkpoint can have get the same answer from both stores.

A context id with NUL in it (taken from a request, say) was "not found" on SQLite but a
generic ``StoreError`` on PostgreSQL ("PostgreSQL text fields cannot contain NUL (0x00)
bytes"), whose ``text`` cannot hold one; a checkpoint id ``True`` was read as checkpoint 1
by SQLite and was a ``StoreError`` on PostgreSQL ("operator does not exist: bigint =
boolean"), ``"abc"`` or ``b"1"`` likewise. Now such an id is answered as a missing one on
both: what SQLite answers for an id nobody has (``ContextNotFound``, an empty list...), and
``CheckpointNotFound`` for a checkpoint id that is not an int.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from rxcontext import (
    CheckpointNotFound,
    ContextNotFound,
    ContextWindow,
    RecordType,
    ReplyState,
)
from rxcontext.store import CheckpointDraft, RecordDraft, ReplyTicket
from rxcontext.store.owner import worker_id

P = RecordDraft(RecordType.PROMPT, "x")
R = RecordDraft(RecordType.MODEL_RESP, "x")
MISSING = "no context with id {!r}"
DELETED = "no context with id {!r} (was it deleted?)"

# Every method of the store that takes a context id, and what both answer for one that
# names no context: an exception's message, or the value returned.
BY_CONTEXT_ID: dict[str, tuple[Callable[[Any, Any], object], object]] = {
    "get_context": (lambda s, c: s.get_context(c), MISSING),
    "delete_context": (lambda s, c: s.delete_context(c), MISSING),
    "clone_context": (lambda s, c: s.clone_context(c, "copy"), MISSING),
    "export_context": (lambda s, c: s.export_context(c), MISSING),
    "context_stats": (lambda s, c: s.context_stats(c), MISSING),
    "set_threading": (lambda s, c: s.set_threading(c, True), MISSING),
    "live_tokens": (lambda s, c: s.live_tokens(c), MISSING),
    "set_last_response_id": (lambda s, c: s.set_last_response_id(c, "r"), None),
    "add_record": (lambda s, c: s.add_record(c, P), DELETED),
    "records": (lambda s, c: s.records(c), []),
    "records live_only": (lambda s, c: s.records(c, live_only=True, upto=5), []),
    "history": (lambda s, c: s.history(c), DELETED),
    "import_records": (lambda s, c: s.import_records(c, [P]), DELETED),
    "set_live_range": (lambda s, c: s.set_live_range(c, 0, 0, False), IndexError),
    "replace_system_prompt": (lambda s, c: s.replace_system_prompt(c, "x"), DELETED),
    "replace_records": (lambda s, c: s.replace_records(c, [1], R), DELETED),
    "commit_reply": (lambda s, c: s.commit_reply(c, [R]), DELETED),
    "set_context_tool": (lambda s, c: s.set_context_tool(c, "t", {}), DELETED),
    "context_tools": (lambda s, c: s.context_tools(c), []),
    "remove_context_tool": (lambda s, c: s.remove_context_tool(c, "t"), False),
    "begin_reply": (lambda s, c: s.begin_reply(c, "r", owner=worker_id()), DELETED),
    "checkpoints": (lambda s, c: s.checkpoints(c, include_resolved=True), []),
    "active_replies": (lambda s, c: s.active_replies(c), []),
    "busy_reply_ids": (lambda s, c: s.busy_reply_ids(c), set()),
}


@pytest.mark.parametrize(
    "bad", ["abc\x00", "\x00", 7, None], ids=["nul", "only-nul", "int", "none"]
)
@pytest.mark.parametrize("method", sorted(BY_CONTEXT_ID))
def test_a_context_id_no_context_can_have_is_not_found_on_both_stores(
    make_store: Callable[..., Any], method: str, bad: object
) -> None:
    store = make_store()
    ctx = store.get_or_create_context("main")
    store.add_record(ctx.id, P)
    call, expected = BY_CONTEXT_ID[method]
    if expected is IndexError:
        with pytest.raises(IndexError, match=r"outside 0\.\.-1"):
            call(store, bad)
    elif isinstance(expected, str):
        with pytest.raises(ContextNotFound) as missing:
            call(store, bad)
        assert str(missing.value) == expected.format(bad)
    else:
        assert call(store, bad) == expected
    assert [c.name for c in store.list_contexts()] == ["main"]  # nothing else changed
    assert [r.content for r in store.records(ctx.id)] == ["x"]


def interrupted(store: Any, context_id: str) -> int:
    begun = store.begin_reply(context_id, "r-1", owner=worker_id())
    ticket = ReplyTicket(begun.id, begun.epoch)
    assert store.save_checkpoint(ticket, CheckpointDraft("part"), state=ReplyState.INTERRUPTED)
    return int(begun.id)


BY_CHECKPOINT_ID: dict[str, Callable[[Any, ContextWindow, Any], object]] = {
    "get_checkpoint": lambda s, cw, i: s.get_checkpoint(i),
    "claim_checkpoint": lambda s, cw, i: s.claim_checkpoint(i, owner=worker_id()),
    "discard_checkpoint": lambda s, cw, i: s.discard_checkpoint(i),
    "keep_checkpoint": lambda s, cw, i: s.keep_checkpoint(i),
    "cw.keep": lambda s, cw, i: cw.keep(i),
    "cw.discard": lambda s, cw, i: cw.discard(i),
}


@pytest.mark.parametrize("method", sorted(BY_CHECKPOINT_ID))
def test_a_checkpoint_id_that_is_not_an_int_is_not_found_on_both_stores(
    make_store: Callable[..., Any], method: str
) -> None:
    """``True`` is not checkpoint 1 (SQLite read it as 1 and settled that checkpoint), nor
    are ``"1"`` or ``1.0``: a checkpoint id is an int."""
    store = make_store()
    cw = ContextWindow(store, context="main")
    cw.add_prompt("hi")
    cp_id = interrupted(store, cw.context_id)
    bads: list[object] = [str(cp_id), float(cp_id), b"1", "abc", "1\x00", None, 2**70]
    if cp_id == 1:
        bads.append(True)
    for bad in [*bads, False]:
        with pytest.raises(CheckpointNotFound, match=re.escape(f"no checkpoint with id {bad!r}")):
            BY_CHECKPOINT_ID[method](store, cw, bad)
    untouched = store.get_checkpoint(cp_id)
    assert untouched.state is ReplyState.INTERRUPTED and untouched.epoch == 1
    assert untouched.text == "part"
