"""Middleware hooks through the real ``openai`` SDK on the replay transport: a hook's own
exception is never a reason to send the request again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from provider_rules import model_for
from replay import Replay, real_fixture

from rxcontext import (
    Chunk,
    ContextWindow,
    RecordType,
    RetryPolicy,
    StreamInterrupted,
    Timeouts,
)
from rxcontext import operators as rxops

RECORDED = "openai_chat/azure_prompt_filter_results.sse"
# Three tries, no waiting to speak of: a retry, if one were made, would show as a request.
RETRIES = RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=0.0)


def window(store: Any, replay: Replay, **kw: Any) -> ContextWindow:
    cw = ContextWindow(store, model_for("chat", replay), "hooks", retry=RETRIES, **kw)
    cw.add_prompt("hello")
    return cw


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.records() if r.type is RecordType.MODEL_RESP]


def consume(cw: ContextWindow, path: str, *hooks: rxops.Middleware) -> list[Chunk]:
    """Run one reply on ``path``; the chunks the consumer got (raises what it raised)."""
    got: list[Chunk] = []
    if path == "call":
        cw.call(*hooks)
    elif path == "stream":
        errors: list[Exception] = []
        cw.stream(*hooks).subscribe(got.append, errors.append)
        if errors:
            raise errors[0]
    elif path == "acall":
        asyncio.run(cw.acall(*hooks))
    else:

        async def iterate() -> None:
            async for chunk in cw.astream(*hooks):
                got.append(chunk)

        asyncio.run(iterate())
    return got


# -- a hook's exception is not the provider's -------------------------------------------------


@pytest.mark.parametrize("path", ["call", "stream", "acall", "astream"])
@pytest.mark.parametrize("error", [ConnectionRefusedError, TimeoutError])
@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
def test_a_hook_raising_a_connection_error_is_not_retried(
    make_store: Callable[..., Any], path: str, error: type[Exception], timed: bool
) -> None:
    replay = Replay(*[real_fixture(RECORDED)] * 3)
    cw = window(make_store(), replay, timeouts=Timeouts(idle=600) if timed else None)
    webhook = error("my audit webhook is down")
    calls: list[Chunk] = []

    def on_chunk(chunk: Chunk) -> None:
        calls.append(chunk)
        raise webhook

    with pytest.raises(StreamInterrupted) as info:
        consume(cw, path, rxops.middleware(on_chunk=on_chunk))
    assert info.value.__cause__ is webhook
    assert len(replay.requests) == 1 and len(calls) == 1
    assert info.value.checkpoint.text == ""  # the hook raised before its chunk was delivered
    assert replies(cw) == []


@pytest.mark.parametrize("timed", [False, True], ids=["untimed", "timed"])
def test_a_subscriber_raising_a_connection_error_is_not_retried(
    make_store: Callable[..., Any], timed: bool
) -> None:
    replay = Replay(*[real_fixture(RECORDED)] * 3)
    cw = window(make_store(), replay, timeouts=Timeouts(idle=600) if timed else None)
    refused = ConnectionRefusedError("my UI's socket is gone")
    got: list[Chunk] = []

    def on_next(chunk: Chunk) -> None:
        got.append(chunk)
        raise refused

    with pytest.raises(ConnectionRefusedError) as info:
        cw.stream().subscribe(on_next)
    assert info.value is refused
    assert len(replay.requests) == 1 and len(got) == 1
    [checkpoint] = cw.checkpoints()
    assert checkpoint.text == got[0].text
