"""Every recorded provider stream, through its real SDK (over an httpx2 mock transport),
watched while it streams: the watcher ends with exactly the stored record (or, for a
stream that fails, the checkpoint), and with a live fan-out it gets the owner's chunks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redistest
from provider_rules import model_for
from replay import Replay, real_files
from watching import Owner, Watcher, stored_text

import rxcontext
from rxcontext import ContextWindow, StreamInterrupted
from rxcontext.chunks import ReplyBuilder

pytestmark = pytest.mark.fixtures

_FOLDERS = {
    "chat": "openai_chat",
    "responses": "openai_responses",
    "anthropic": "anthropic",
    "gemini": "gemini",
}
_ROUND = re.compile(r"\.\d+\.sse$")


def _cases() -> list[Any]:
    out = []
    for kind, folder in _FOLDERS.items():
        for path in real_files(folder):
            if not _ROUND.search(path.name):  # one-response recordings
                out.append(pytest.param(kind, path, id=f"{kind}-{path.stem}"))
    if not out:
        out.append(
            pytest.param(
                "", Path(), marks=pytest.mark.skip(reason="../shared/fixtures/real is absent")
            )
        )
    return out


@pytest.fixture(params=["memory-sqlite", "redis-sqlite"])
def opened(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    """``(fan-out kind, store)``: the memory fan-out, and Redis (this test's own key prefix
    on the shared server), on SQLite (tests/test_watch.py covers both stores)."""
    kind, store_kind = str(request.param).split("-")
    url = str(request.getfixturevalue("pg_url")) if store_kind == "postgres" else ":memory:"
    if kind == "memory":
        store = rxcontext.open(url, fanout="memory")
        yield kind, store
        store.close()
        return
    from rxcontext.fanout.redis import RedisFanout

    for redis_url, prefix in redistest.shared_prefix():
        live = RedisFanout(redis_url, prefix=prefix)
        store = rxcontext.open(url, fanout=live)
        yield kind, store
        store.close()
        live.close()


def _summary(chunks: list[Any]) -> tuple[Any, ...]:
    builder = ReplyBuilder()
    for chunk in chunks:
        builder.add(chunk)
    reply = builder.build()
    calls = [(c.id, c.name, c.raw) for c in reply.tool_calls]
    return reply.text, reply.thinking, calls, reply.finish_reason, reply.response_id


@pytest.mark.parametrize(("kind", "path"), _cases())
def test_a_recorded_stream_watched_live_equals_the_stored_record(
    kind: str, path: Path, opened: tuple[str, Any]
) -> None:
    fanout, store = opened
    model = model_for(kind, Replay(path))
    cw = ContextWindow(store, model, context="recorded", retry=None)
    cw.add_prompt("Hello")
    owner = Owner(cw, "rec", hold=0).start()
    watcher = Watcher(cw, "rec", poll=0.05).start()
    owner.join()
    watcher.join()
    if isinstance(owner.error, StreamInterrupted):
        assert isinstance(watcher.error, StreamInterrupted)
        assert watcher.text == owner.error.checkpoint.text
    else:
        assert owner.error is None and watcher.error is None and watcher.completed
        assert watcher.text == stored_text(cw, "rec")
    if fanout == "memory":
        assert watcher.chunks[: len(owner.delivered)] == owner.delivered
    assert _summary(watcher.chunks)[:3] == _summary(owner.delivered)[:3]
