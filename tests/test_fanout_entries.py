"""A chunk's compact JSON form in a live log (``rxcontext.fanout.entries``) round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxcontext import Chunk, ChunkKind, Usage
from rxcontext.fanout.entries import decode_chunk, dumps, encode_chunk

_text = st.text(max_size=20)
_maybe = st.none() | _text
_count = st.integers(min_value=0, max_value=2**40)
_usage = st.none() | st.builds(Usage, _count, _count, _count, _count, _count, _count)
_metadata = st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | _text, max_size=3)

chunks = st.builds(
    Chunk,
    st.sampled_from(list(ChunkKind)),
    _text,
    st.integers(min_value=0, max_value=1000),
    _maybe,
    _maybe,
    _usage,
    _maybe,
    _maybe,
    _metadata,
)


@given(chunks)
def test_a_chunk_comes_back_from_its_log_form_as_it_was(chunk: Chunk) -> None:
    assert decode_chunk(json.loads(dumps(encode_chunk(chunk)))) == chunk


def test_a_text_delta_is_two_fields_and_comes_back_with_its_kind() -> None:
    for kind in (ChunkKind.TEXT, ChunkKind.THINKING):
        encoded = encode_chunk(Chunk(kind, "word "))
        assert encoded == [kind.value, "word "]
        back = decode_chunk(encoded)
        assert back.kind is kind and back.text == "word " and back.metadata == {}


@pytest.mark.parametrize("data", [["sound", "x"], ["sound"], [None, "x"], [["text"], "x"], []])
def test_an_unknown_kind_is_a_value_error(data: list[object]) -> None:
    with pytest.raises(ValueError):
        decode_chunk(data)


@pytest.mark.parametrize("text", ["\ud83d", "\ude00", "smile \ud83d", "\ude00 and é 日本"])
def test_a_lone_surrogate_comes_back_as_it_was_in_valid_utf8(text: str) -> None:
    """Half an emoji cut between two deltas: no UTF-8 can hold it, so its entry is escaped
    JSON (the Redis client refused it, and with it the writer's whole pipeline)."""
    for chunk in (Chunk(ChunkKind.TEXT, text), Chunk(ChunkKind.TEXT, text, metadata={"k": text})):
        data = dumps([encode_chunk(chunk)])
        data.decode("utf-8")  # what Redis is given is valid UTF-8
        assert [decode_chunk(c) for c in json.loads(data)] == [chunk]
    assert dumps(["é"]) == '["é"]'.encode()  # other text is sent as it is, not escaped
