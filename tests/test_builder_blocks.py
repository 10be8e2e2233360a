"""ReplyBuilder keeps long replies compact (deltas joined in blocks) without changing them,
and Chunk's hand-written constructor behaves as the dataclass one did."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxcontext import Chunk, ChunkKind
from rxcontext.chunks import _COALESCE, ReplyBuilder

_step = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=4)),
    st.tuples(st.just("thinking"), st.text(max_size=4)),
    st.tuples(st.just("build"), st.just("")),
)


@given(st.lists(_step, max_size=3 * _COALESCE))
def test_text_is_every_delta_in_order_whenever_it_is_read(steps: list[tuple[str, str]]) -> None:
    builder = ReplyBuilder()
    text: list[str] = []
    thinking: list[str] = []
    for kind, delta in steps:
        if kind == "text":
            builder.add(Chunk(ChunkKind.TEXT, delta))
            text.append(delta)
        elif kind == "thinking":
            builder.add(Chunk(ChunkKind.THINKING, delta))
            thinking.append(delta)
        else:
            reply = builder.build()
            assert (reply.text, reply.thinking) == ("".join(text), "".join(thinking))
    assert builder.text == "".join(text)
    reply = builder.build()
    assert (reply.text, reply.thinking) == ("".join(text), "".join(thinking))
    assert builder.chunks == sum(kind != "build" for kind, _ in steps)


def test_a_long_reply_is_held_in_blocks_not_deltas() -> None:
    builder = ReplyBuilder()
    for i in range(10 * _COALESCE + 3):
        builder.add(Chunk(ChunkKind.TEXT, str(i % 10)))
    assert len(builder._text) == 10 + 3  # ten blocks, three fresh deltas
    assert builder.text == "".join(str(i % 10) for i in range(10 * _COALESCE + 3))
    assert len(builder._text) == 1  # reading it leaves the joined text alone


def test_chunk_constructor_matches_the_dataclass_contract() -> None:
    chunk = Chunk(ChunkKind.TOOL_CALL, "{}", 2, "call_1", "f", metadata={"k": 1})
    assert (chunk.kind, chunk.text, chunk.index, chunk.id, chunk.name) == (
        ChunkKind.TOOL_CALL,
        "{}",
        2,
        "call_1",
        "f",
    )
    assert chunk == Chunk(
        kind=ChunkKind.TOOL_CALL, text="{}", index=2, id="call_1", name="f", metadata={"k": 1}
    )
    assert dataclasses.replace(chunk, text="[]").text == "[]"
    assert pickle.loads(pickle.dumps(chunk)) == chunk
    plain = Chunk(ChunkKind.TEXT)
    assert (plain.text, plain.index, plain.usage, plain.metadata) == ("", 0, None, {})
    assert Chunk(ChunkKind.TEXT).metadata is not plain.metadata  # a fresh dict each time
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.text = "x"  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(Chunk)] == list(Chunk.__match_args__)


def test_a_call_without_an_id_keeps_the_id_it_is_stored_with_in_every_round() -> None:
    """Providers that send no call id (Gemini, some OpenAI-compatible servers) get
    ``call_<index in its round>``, the id the store gives the call. A later round's call was
    shown as ``call_<index in the reply>`` until its round's DONE, then ``call_<index in its
    round>``: accumulate() showed one call under two ids."""
    builder = ReplyBuilder()
    seen: list[list[str]] = []
    for chunk in [
        Chunk(ChunkKind.TOOL_CALL, '{"q": 1}', index=0, name="a"),
        Chunk(ChunkKind.DONE, finish_reason="tool_calls"),
        Chunk(ChunkKind.TOOL_CALL, '{"q": 2}', index=0, name="b"),
        Chunk(ChunkKind.TEXT, "done"),
        Chunk(ChunkKind.DONE, finish_reason="stop"),
    ]:
        builder.add(chunk)
        seen.append([c.id for c in builder.build().tool_calls])
    assert seen == [["call_0"]] * 2 + [["call_0", "call_0"]] * 3
