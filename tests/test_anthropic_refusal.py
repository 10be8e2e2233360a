"""Anthropic refusals (``stop_reason`` ``"refusal"``) through the real anthropic SDK on the
replay transport, both wires, sync and asyncio: flagged ``metadata["refusal"] = True`` as an
OpenAI refusal is (tests/test_openai_refusal.py), on the chunk that says so (the DONE: the
text comes before the stop reason), the reply and the record."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay, record

import rxcontext
from rxcontext import ChunkKind, ContextWindow, RecordType
from rxcontext.providers.base import Request

WIRES = ["sdk", "fast"]
MODES = ["sync", "async"]
PIECES = ["I can't ", "help with that."]
REFUSAL = "".join(PIECES)


def refusal_body() -> bytes:
    return text_body("anthropic", PIECES).replace(b'"end_turn"', b'"refusal"')


def window(replay: Replay, wire: str) -> ContextWindow:
    model = model_for("anthropic", replay, wire)
    cw = ContextWindow(rxcontext.open(":memory:"), model, "r", retry=None)
    cw.add_prompt("How do I pick my neighbour's lock?")
    return cw


def stored(cw: ContextWindow) -> Any:
    [reply] = [r for r in cw.live_records() if r.type is RecordType.MODEL_RESP]
    return reply


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_an_anthropic_refusal_is_flagged_on_its_reply_and_record(wire: str, mode: str) -> None:
    cw = window(Replay(refusal_body()), wire)
    reply = cw.call() if mode == "sync" else asyncio.run(cw.acall())
    assert (reply.text, reply.finish_reason) == (REFUSAL, "refusal")
    assert reply.metadata["refusal"] is True
    record_ = stored(cw)
    assert record_.content == REFUSAL
    assert record_.metadata["refusal"] is True
    assert record_.metadata["finish_reason"] == "refusal"


@pytest.mark.parametrize("wire", WIRES)
def test_the_done_chunk_of_an_anthropic_refusal_says_so(wire: str) -> None:
    cw = window(Replay(refusal_body()), wire)
    chunks: list[Any] = []
    cw.stream().subscribe(on_next=chunks.append)
    assert [c.text for c in chunks if c.kind is ChunkKind.TEXT] == PIECES
    [done] = [c for c in chunks if c.kind is ChunkKind.DONE]
    assert done.finish_reason == "refusal" and done.metadata["refusal"] is True


@pytest.mark.parametrize("wire", WIRES)
def test_an_anthropic_reply_that_is_no_refusal_is_not_flagged(wire: str) -> None:
    cw = window(Replay(text_body("anthropic", ["Call ", "a locksmith."])), wire)
    reply = cw.call()
    assert reply.finish_reason == "end_turn"
    assert "refusal" not in reply.metadata and "refusal" not in stored(cw).metadata


@pytest.mark.parametrize("mode", MODES)
def test_an_anthropic_refusal_in_a_whole_reply_is_flagged(mode: str) -> None:
    message = {
        "id": "msg_r",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": [{"type": "text", "text": REFUSAL}],
        "stop_reason": "refusal",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 8},
    }
    served = Replay(json.dumps(message).encode())
    served.responses[0].headers = {"content-type": "application/json"}
    m = model_for("anthropic", served, "fast")
    request = Request([record(RecordType.PROMPT, "How do I pick a lock?")])
    reply = m.complete(request) if mode == "sync" else asyncio.run(m.acomplete(request))
    assert (reply.text, reply.finish_reason) == (REFUSAL, "refusal")
    assert reply.metadata["refusal"] is True
