"""Bad scripts are refused where they are written, not deep inside a stream."""

from __future__ import annotations

import pytest

from rxcontext import Chunk, ChunkKind
from rxcontext.providers import ScriptedModel


@pytest.mark.parametrize("bad", [["hello"], [[Chunk(ChunkKind.TEXT, "a"), "b"]], "abc", [42]])
def test_a_script_that_is_not_chunks_is_refused_when_made(bad: object) -> None:
    with pytest.raises(TypeError, match="ScriptedModel"):
        ScriptedModel(bad)  # type: ignore[arg-type]
