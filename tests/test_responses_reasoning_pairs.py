"""A reasoning item goes back to the Responses API only with the item it preceded, by id.

The API refuses ``input`` in which a reasoning item (``rs_…``) is not followed by the
output item it produced, sent with the id the server gave it (HTTP 400 "Item 'rs_…' of type
'reasoning' was provided without its required following item."), and one in which such an
item is sent with its id but without its reasoning item ("Item 'msg_…' of type 'message'
was provided without its required 'reasoning' item", likewise for ``function_call``). A
reasoning item may be left out, with the ids of the items that followed it. These tests
drive a window through the real openai SDK on a replay transport — recorded OpenAI streams
(a reasoning item, a commentary message, a function call) and crafted ones — through a
completed reply, a tool round, cut replies that are kept, and cut replies resumed by a
continuation, and check every request body the SDK sent against those rules, with the
outputs the served responses really had.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from replay import Replay, pieces, real_fixture, sse
from replay import Reply as Served

import rxcontext
from rxcontext import ContextWindow, StreamInterrupted
from rxcontext.providers.openai import OpenAIResponsesModel
from rxcontext.records import RecordType
from rxcontext.tools import Tool

KEY = "sk-test-RXCONTEXT0123456789secret"
WIRES = ["sdk", "fast"]
TOOL_ROUND = "openai_responses/reasoning_message_function_call_gpt55.{}.sse"
"""Round 1: [reasoning, message (commentary), function_call]; round 2: the answer."""
TEXT = "openai_responses/text_basic_gpt55.sse"
CUT_IN_MESSAGE = 11
"""Pieces of the recorded round 1 served before the cut: its text is "I’ll check the capital"."""


def served(*bodies: bytes) -> list[list[dict[str, Any]]]:
    """The ``output`` of each served response's ``response.completed`` event."""
    outputs = []
    for body in bodies:
        for piece in pieces(body):
            for line in piece.decode().splitlines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if event.get("type") == "response.completed":
                        outputs.append(event["response"]["output"])
    return outputs


def check_pairs(body: dict[str, Any], outputs: list[list[dict[str, Any]]]) -> None:
    """The Responses API's pairing rules for ``body``'s input, given the real outputs."""
    follower: dict[str, str | None] = {}  # reasoning id -> id of the item after it
    reasoning_of: dict[str, str] = {}  # item id -> id of the reasoning item before it
    known: set[str] = set()
    for output in outputs:
        last: str | None = None  # the reasoning item an item came after, in its response
        for n, item in enumerate(output):
            known.add(item["id"])
            if item["type"] == "reasoning":
                follower[item["id"]] = output[n + 1]["id"] if n + 1 < len(output) else None
                last = item["id"]
            elif last is not None:
                # "Item 'msg_…' of type 'message' was provided without its required
                # 'reasoning' item: 'rs_…'": an item is tied to the reasoning item before it
                # in its response, built-in tool calls between them or not.
                reasoning_of[item["id"]] = last
    items = body["input"]
    for i, item in enumerate(items):
        item_id = item.get("id")
        if item_id is not None:
            assert item_id in known, f"[{i}] item id {item_id!r} the server never gave"
        if item.get("type") == "reasoning":
            after = items[i + 1].get("id") if i + 1 < len(items) else None
            assert after is not None and after == follower[item_id], (
                f"[{i}] Item {item_id!r} of type 'reasoning' was provided without its required "
                f"following item ({follower[item_id]!r}); sent after it: "
                f"{items[i + 1] if i + 1 < len(items) else None}"
            )
        elif item_id in reasoning_of:
            sent_before = {other.get("id") for other in items[:i]}
            assert reasoning_of[item_id] in sent_before, (
                f"[{i}] Item {item_id!r} of type {item.get('type')!r} was provided without its "
                f"required 'reasoning' item {reasoning_of[item_id]!r}"
            )


def crafted(text: str, n: int) -> bytes:
    """A response of a reasoning item then a message of ``text`` (ids ``rs_c{n}``/``msg_c{n}``)."""
    reasoning = {
        "type": "reasoning",
        "id": f"rs_c{n}",
        "summary": [],
        "encrypted_content": f"gAAAAenc{n}",
    }
    message = {
        "type": "message",
        "id": f"msg_c{n}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    response = {
        "id": f"resp_c{n}",
        "object": "response",
        "created_at": 1,
        "model": "gpt-5.5",
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    words = text.split(" ")
    deltas = [w if i == 0 else " " + w for i, w in enumerate(words)]
    payloads: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": {**response, "status": "in_progress", "output": []},
        },
        {"type": "response.output_item.added", "output_index": 0, "item": {**reasoning}},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {**message, "status": "in_progress", "content": []},
        },
        *(
            {
                "type": "response.output_text.delta",
                "item_id": f"msg_c{n}",
                "output_index": 1,
                "content_index": 0,
                "delta": d,
                "logprobs": [],
            }
            for d in deltas
        ),
        {"type": "response.output_item.done", "output_index": 1, "item": message},
        {
            "type": "response.completed",
            "response": {
                **response,
                "status": "completed",
                "output": [reasoning, message],
                "usage": {
                    "input_tokens": 9,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": 7,
                    "output_tokens_details": {"reasoning_tokens": 3},
                    "total_tokens": 16,
                },
            },
        },
    ]
    numbered = [{**p, "sequence_number": i} for i, p in enumerate(payloads)]
    return sse(*numbered, event_names=[p["type"] for p in payloads])


def window(replay: Replay, wire: str) -> ContextWindow:
    model = OpenAIResponsesModel(
        "gpt-5.5",
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        wire=wire,  # type: ignore[arg-type]
        include=["reasoning.encrypted_content"],
    )
    cw = ContextWindow(rxcontext.open(":memory:"), model, "pairs", retry=None)
    tool = Tool("get_capital", "The capital of a country").string("country", "Country name")
    cw.add_tool(tool, lambda args: "Potato City")
    cw.add_prompt("What is the capital of PotatoLand?")
    return cw


def read(path: str) -> bytes:
    return Path(real_fixture(path)).read_bytes()


def cut(body: bytes, after: int) -> Served:
    return Served(body, cut_after=after)


def interrupted(cw: ContextWindow) -> int:
    with pytest.raises(StreamInterrupted) as info:
        cw.call()
    return info.value.checkpoint.id


def check_all(replay: Replay, *bodies: bytes) -> None:
    outputs = served(*bodies)
    assert len(replay.bodies) == len(replay.responses)
    for body in replay.bodies:
        check_pairs(body, outputs)


def replies(cw: ContextWindow) -> list[str]:
    return [r.content for r in cw.live_records() if r.type is RecordType.MODEL_RESP]


@pytest.mark.parametrize("wire", WIRES)
def test_a_completed_reply_sends_its_reasoning_with_its_message(wire: str) -> None:
    first, text = crafted("The capital is Potato City.", 1), read(TEXT)
    replay = Replay(first, text)
    cw = window(replay, wire)
    cw.call()
    cw.add_prompt("Thanks")
    cw.call()
    check_all(replay, first, text)
    # The normal case keeps the pair, with the server's ids.
    assert [i.get("id") for i in replay.bodies[1]["input"][1:3]] == ["rs_c1", "msg_c1"]


@pytest.mark.parametrize("wire", WIRES)
def test_a_tool_round_sends_reasoning_message_and_call_with_their_ids(wire: str) -> None:
    one, two, text = read(TOOL_ROUND.format(1)), read(TOOL_ROUND.format(2)), read(TEXT)
    replay = Replay(one, two, text)
    cw = window(replay, wire)
    cw.call()
    cw.add_prompt("Thanks")
    cw.call()
    check_all(replay, one, two, text)
    kinds = [i.get("type") for i in replay.bodies[1]["input"]]
    assert kinds == [None, "reasoning", "message", "function_call", "function_call_output"]


@pytest.mark.parametrize("wire", WIRES)
def test_a_reply_cut_in_its_message_and_kept(wire: str) -> None:
    one, text = read(TOOL_ROUND.format(1)), read(TEXT)
    replay = Replay(cut(one, CUT_IN_MESSAGE), text)
    cw = window(replay, wire)
    cw.keep(interrupted(cw))
    cw.add_prompt("Go on")
    cw.call()
    check_all(replay, one, text)
    assert replies(cw)[0] == "I’ll check the capital"


@pytest.mark.parametrize("wire", WIRES)
def test_a_reply_cut_after_a_tool_round_and_kept(wire: str) -> None:
    one, two, text = read(TOOL_ROUND.format(1)), read(TOOL_ROUND.format(2)), read(TEXT)
    replay = Replay(one, cut(two, 8), text)
    cw = window(replay, wire)
    cw.keep(interrupted(cw))
    cw.add_prompt("Go on")
    cw.call()
    check_all(replay, one, two, text)


@pytest.mark.parametrize("wire", WIRES)
def test_a_reply_cut_then_continued_sends_no_reasoning_without_its_message(wire: str) -> None:
    one, rest, text = read(TOOL_ROUND.format(1)), crafted("lookup tool.", 2), read(TEXT)
    replay = Replay(cut(one, CUT_IN_MESSAGE), rest, text)
    cw = window(replay, wire)
    cw.resume_call(interrupted(cw))
    assert replies(cw) == ["I’ll check the capital" + "lookup tool."]
    cw.add_prompt("Go on")
    cw.call()
    check_all(replay, one, rest, text)


@pytest.mark.parametrize("wire", WIRES)
def test_a_continuation_that_runs_a_tool_round(wire: str) -> None:
    first = crafted("Let me look that up for you.", 3)
    one, two, text = read(TOOL_ROUND.format(1)), read(TOOL_ROUND.format(2)), read(TEXT)
    replay = Replay(cut(first, 6), one, two, text)
    cw = window(replay, wire)
    cw.resume_call(interrupted(cw))
    cw.add_prompt("Thanks")
    cw.call()
    check_all(replay, first, one, two, text)


BUILT_IN_TOOLS = [
    "openai_responses/reasoning_summary_code_interpreter_gpt5.sse",
    "openai_responses/web_search_annotations_gpt52.sse",
]
"""[reasoning, code_interpreter_call ×3, message] and [web_search_call ×2, message]."""


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("path", BUILT_IN_TOOLS)
def test_a_reply_that_ran_a_built_in_tool_sends_no_reasoning_without_its_item(
    path: str, wire: str
) -> None:
    # A built-in tool's items (code_interpreter_call, web_search_call) are not sent back,
    # so the reasoning item that produced the first of them may not go either.
    builtin, text = read(path), read(TEXT)
    replay = Replay(builtin, text)
    cw = window(replay, wire)
    cw.call()
    cw.add_prompt("Thanks")
    cw.call()
    check_all(replay, builtin, text)
    message = served(builtin)[0][-1]
    sent = replay.bodies[1]["input"][1:-1]
    # The answer still goes back as the server's message; by its id only where no reasoning
    # item came before it (that id is tied to the reasoning item left out).
    reasoned = any(item["type"] == "reasoning" for item in served(builtin)[0])
    want = None if reasoned else message["id"]
    assert [(i.get("type"), i.get("id")) for i in sent] == [("message", want)]
    assert sent[0]["content"][0]["text"] == message["content"][0]["text"]
