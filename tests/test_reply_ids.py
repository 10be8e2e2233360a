"""Reply ids made when none is given: the text of a version-4 UUID, fresh every time."""

from __future__ import annotations

import uuid

from rxcontext import Chunk, ChunkKind, ContextWindow, Usage
from rxcontext.persist import new_reply_id
from rxcontext.providers import ScriptedModel


def _is_uuid4_text(value: str) -> bool:
    parsed = uuid.UUID(value)
    return str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_made_reply_id_is_the_text_str_uuid4_writes():
    ids = [new_reply_id() for _ in range(2000)]
    assert all(_is_uuid4_text(i) for i in ids)
    assert len(set(ids)) == len(ids)
    # Every bit outside the version and variant ones varies, as uuid4's random bits do.
    ored, anded = 0, (1 << 128) - 1
    for i in ids:
        n = uuid.UUID(i).int
        ored |= n
        anded &= n
    fixed = (0xF << 76) | (0x3 << 62)  # the version nibble and the variant's two bits
    assert ored | fixed == (1 << 128) - 1
    assert anded & ~fixed == 0


def test_a_stream_without_a_reply_id_stores_its_reply_under_a_uuid4(make_store):
    store = make_store()
    done = Chunk(ChunkKind.DONE, finish_reason="stop", usage=Usage.of(0, 0))
    model = ScriptedModel([[Chunk(ChunkKind.TEXT, "a"), done], [Chunk(ChunkKind.TEXT, "b"), done]])
    cw = ContextWindow(store, model, context="c")
    cw.add_prompt("hi")
    cw.call()
    cw.call()
    stored = [r.reply_id for r in cw.live_records() if r.reply_id is not None]
    assert len(stored) == 2 and stored[0] != stored[1]
    assert all(_is_uuid4_text(i) for i in stored)
