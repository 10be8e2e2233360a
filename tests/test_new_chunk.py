"""new_chunk / new_usage (the readers' cheap constructors) make the same values as the classes."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from rxcontext.chunks import Chunk, ChunkKind, Usage, new_chunk, new_usage

CASES = [
    ((ChunkKind.TEXT,), {}),
    ((ChunkKind.TEXT, "hello", 3), {}),
    ((ChunkKind.THINKING, "", 1), {"metadata": {"signature": "sig"}}),
    ((ChunkKind.TOOL_CALL, "{", 2), {"id": "call_1", "name": "get"}),
    ((ChunkKind.USAGE,), {"usage": Usage(1, 2, 3)}),
    ((ChunkKind.DONE,), {"finish_reason": "stop", "response_id": "r1", "usage": Usage(4, 5)}),
]


@pytest.mark.parametrize(("args", "kwargs"), CASES)
def test_new_chunk_is_the_chunk_the_class_makes(args: tuple, kwargs: dict) -> None:
    made, expected = new_chunk(*args, **kwargs), Chunk(*args, **kwargs)
    assert type(made) is Chunk
    assert made == expected
    assert repr(made) == repr(expected)
    assert pickle.loads(pickle.dumps(made)) == expected
    assert copy.copy(made) == expected
    assert dataclasses.replace(made, text="x") == dataclasses.replace(expected, text="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.text = "changed"  # type: ignore[misc]


def test_new_chunk_gives_each_chunk_its_own_metadata() -> None:
    a, b = new_chunk(ChunkKind.TEXT, "a"), new_chunk(ChunkKind.TEXT, "b")
    assert a.metadata == {} and a.metadata is not b.metadata


def test_new_usage_is_the_usage_the_class_makes() -> None:
    made, expected = new_usage(1, 2, 3, 4, 5, 6, 7), Usage(1, 2, 3, 4, 5, 6, 7)
    assert type(made) is Usage
    assert made == expected and hash(made) == hash(expected)
    assert made.to_dict() == expected.to_dict()
    assert made + expected == Usage(2, 4, 6, 8, 10, 12, 14)
    assert pickle.loads(pickle.dumps(made)) == expected
    assert new_usage() == Usage()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.input_tokens = 9  # type: ignore[misc]
