"""Every stored reply says what it is: model, provider, its own usage, finish reason, time
to first chunk, duration, and whether it is partial or was cut at its token limit — through
the replayed real SDK streams of every provider."""

from __future__ import annotations

from typing import Any

import pytest
from provider_rules import model_for
from replay import Replay, real_fixture

import rxcontext
from rxcontext import ContextWindow, RecordType, StreamInterrupted
from rxcontext.persist import REPLY_KEYS

CASES = {
    "chat": ("openai_chat/usage_then_moderation_chunk_gpt5.sse", "stop", (13, 11)),
    "responses": ("openai_responses/text_basic_gpt55.sse", "completed", None),
    "anthropic": ("anthropic/text_basic_sonnet45.sse", "end_turn", None),
    "gemini": ("gemini/text_basic_gemini20.sse", "STOP", None),
}


def stored_reply(cw: ContextWindow) -> dict[str, Any]:
    (record,) = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    return dict(record.metadata)


@pytest.mark.parametrize("wire", ["fast", "sdk"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_stored_reply_says_what_it_is(kind: str, wire: str):
    fixture, finish, counts = CASES[kind]
    replay = Replay(real_fixture(fixture))
    model = model_for(kind, replay, wire)
    cw = ContextWindow(rxcontext.open(":memory:"), model, "meta", retry=None)
    cw.add_prompt("hi")
    reply = cw.call()
    meta = stored_reply(cw)
    assert set(REPLY_KEYS) <= set(meta)
    provider, _, name = model.name.partition(":")
    assert (meta["provider"], meta["model"]) == (provider, name)
    assert meta["finish_reason"] == finish == reply.finish_reason
    assert meta["truncated"] is False and meta["partial"] is False
    assert meta["usage"] == (reply.usage.to_dict() if reply.usage else None)
    if counts:
        assert (meta["usage"]["input_tokens"], meta["usage"]["output_tokens"]) == counts
    assert 0 <= meta["first_chunk_ms"] <= meta["duration_ms"]


@pytest.mark.parametrize("wire", ["fast", "sdk"])
def test_a_reply_cut_at_its_token_limit_is_marked_truncated(wire: str):
    replay = Replay(real_fixture("anthropic/max_tokens_partial_tool_json_sonnet37.sse"))
    cw = ContextWindow(
        rxcontext.open(":memory:"), model_for("anthropic", replay, wire), "cut", retry=None
    )
    cw.add_prompt("hi")
    reply = cw.call()
    assert reply.finish_reason == "max_tokens"
    records = [r for r in cw.records() if r.type is RecordType.MODEL_RESP]
    assert records and records[0].metadata["truncated"] is True


def test_a_kept_reply_is_marked_partial_and_a_resumed_one_resumed():
    from rxcontext import Chunk, ChunkKind
    from rxcontext.providers import ScriptedModel

    T = lambda text: Chunk(ChunkKind.TEXT, text)  # noqa: E731
    done = Chunk(ChunkKind.DONE, finish_reason="stop")
    model = ScriptedModel(
        [[T("a"), ConnectionError("cut")], [T("b"), ConnectionError("cut")], [T("c"), done]]
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, "k", retry=None)
    cw.add_prompt("one")
    with pytest.raises(StreamInterrupted) as first:
        cw.call()
    cw.add_prompt("two")
    with pytest.raises(StreamInterrupted) as second:
        cw.call()
    kept = cw.keep(first.value.checkpoint.id)
    assert kept.metadata == {"partial": True, "model": "scripted", "provider": "scripted"}
    cw.resume_call(second.value.checkpoint.id)
    resumed = [r for r in cw.records() if r.type is RecordType.MODEL_RESP][-1]
    assert resumed.content == "bc"
    assert resumed.metadata["resumed"] is True and resumed.metadata["partial"] is False
    assert resumed.metadata["finish_reason"] == "stop"
