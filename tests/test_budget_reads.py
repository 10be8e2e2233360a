"""What a budget check reads: the context's settled totals and its unsettled replies'
usage, in one snapshot, never their text.

A budget check runs before every request of a window with a budget. It counts what the
context's unsettled replies (interrupted, or under way) were billed, which their rows
carry beside their text: a long reply cut, or one streaming now, must not cost every
request its text (10 MB read per request, twice for a streaming one). And a resume
claiming a reply, or a reply settling, while the check reads must not make its billing
drop out of what the check counts. Real SDKs over recorded wire bytes (tests/replay.py),
both stores.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import psycopg
import pytest
from psycopg import pq
from replay import Replay, real_fixture

import rxcontext
from rxcontext import Budget, BudgetExceeded, ContextWindow, ReplyState, Usage
from rxcontext.providers import AnthropicModel
from rxcontext.store import CheckpointDraft, ReplyTicket
from rxcontext.store.owner import worker_id

KEY = "sk-ant-test-0123456789"
RECORDED = "anthropic/text_basic_sonnet45.sse"
MARK = "unsettled-text-never-read;"
"""What the unsettled replies' text is made of (found in what the store read, if read)."""
BILLED = Usage(input_tokens=1000, output_tokens=1, total_tokens=1001)


def model(replay: Replay) -> AnthropicModel:
    return AnthropicModel(
        "claude-sonnet-4-5",
        client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
    )


@contextmanager
def reads(store: Any, tmp_path: Path) -> Iterator[list[str]]:
    """What the store reads meanwhile, there once it ends: SQLite's statements (its trace
    callback), or every message PostgreSQL sent (libpq's trace of the pool's one
    connection: the rows' data too)."""
    seen: list[str] = []
    if isinstance(store, rxcontext.SQLiteStore):
        db = store._db()
        db.set_trace_callback(seen.append)
        try:
            yield seen
        finally:
            db.set_trace_callback(None)
        return
    path = tmp_path / "pq.trace"
    with path.open("w") as out:
        with store._runner.pool().connection() as conn:
            conn.pgconn.trace(out.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            yield seen
        finally:
            with store._runner.pool().connection() as conn:
                conn.pgconn.untrace()  # (flushes it)
    seen.append(path.read_text(errors="replace"))


def read_text(store: Any, seen: list[str]) -> bool:
    """Whether ``seen`` (see :func:`reads`) shows an unsettled reply's text read."""
    if isinstance(store, rxcontext.SQLiteStore):
        selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
        return any(
            "checkpoint_parts" in s or re.search(r"\btext\b", s.split("FROM")[0]) for s in selects
        )
    return any(MARK in s for s in seen)


def unsettled(store: Any, context_id: str, reply_id: str, state: ReplyState | None) -> None:
    """A reply of ``context_id`` billed :data:`BILLED` with a long text: streaming (``state``
    None) or interrupted."""
    row = store.begin_reply(context_id, reply_id, owner=worker_id())
    ticket = ReplyTicket(row.id, row.epoch, row.owner)
    meta = {"model": "claude-sonnet-4-5", "provider": "anthropic"}
    draft = CheckpointDraft(MARK * 3000, usage=BILLED, chunks=1, metadata=meta)
    for _ in range(4):
        assert store.save_checkpoint(ticket, draft)
    if state is not None:  # (its other fields are written again as they are)
        assert store.save_checkpoint(ticket, replace(draft, append_text=""), state=state)


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_budget_check_reads_no_text_of_unsettled_replies(
    make_store: Callable[..., Any], store_kind: str, tmp_path: Path, path: str
) -> None:
    store = make_store(pool_size=1) if store_kind == "postgres" else make_store()
    cw = ContextWindow(store, model(Replay(real_fixture(RECORDED))), context="spent")
    cw.add_prompt("Hello there, " * 40)  # its estimate is over the 5 tokens left
    unsettled(store, cw.context.id, "cut", ReplyState.INTERRUPTED)
    unsettled(store, cw.context.id, "streaming", None)
    assert MARK * 3 in cw.checkpoints()[0].text  # (what a read of the text would find)
    cw.budget = Budget(max_tokens=2 * BILLED.total_tokens + 5)
    with reads(store, tmp_path) as seen, pytest.raises(BudgetExceeded) as refused:
        if path == "sync":
            cw.call()
        else:
            asyncio.run(cw.acall())
    assert refused.value.spent == 2 * BILLED.total_tokens  # both counted
    assert seen, "nothing traced"
    assert not read_text(store, seen)


@contextmanager
def before_each_select(store: Any, act: Callable[[int], None]) -> Iterator[None]:
    """Call ``act(n)`` as the store starts its ``n``-th SELECT (0, 1, …) meanwhile: what
    another worker does between the reads of one check (SQLite's trace callback, which runs
    as a statement starts; on PostgreSQL the cursor of the pool's one connection)."""
    count = [0]

    def seen(sql: str) -> None:
        if sql.lstrip()[:6].upper() == "SELECT":
            count[0] += 1
            act(count[0] - 1)

    if isinstance(store, rxcontext.SQLiteStore):
        db = store._db()
        db.set_trace_callback(seen)
        try:
            yield
        finally:
            db.set_trace_callback(None)
        return

    class Watched(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            seen(query if isinstance(query, str) else query.as_string(self))
            return super().execute(query, *args, **kwargs)

    with store._runner.pool().connection() as conn:
        plain = conn.cursor_factory
        conn.cursor_factory = Watched
    try:
        yield
    finally:
        with store._runner.pool().connection() as conn:
            conn.cursor_factory = plain


@pytest.mark.parametrize("other", ["claims", "discards", "keeps"])
def test_a_budget_check_counts_a_reply_another_worker_resumes_or_settles_meanwhile(
    target: str, other: str
) -> None:
    """Another worker claims the context's interrupted reply for a resume (or settles it)
    as the check reads, before each of its reads in turn: the reply's billing is counted
    once, before the claim or after it, never dropped (the check reads one snapshot)."""
    options = {"pool_size": 1} if target.startswith("postgresql") else {}
    store = rxcontext.open(target, **options)
    worker = rxcontext.open(target)
    try:
        landed: list[int] = []
        for at in range(64):
            cw = ContextWindow(store, model(Replay(real_fixture(RECORDED))), context=f"c{at}")
            cw.add_prompt("Hello there, " * 40)
            unsettled(store, cw.context.id, f"cut{at}", ReplyState.INTERRUPTED)
            (cut,) = cw.checkpoints()
            cw.budget = Budget(max_tokens=BILLED.total_tokens + 5)

            def act(n: int, at: int = at, cut_id: int = cut.id) -> None:
                if n != at:
                    return
                landed.append(at)
                if other == "claims":
                    worker.claim_checkpoint(cut_id, owner="worker-1")
                elif other == "discards":
                    worker.discard_checkpoint(cut_id)
                else:
                    worker.keep_checkpoint(cut_id)

            with before_each_select(store, act), pytest.raises(BudgetExceeded) as refused:
                cw.call()
            assert refused.value.spent == BILLED.total_tokens, f"landing before read {at}"
            if not landed or landed[-1] != at:
                break  # the check made fewer reads: each gap was tried
        assert landed
    finally:
        worker.close()
        store.close()
