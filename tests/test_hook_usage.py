"""Middleware hooks (and ``summarize(on_chunk=)``) see the USAGE chunks the subscriber
gets: after a billed attempt sent again, or in a resume, they carry what the reply was
billed before, so a fold of what a hook saw counts the usage the reply is stored with,
once (the README: billed usage "is counted, in the USAGE chunks you get too"). Real
Anthropic SDK over recorded wire bytes (tests/replay.py), sync and asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from replay import Replay, real_fixture
from stores import open_store
from test_budget_unsettled import BILLED, RECORDED, billed_then_overloaded, model

from rxcontext import Chunk, ContextWindow, RetryPolicy, StreamInterrupted
from rxcontext import operators as rxops
from rxcontext.chunks import ReplyBuilder

RETRY = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)
STORED = BILLED + 1 + 17 + 10
"""What the reply is billed in all: the cut attempt (1,000 in, 1 out), the recording's
(17 in, 10 out)."""


def folded(chunks: Sequence[Chunk]) -> int:
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    usage = builder.build().usage
    assert usage is not None
    return usage.total_tokens


def window(replay: Replay, retry: RetryPolicy | None) -> ContextWindow:
    cw = ContextWindow(open_store(), model(replay), retry=retry)
    cw.add_prompt("Hello")
    return cw


def run(cw: ContextWindow, path: str, checkpoint_id: int | None) -> tuple[list[Chunk], ...]:
    hooked: list[Chunk] = []
    got: list[Chunk] = []
    hook = rxops.middleware(on_chunk=hooked.append)
    if path == "sync":
        if checkpoint_id is None:
            cw.stream(hook).subscribe(got.append)
        else:
            cw.resume(checkpoint_id, hook).subscribe(got.append)
    else:

        async def read() -> None:
            it = cw.astream(hook) if checkpoint_id is None else cw.aresume(checkpoint_id, hook)
            async for chunk in it:
                got.append(chunk)

        asyncio.run(read())
    return hooked, got


@pytest.mark.usefixtures("both_stores")
@pytest.mark.parametrize("path", ["sync", "async"])
@pytest.mark.parametrize("how", ["sent again", "resumed"])
def test_a_hook_folds_the_usage_the_subscriber_and_the_store_count(path: str, how: str) -> None:
    replay = Replay(billed_then_overloaded(), real_fixture(RECORDED))
    cut: int | None = None
    if how == "sent again":
        cw = window(replay, RETRY)
    else:
        cw = window(replay, None)
        with pytest.raises(StreamInterrupted) as interrupted:
            cw.call()
        cut = interrupted.value.checkpoint.id
    hooked, got = run(cw, path, cut)
    assert folded(got) == STORED == cw.stats().usage.total_tokens
    assert folded(hooked) == STORED
    usage = [c for c in got if c.usage is not None]
    assert [c for c in hooked if c.usage is not None] == usage  # the very same chunks


@pytest.mark.parametrize("path", ["sync", "async"])
def test_summarize_on_chunk_folds_what_the_summary_was_billed(path: str) -> None:
    replay = Replay(real_fixture(RECORDED), billed_then_overloaded(), real_fixture(RECORDED))
    cw = window(replay, RETRY)
    cw.call()
    before = cw.stats().usage.total_tokens
    got: list[Chunk] = []
    if path == "sync":
        cw.summarize(on_chunk=got.append)
    else:
        asyncio.run(cw.asummarize(on_chunk=got.append))
    assert folded(got) == STORED == cw.stats().usage.total_tokens - before
