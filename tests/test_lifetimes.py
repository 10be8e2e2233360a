"""What outlives what: a closed store is not kept alive by the library, and bad scripts are
refused where they are written, not deep inside a stream."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import redistest

import rxcontext
from rxcontext import Chunk, ChunkKind, ContextWindow
from rxcontext.providers import ScriptedModel


@pytest.fixture
def redis_prefix() -> Iterator[tuple[str, str]]:
    yield from redistest.shared_prefix()


@pytest.mark.parametrize("fanout", [None, "memory", "redis"])
def test_a_closed_store_that_served_replies_can_be_collected(
    fanout: str | None, request: pytest.FixtureRequest
) -> None:
    # The heartbeat and checkpointer registries are keyed weakly by store: their values
    # must not hold the store strongly, or every store a long-running app opens and closes
    # stays in memory (with its fan-out and stop listener).
    attached: object = fanout
    if fanout == "redis":
        from rxcontext.fanout.redis import RedisFanout

        url, prefix = request.getfixturevalue("redis_prefix")
        attached = RedisFanout(url, prefix=prefix)
    store = rxcontext.open(":memory:", fanout=attached)  # type: ignore[arg-type]
    cw = ContextWindow(store, ScriptedModel([[Chunk(ChunkKind.TEXT, "hi")]]))
    cw.add_prompt("x")
    assert cw.call().text == "hi"
    store.close()
    ref = weakref.ref(store)
    del store, cw
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("bad", [["hello"], [[Chunk(ChunkKind.TEXT, "a"), "b"]], "abc", [42]])
def test_a_script_that_is_not_chunks_is_refused_when_made(bad: object) -> None:
    with pytest.raises(TypeError, match="ScriptedModel"):
        ScriptedModel(bad)  # type: ignore[arg-type]
