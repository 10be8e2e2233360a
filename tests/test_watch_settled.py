"""Watching a cut reply after it was settled: discarded, or kept.

A watcher ends on what the reply's final state says. A discarded reply's row still holds
what its owner delivered (its checkpoint): a late watcher used to show the live log's
text, then REWIND(0) to nothing (its thinking kept), then raise StreamInterrupted whose
checkpoint held the very text it had taken back; with no fan-out it showed nothing at
all. A kept reply's record now keeps its thinking, as a completed reply's does: watchers
used to end with thinking the record did not have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redistest
from watching import WAIT, AsyncWatcher, Owner, Watcher

from rxcontext import Chunk, ChunkKind, ContextWindow, RecordType, ReplyState, StreamInterrupted
from rxcontext.chunks import ReplyBuilder
from rxcontext.providers import ScriptedModel

T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
H = lambda text: Chunk(ChunkKind.THINKING, text)  # noqa: E731
TEXT = "".join(f"x{i}ü " for i in range(6))


@pytest.fixture(params=["memory", "redis", "none"])
def fanout_spec(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "none":
        yield None
    else:
        pytest.importorskip("redis")
        from rxcontext.fanout.redis import RedisFanout

        for url, prefix in redistest.shared_prefix():
            fanout = RedisFanout(url, prefix=prefix)
            yield fanout
            fanout.close()


@pytest.fixture(params=[Watcher, AsyncWatcher], ids=["watch", "awatch"])
def watching(request: pytest.FixtureRequest) -> type[Watcher]:
    return request.param  # type: ignore[no-any-return]


def _cut(make_store: Callable[..., Any], fanout: Any) -> ContextWindow:
    """A reply that thought, wrote TEXT and was cut by its provider: interrupted."""
    cut = [H("pondering "), H("more "), *(T(f"x{i}ü ") for i in range(6))]
    cut.append(ConnectionError("the provider hung up"))  # type: ignore[arg-type]
    store = make_store(fanout=fanout)
    cw = ContextWindow(store, ScriptedModel([cut]), context="settled", retry=None)
    cw.add_prompt("Think, then write.")
    owner = Owner(cw, "r").start()
    owner.join()
    assert isinstance(owner.error, StreamInterrupted)
    if hasattr(fanout, "drain"):
        assert fanout.drain(WAIT)  # the whole log is in Redis: a late watcher reads it
    return cw


def _ended_with(watcher: Watcher) -> tuple[str, str]:
    builder = ReplyBuilder()
    for chunk in watcher.chunks:
        builder.add(chunk)
    return builder.text, builder.thinking


def test_a_late_watcher_of_a_discarded_reply_ends_with_its_checkpoint(
    make_store: Callable[..., Any], fanout_spec: Any, watching: type[Watcher]
) -> None:
    cw = _cut(make_store, fanout_spec)
    (checkpoint,) = cw.checkpoints()
    assert checkpoint.text == TEXT and checkpoint.thinking == "pondering more "
    cw.discard(checkpoint.id)
    watcher = watching(cw, "r", poll=0.02).start().join()
    assert isinstance(watcher.error, StreamInterrupted)
    settled = watcher.error.checkpoint
    assert settled.state is ReplyState.DISCARDED
    # What it shows last is the checkpoint it raises: what the owner delivered.
    assert _ended_with(watcher) == (settled.text, settled.thinking) == (TEXT, "pondering more ")
    assert [c for c in watcher.chunks if c.kind is ChunkKind.REWIND] == []


def test_a_kept_reply_keeps_its_thinking_and_its_watchers_end_with_the_record(
    make_store: Callable[..., Any], fanout_spec: Any, watching: type[Watcher]
) -> None:
    cw = _cut(make_store, fanout_spec)
    (checkpoint,) = cw.checkpoints()
    kept = cw.keep(checkpoint.id)
    # Kept like a completed reply: its text, and its thinking in metadata["thinking"].
    assert kept.content == TEXT and kept.metadata["thinking"] == "pondering more "
    (stored,) = [r for r in cw.store.reply_records("r") if r.type is RecordType.MODEL_RESP]
    assert stored.metadata["thinking"] == "pondering more "
    watcher = watching(cw, "r", poll=0.02).start().join()
    assert watcher.completed and watcher.error is None
    assert _ended_with(watcher) == (stored.content, stored.metadata["thinking"])
    assert [c for c in watcher.chunks if c.kind is ChunkKind.REWIND] == []
